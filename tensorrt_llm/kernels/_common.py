"""Helpers shared by the kernel launchers: availability, argument checks, block sizes."""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # CPU machines without triton still run every *_ref
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (`TRITON_INTERPRET=1`, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def available(t: torch.Tensor | None = None) -> bool:
    """Whether the Triton launchers can run on `t` (or on this machine when `t` is None).

    True when triton imports and either the tensor lives on CUDA or the interpreter is on.
    """
    if not HAS_TRITON:
        return False
    if interpreting():
        return True
    if t is None:
        return torch.cuda.is_available()
    return t.is_cuda


def check(cond: bool, msg: str, *args: object) -> None:
    """Raise ValueError(msg.format(*args)) unless `cond`; formatting only on failure (launchers are hot)."""
    if not cond:
        raise ValueError(msg.format(*args))


def check_launchable(*tensors: torch.Tensor) -> None:
    """Same device for all, and a device Triton can run on (CUDA, or anything under the interpreter)."""
    index = tensors[0].get_device()  # -1 on CPU, the ordinal on CUDA: cheaper than comparing devices
    if HAS_TRITON and index >= 0 and all(t.get_device() == index for t in tensors):
        return
    dev = tensors[0].device
    for t in tensors:
        check(t.device == dev, "tensors on different devices: {} and {}", dev, t.device)
    if not HAS_TRITON:
        raise RuntimeError("triton is not importable; call the *_ref function instead")
    if dev.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"Triton kernels need CUDA tensors (got {dev}); set TRITON_INTERPRET=1 before importing "
            "triton to run them on CPU, or call the *_ref function"
        )


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill; a small number under the interpreter so splits get tested."""
    return _cuda_sms(device.index if device.index is not None else 0) if device.type == "cuda" else 4
