"""Shared fixtures of the diffusers-integration tests (CPU, fp32, tiny random-weight models)."""

import pytest


@pytest.fixture(autouse=True)
def _quiet_diffusers():
    """diffusers warns about dtype casts of the tiny models; keep the test log readable."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    yield
    diffusers_logging.set_verbosity(level)


def pytest_collection_modifyitems(config, items):
    # Mochi's RoPE asks for an fp32 CPU autocast region, which torch declines with a warning on every forward.
    for item in items:
        if "tests/pipelines" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning"))
