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
