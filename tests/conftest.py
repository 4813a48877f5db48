"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, hearth's Triton kernels (hearth/kernels/triton_decode.py) run in Triton's interpreter, so their
# tests check the arithmetic on the CPU. The switch must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_triton_interpreter() -> None:
    """Triton 3.6's interpreter turns a scalar into an int (a loop bound) with int() of a one-element 1-D array, which
    numpy >= 2.4 refuses; take the element instead."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_triton_interpreter()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is faster, and much faster when the two cores are shared.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
