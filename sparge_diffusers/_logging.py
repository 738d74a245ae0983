"""Log-once helper: fallbacks are announced a single time per process, not once per attention call."""

from __future__ import annotations

import logging

_seen: set = set()


def log_once(logger: logging.Logger, key: str, message: str, *args, level: int = logging.WARNING) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key in _seen:
        return
    _seen.add(key)
    logger.log(level, message, *args)


def reset_log_once() -> None:
    """Forget which messages were logged (tests use it to observe a fallback message again)."""
    _seen.clear()
