"""Sparge attention under diffusers' context parallelism (``ContextParallelConfig``, ``enable_parallelism``).

Ulysses (DeepSpeed-Ulysses, Jacobs et al., 2023, arXiv 2309.14509): every rank holds ``S / P`` tokens of every head;
an all-to-all before attention gives each rank ALL ``S`` tokens of ``H / P`` heads, the attention runs unchanged on
them, and the inverse all-to-all returns the rank's tokens. So the Sparge kernel runs as on one GPU: each rank
predicts the block map of its own heads over the whole sequence. The sparge backend (`sparge_diffusers.backend`)
declares context-parallel support and runs diffusers' own Ulysses template around its sparse path.

Ring attention (Liu et al., 2023, arXiv 2310.01889) merges each KV chunk's partial output through its log-sum-exp;
the Sparge kernels do not return one, so ring is refused (`RING_REFUSAL`), naming Ulysses.

Token order: the Hilbert order must be applied BEFORE the sequence is split, to the hidden states and the rotary
embeddings alike, so that the concatenation of the ranks' chunks after the all-to-all is the full sequence in curve
order. Sparge's boundary hooks are torch module hooks; diffusers' split hooks live inside the module's forward (its
hook registry), so a torch pre-hook on a module's INPUT runs before that module's split, but a torch hook on a
module's OUTPUT runs after it. Wan's own plan splits the rotary embeddings at the output of ``rope``, so a family
declares a Sparge plan (`Family.context_parallel_plan`) that splits them at the blocks' inputs instead;
`sparge_cp_plan` returns it and `enable_context_parallel` uses it. A model parallelised with another plan keeps its
tokens in row-major order (boundary reorder off, logged once): never a wrong order.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ._logging import log_once

logger = logging.getLogger(__name__)

CONTEXT_PARALLEL_MODES = ("ulysses", "ring")
RING_REFUSAL = ("the sparge attention backend does not support ring attention (it merges each KV chunk through its "
                "log-sum-exp, which the sparse kernel does not return); use Ulysses: ContextParallelConfig("
                "ulysses_degree=N), --context-parallel ulysses")


@dataclass(frozen=True)
class ContextParallelInfo:
    """What Sparge needs to know of a ``ContextParallelConfig`` that is set up (None where it is not)."""

    ulysses_degree: int
    ring_degree: int
    ulysses_anything: bool

    @property
    def world_size(self) -> int:
        return self.ulysses_degree * self.ring_degree


def context_parallel_info(parallel_config) -> Optional[ContextParallelInfo]:
    """The context-parallel degrees of a diffusers ``ParallelConfig`` (or ``ContextParallelConfig``), or None when
    there is none or its degree is 1."""
    if parallel_config is None:
        return None
    cp = getattr(parallel_config, "context_parallel_config", parallel_config)
    if cp is None or not hasattr(cp, "ulysses_degree"):
        return None
    info = ContextParallelInfo(int(cp.ulysses_degree or 1), int(cp.ring_degree or 1), bool(cp.ulysses_anything))
    return info if info.world_size > 1 else None


def check_heads(heads: int, degree: int, ulysses_anything: bool = False, *, argument: str = "ulysses_degree") -> None:
    """Ulysses splits the heads over the ranks: ``heads % degree == 0`` unless diffusers' ``ulysses_anything``."""
    if degree > 1 and heads % degree and not ulysses_anything:
        raise ValueError(f"{argument}={degree} does not divide the {heads} attention heads; use a world size that "
                         f"divides {heads}, or ContextParallelConfig(ulysses_anything=True)")


def check_context_parallel(transformer, mode: str, degree: int, *, ulysses_anything: bool = False) -> None:
    """Refuse, with one line, a context-parallel setting Sparge cannot run.

    Raises:
        ValueError: ``mode`` is not ``"ulysses"`` (ring: `RING_REFUSAL`), ``degree < 2``, the heads are not divisible
            by ``degree`` (unless ``ulysses_anything``), or the family declares no Sparge plan.
    """
    from .family import family_for
    from .integration import resolve_transformer

    if mode not in CONTEXT_PARALLEL_MODES:
        raise ValueError(f"context_parallel must be one of {CONTEXT_PARALLEL_MODES}, got {mode!r}")
    if mode == "ring":
        raise ValueError(RING_REFUSAL)
    if not isinstance(degree, int) or degree < 2:
        raise ValueError(f"the context-parallel degree (world size) must be an int >= 2, got {degree!r}")
    transformer = resolve_transformer(transformer)
    family = family_for(transformer)
    if family.context_parallel_plan(transformer) is None:
        raise ValueError(f"context parallelism with Sparge attention is not supported for {family.name} yet; "
                         f"supported: {', '.join(cp_families()) or 'none'}")
    heads = getattr(transformer.config, "num_attention_heads", None)
    if heads is not None:
        check_heads(int(heads), degree, ulysses_anything, argument="the world size" if not ulysses_anything else
                    "ulysses_degree")


def cp_families() -> Tuple[str, ...]:
    """The registered families that declare a Sparge context-parallel plan."""
    from .family import family_entries, load_family

    names = []
    for entry in family_entries():
        try:
            if load_family(entry.name).declares_context_parallel:
                names.append(entry.name)
        except Exception:  # a family whose module cannot be imported here
            continue
    return tuple(names)


def sparge_cp_plan(pipe_or_transformer) -> dict:
    """The context-parallel plan to give ``enable_parallelism(config, cp_plan=...)`` so that Sparge's token order is
    applied before the sequence is split (the family's declared plan).

    Raises:
        ValueError: the family declares none.
    """
    from .family import family_for
    from .integration import resolve_transformer

    transformer = resolve_transformer(pipe_or_transformer)
    family = family_for(transformer)
    plan = family.context_parallel_plan(transformer)
    if plan is None:
        raise ValueError(f"context parallelism with Sparge attention is not supported for {family.name} yet; "
                         f"supported: {', '.join(cp_families()) or 'none'}")
    return plan


def enable_context_parallel(pipe_or_transformer, mode: str = "ulysses", degree: Optional[int] = None, *,
                            ulysses_anything: bool = False, mesh=None, plan: Optional[dict] = None):
    """``transformer.enable_parallelism`` with Ulysses of ``degree`` ranks (default: the world size) and the Sparge
    plan (`sparge_cp_plan`). ``torch.distributed`` must be initialised. Works before or after `apply_sparge`; the
    dense (stock) attention runs under the same plan through diffusers' native backend.

    A transformer on the CPU (gloo: tests, smoke runs) cannot go through diffusers 0.42's ``enable_parallelism``: it
    builds the mesh on the accelerator and computes ``rank % torch.accelerator.device_count()`` (0 without one); the
    same steps are done here with a CPU mesh: the config on the model and its attention processors, and
    ``apply_context_parallel`` with the plan.

    ``plan`` replaces the Sparge plan (e.g. the model's own ``_cp_plan`` for a stock baseline; Sparge then keeps
    the tokens in row-major order, see `boundary_order_allowed`).

    Returns:
        the diffusers ``ParallelConfig`` now on the transformer.
    Raises:
        ValueError: see `check_context_parallel`; RuntimeError: ``torch.distributed`` is not initialised.
    """
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    from .integration import resolve_transformer

    transformer = resolve_transformer(pipe_or_transformer)
    if degree is not None:  # bad settings fail before the process group is looked at
        check_context_parallel(transformer, mode, degree, ulysses_anything=ulysses_anything)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("enable_context_parallel needs torch.distributed initialised (run under torchrun)")
    degree = dist.get_world_size() if degree is None else degree
    check_context_parallel(transformer, mode, degree, ulysses_anything=ulysses_anything)
    plan = sparge_cp_plan(transformer) if plan is None else plan
    cp_config = ContextParallelConfig(ulysses_degree=degree, ulysses_anything=ulysses_anything, mesh=mesh)
    parameter = next(transformer.parameters(), None)
    if parameter is not None and parameter.device.type != "cpu":
        transformer.enable_parallelism(config=cp_config, cp_plan=plan)
    else:
        _enable_on_cpu(transformer, cp_config, plan)
    _SAFE.pop(transformer, None)
    logger.info("context parallelism: Ulysses over %d ranks with the Sparge plan of %s", degree,
                type(transformer).__name__)
    return transformer._parallel_config


def _enable_on_cpu(transformer, cp_config, plan) -> None:
    """diffusers 0.42 ``ModelMixin.enable_parallelism`` for a CPU (gloo) world, with the same checks and steps."""
    import torch.distributed as dist
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig

    if transformer._parallel_config is not None:
        raise RuntimeError(f"Parallelism is already applied to this {type(transformer).__name__}")
    config = ParallelConfig(context_parallel_config=cp_config)
    mesh = cp_config.mesh or torch.distributed.device_mesh.init_device_mesh(
        device_type="cpu", mesh_shape=cp_config.mesh_shape, mesh_dim_names=cp_config.mesh_dim_names)
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    transformer._parallel_config = config
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    apply_context_parallel(transformer, cp_config, plan)


# Is the boundary order safe on a parallelised transformer? (cached per transformer and parallel config)
_SAFE: "weakref.WeakKeyDictionary[torch.nn.Module, Tuple[int, bool]]" = weakref.WeakKeyDictionary()


def _applied_cp_hooks(transformer) -> set:
    hooks = set()
    for module in transformer.modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is not None:
            hooks.update((id(module), name) for name in registry.hooks if name.startswith("cp_"))
    return hooks


def _expected_cp_hooks(transformer, plan: Dict[str, object]) -> set:
    from diffusers.hooks.context_parallel import (_CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE,
                                                  _CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE, _get_submodule_by_name)

    hooks = set()
    for module_id, entry in plan.items():
        template = _CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE if isinstance(entry, dict) else \
            _CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE
        modules = _get_submodule_by_name(transformer, module_id)
        for module in modules if isinstance(modules, list) else [modules]:
            hooks.add((id(module), template.format(module_id)))
    return hooks


def boundary_order_allowed(family, transformer) -> bool:
    """False when ``transformer`` is context-parallel with a plan other than the family's Sparge plan: its split
    points may sit before Sparge's boundary hooks, so the boundary order is skipped (logged once)."""
    config = getattr(transformer, "_parallel_config", None)
    if context_parallel_info(config) is None:
        return True
    cached = _SAFE.get(transformer)
    if cached is not None and cached[0] == id(config):
        return cached[1]
    plan = family.context_parallel_plan(transformer)
    try:
        safe = plan is not None and _applied_cp_hooks(transformer) == _expected_cp_hooks(transformer, plan)
    except Exception as error:  # another diffusers layout: stay safe
        logger.debug("cannot compare the context-parallel hooks: %s", error)
        safe = False
    _SAFE[transformer] = (id(config), safe)
    if not safe:
        log_once(logger, f"cp-plan-{family.name}", "%s is context-parallel with a plan that splits the sequence "
                 "before Sparge's token order is applied; the tokens stay in row-major order. Parallelise it with "
                 "sparge_diffusers.enable_context_parallel (or enable_parallelism(..., cp_plan=sparge_cp_plan(t))) "
                 "for the Hilbert order", type(transformer).__name__)
    return safe


__all__ = ["CONTEXT_PARALLEL_MODES", "ContextParallelInfo", "RING_REFUSAL", "boundary_order_allowed",
           "check_context_parallel", "check_heads", "context_parallel_info", "cp_families",
           "enable_context_parallel", "sparge_cp_plan"]
