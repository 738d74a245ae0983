"""Context-parallel launches of the commands (``generate``, ``sweep``) under ``torchrun --nproc-per-node N``.

``--context-parallel ulysses`` splits every attention sequence of one render over the N ranks (diffusers' context
parallelism with the Sparge plan, `sparge_diffusers.parallel`); its degree is the world size torchrun sets
(``WORLD_SIZE``, with ``RANK`` and ``LOCAL_RANK``). Every rank runs every render together; rank 0 alone writes the
files and prints, and the sidecars record the world size. ``ring`` is refused (the Sparge kernel returns no
log-sum-exp), naming Ulysses; a world size that does not divide the heads is refused unless ``--ulysses-anything``.

The process group uses NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``) and gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

from .errors import UsageError
from .parallel import CONTEXT_PARALLEL_MODES, RING_REFUSAL

logger = logging.getLogger(__name__)


def add_context_parallel_arguments(parser) -> None:
    group = parser.add_argument_group("context parallelism (under torchrun --nproc-per-node N)")
    group.add_argument("--context-parallel", choices=CONTEXT_PARALLEL_MODES, default=None,
                       help="split each render's attention over the ranks (degree: WORLD_SIZE); ulysses only "
                            "(ring needs a log-sum-exp the Sparge kernel does not return); rank 0 writes the files")
    group.add_argument("--ulysses-anything", action="store_true",
                       help="allow a world size that does not divide the heads (diffusers' ulysses_anything)")


def read_rank_env(env: Optional[dict] = None):
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` outside it)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"bad distributed environment: RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


@dataclass
class Launch:
    """This process's part of a launch: ``mode`` None is a plain single-process (or data-parallel) run."""

    mode: Optional[str] = None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    ulysses_anything: bool = False
    owns_group: bool = False

    @property
    def writer(self) -> bool:
        """Whether this rank writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.mode is not None

    def device(self, device: str) -> str:
        """``cuda`` becomes this rank's ``cuda:LOCAL_RANK`` under a context-parallel launch."""
        if self.parallel and str(device) == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (every rank must take the same decisions: they run collectives)."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def record(self, sidecar: dict) -> dict:
        """The sidecar with the launch: ``{"context_parallel": mode, "world_size": N}``."""
        sidecar["parallel"] = {"context_parallel": self.mode, "world_size": self.world_size,
                               "ulysses_anything": self.ulysses_anything if self.parallel else False}
        return sidecar

    def enable(self, model) -> None:
        """Context parallelism on a `LoadedModel`'s transformer(s) (one-line `UsageError` when Sparge cannot)."""
        if not self.parallel:
            return
        from .parallel import enable_context_parallel

        pipe = model.pipe
        for name in ("transformer", "transformer_2"):
            transformer = getattr(pipe, name, None)
            if transformer is None:
                continue
            try:
                enable_context_parallel(transformer, self.mode, self.world_size,
                                        ulysses_anything=self.ulysses_anything)
            except ValueError as error:
                raise UsageError(f"--context-parallel {self.mode}: {error}") from None

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def launch_from_args(args, device: str, env: Optional[dict] = None) -> Launch:
    """The `Launch` of ``--context-parallel`` (checked before any model is loaded); initialises the process group.

    Raises:
        UsageError: ring, a world size of 1, or ``--ulysses-anything`` without ``--context-parallel``.
    """
    mode = getattr(args, "context_parallel", None)
    anything = bool(getattr(args, "ulysses_anything", False))
    if mode is None:
        if anything:
            raise UsageError("--ulysses-anything needs --context-parallel ulysses")
        return Launch()
    if mode == "ring":
        raise UsageError(f"--context-parallel ring: {RING_REFUSAL}")
    rank, world, local = read_rank_env(env)
    if world < 2:
        raise UsageError(f"--context-parallel {mode} needs several ranks: launch with torchrun --nproc-per-node N "
                         "(WORLD_SIZE is 1)")
    launch = Launch(mode, rank, world, local, anything)
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
        launch.owns_group = True
    return launch


__all__ = ["Launch", "add_context_parallel_arguments", "launch_from_args", "read_rank_env"]
