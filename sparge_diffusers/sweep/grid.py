"""The sweep's grid: configs from the CLI's value lists, their labels, and the share of work of each rank."""

from __future__ import annotations

import itertools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import SpargeConfig
from ..errors import UsageError
from ..launch import read_rank_env

logger = logging.getLogger(__name__)


# the predictor left out of labels: the default when labels were introduced (lse), so that older results folders keep
# their keys after the default became "mixed"
UNNAMED_PREDICTOR = "lse"


def config_label(config: SpargeConfig) -> str:
    """Short, stable name of a sparse config (the CSV key with prompt and seed)."""
    rule = config.selection
    selection = {"topk": f"topk={rule.value:g}", "cdf": f"tau={rule.value:g}", "budget": f"eps={rule.value:g}",
                 "all": "all"}[rule.rule]
    if rule.rule == "budget" and config.calibration:
        selection += " calibrated"
    sim = "off" if config.sim_threshold is None else f"{config.sim_threshold:g}"
    pv = "off" if config.pv_threshold is None else f"{config.pv_threshold:g}"
    label = f"{selection} sim={sim} pv={pv} dense_steps={config.dense_steps} {config.reorder} {config.precision}"
    if config.predictor != UNNAMED_PREDICTOR:
        label += f" {config.predictor}"
    if config.map_reuse_calls != 1:  # maps were predicted in every call before map_reuse existed: those labels stay
        label += f" map_reuse={config.map_reuse_calls}"
    return label if config.block_n == SpargeConfig.block_n else f"{label} kblock={config.block_n}"


def expand_grid(topk: Sequence[float] = (), cdf_threshold: Sequence[float] = (),
                sim_threshold: Sequence[Optional[float]] = (SpargeConfig.sim_threshold,),
                pv_threshold: Sequence[Optional[float]] = (None,), dense_steps: Sequence[int] = (0,),
                reorder: Sequence[str] = ("hilbert",), precision: Sequence[str] = ("int8-fp8",),
                block_n: int = SpargeConfig.block_n, *, target_error: Sequence[float] = (),
                calibration: Sequence[Optional[str]] = (None,),
                predictor: Sequence[str] = (SpargeConfig.predictor,),
                map_reuse: Sequence[Optional[int]] = (None,)) -> List[SpargeConfig]:
    """Every `SpargeConfig` of the grid (top-k values first, then τ, then ε values), duplicates removed; ``block_n``
    is the key block size of every config (not a grid axis); ``calibration`` (None = uncalibrated, or calibration
    files) is an axis of the ε configs only; ``predictor`` and ``map_reuse`` are axes of every config.

    Raises:
        UsageError: a value SpargeConfig rejects (its message), or an empty grid.
    """
    selections = [("topk", v, None) for v in topk] + [("cdf", v, None) for v in cdf_threshold]
    selections += [("eps", v, cal) for v in target_error for cal in calibration]
    if not selections:
        raise UsageError("the grid is empty: give --topk, --cdf-threshold and/or --target-error values")
    configs: Dict[str, SpargeConfig] = {}
    for (kind, value, cal), sim, pv, steps, order, prec, pred, reuse in itertools.product(
            selections, sim_threshold, pv_threshold, dense_steps, reorder, precision, predictor, map_reuse):
        try:
            config = SpargeConfig(topk=value if kind == "topk" else None,
                                  cdf_threshold=value if kind == "cdf" else None,
                                  target_error=value if kind == "eps" else None, calibration=cal,
                                  sim_threshold=sim, pv_threshold=pv, dense_steps=steps, reorder=order,
                                  precision=prec, block_n=block_n, predictor=pred, map_reuse=reuse)
        except ValueError as error:
            raise UsageError(str(error)) from None
        configs.setdefault(config_label(config), config)
    return list(configs.values())


def rank_info(env: Optional[dict] = None) -> Tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun / accelerate environment variables (``(0, 1, 0)`` alone)."""
    return read_rank_env(env)


def split_work(items: Sequence, rank: int, world: int) -> list:
    """Round-robin share of ``items`` for ``rank`` of ``world``."""
    return [item for index, item in enumerate(items) if index % world == rank]
