import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def str_to_dtype(name: str) -> torch.dtype:
    """Maps an engine dtype name to the torch dtype; names the accepted values on a bad one."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: expected one of {', '.join(_DTYPES)}") from None


def dtype_to_str(dtype: torch.dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


DTYPE_NAMES = tuple(_DTYPES)


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host tensor `t` on `device` without waiting for the device: staged through page-locked memory on CUDA
    (a copy from pageable memory can wait for the work queued before it); `t` itself elsewhere."""
    return t.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else t


def index_tensor(values: list[int], device: torch.device | str) -> torch.Tensor:
    """An int64 index on `device`, made without a host synchronisation."""
    return host_to_device(torch.tensor(values, dtype=torch.int64), device)
