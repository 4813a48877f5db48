"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, hearth's Triton kernels (hearth/kernels/triton_decode.py) run in Triton's interpreter, so their
# tests check the arithmetic on the CPU. The switch must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is faster, and much faster when the two cores are shared.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- llama.cpp, the outside reference
# Tests that compare with llama.cpp carry @pytest.mark.reference. Without llama-cpp-python they FAIL (CI installs
# the `reference` extra, so a missing reference must not pass silently as skips); a run that means to leave them
# out says so: `pytest -m "not reference"`.


def _llama_cpp_missing() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("reference") is not None and (why := _llama_cpp_missing()) is not None:
        pytest.fail(f"llama-cpp-python (the outside reference) is missing ({why}): install hearth[reference] "
                    "(make install does), or deselect these tests with -m \"not reference\"", pytrace=False)


# ---------------------------------------------------------------- shared fixtures


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty store for one test: $HEARTH_HOME points at tmp_path/hearth-home (created by the first write)."""
    h = tmp_path / "hearth-home"
    monkeypatch.setenv("HEARTH_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def tiny_transformer():
    """The random tiny Transformer factory (tiny.random_transformer): call it with a seed and config overrides."""
    import tiny

    return tiny.random_transformer


@pytest.fixture(scope="session")
def smollm2_model():
    """The real model (the packaged smollm2) as `hearth run` loads it (dtype auto: the native 4-bit path on a CPU),
    loaded once per test run. Shared by every module that asks: a test must leave it as it found it."""
    from hearth.loader import load

    return load("smollm2")


@pytest.fixture(scope="session")
def smollm2_model_f32():
    """The real model in fp32 (the exact path), loaded once per test run; shared as smollm2_model is."""
    from hearth.loader import load

    return load("smollm2", dtype="float32")
