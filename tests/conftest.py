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
