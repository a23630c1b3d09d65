"""Kernel tests run the Triton kernels on CPU tensors through the Triton interpreter.

`TRITON_INTERPRET` is read when triton and each kernel are first imported, so it must be set before
anything imports triton. Run alone (`pytest tests/kernels`), this file sets it in time. In a whole-suite
run another folder may import triton first (tensorrt_llm.functional imports the kernels); the root
tests/conftest.py should then set it (on machines without CUDA). If it was not, the kernel tests skip
with that reason instead of failing inside the interpreter.
"""

import os
import sys

import pytest
import torch

_TRITON_ALREADY_IMPORTED = "triton" in sys.modules
if not torch.cuda.is_available():  # on a GPU machine the kernels run compiled on CUDA tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_broken() -> bool:
    # triton imported in compiled mode: its own @jit helpers (tl.zeros, tl.max...) cannot be interpreted
    if torch.cuda.is_available() or not _TRITON_ALREADY_IMPORTED:
        return False
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return not isinstance(standard.zeros, InterpretedFunction)


def pytest_collection_modifyitems(config, items):
    if not _interpreter_broken():
        return
    skip = pytest.mark.skip(
        reason="triton was imported before TRITON_INTERPRET=1 was set: set it in tests/conftest.py "
        "(no CUDA) or run `pytest tests/kernels` on its own"
    )
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here) and item.path.name != "test_sampling.py":  # sampling is torch-only
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
