"""Errors the user can fix: the CLI prints their message on one line (no traceback) and exits with status 2."""

from __future__ import annotations


class UsageError(Exception):
    """A bad input: a model folder that is not a pipeline, an impossible setting, an unwritable output path."""


class MissingWeightsError(UsageError):
    """A metric or a model needs local weights that were not given; the message names the flag and the env var."""
