"""Shared fixtures of the diffusers-integration tests (CPU, fp32, tiny random-weight models)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(autouse=True)
def _quiet_diffusers():
    """diffusers warns about dtype casts of the tiny models; keep the test log readable."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    yield
    diffusers_logging.set_verbosity(level)


@pytest.fixture
def load_script():
    """``load_script("bench_e2e")``: a module of ``scripts/`` loaded from its file (scripts are not a package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_collection_modifyitems(config, items):
    # Mochi's RoPE asks for an fp32 CPU autocast region, which torch declines with a warning on every forward.
    for item in items:
        if "tests/pipelines" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning"))
