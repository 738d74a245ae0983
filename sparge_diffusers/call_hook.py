"""Where a pipeline call starts, for `apply_sparge` on a pipeline.

Every diffusers pipeline begins a call by setting its scheduler's timesteps (``retrieve_timesteps`` calls
``scheduler.set_timesteps``). `watch_pipeline_calls` wraps that bound method on the pipeline's scheduler instance so
that the context hears of each new call (`SpargeContext.begin_call`): the step counter restarts, and the layers'
guards forget the drop masses and block maps of the last video, whose final steps say little about the first steps
of the next one. The wrapper keeps the method's signature (``functools.wraps``: diffusers inspects it for
``timesteps`` / ``sigmas``), and the returned handle's ``remove()`` puts the original back.
"""

from __future__ import annotations

import functools
from typing import Optional

from .context import SpargeContext


class _SchedulerWatch:
    """The handle of one wrapped ``set_timesteps``: ``remove()`` restores the scheduler's own method."""

    def __init__(self, scheduler, wrapper) -> None:
        self.scheduler = scheduler
        self.wrapper = wrapper

    def remove(self) -> None:
        if self.scheduler.__dict__.get("set_timesteps") is self.wrapper:
            del self.scheduler.set_timesteps


def watch_pipeline_calls(pipe, context: SpargeContext) -> Optional[_SchedulerWatch]:
    """Wrap ``pipe.scheduler.set_timesteps`` to call ``context.begin_call()`` first; None when the pipeline has no
    scheduler with that method (nothing is changed then)."""
    scheduler = getattr(pipe, "scheduler", None)
    original = getattr(scheduler, "set_timesteps", None)
    if original is None or not callable(original):
        return None

    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        context.begin_call()
        return original(*args, **kwargs)

    scheduler.set_timesteps = set_timesteps
    return _SchedulerWatch(scheduler, set_timesteps)


__all__ = ["watch_pipeline_calls"]
