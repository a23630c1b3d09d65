"""Model-config parameters: `parameters { key: "k" value: { string_value: "..." } }`.

Like the TensorRT-LLM backend, a missing key or an unreplaced `${...}` placeholder logs a warning and takes
the default, so optional placeholders may stay unfilled (spec section 2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}


def parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ValueError(f"not a boolean: {s!r}")


class Params:
    """Typed access to a model config's parameters, warning once per defaulted key."""

    def __init__(self, model_config: dict, warn: Callable[[str], None] | None = None):
        raw = model_config.get("parameters", {}) or {}
        self.raw: dict[str, str] = {k: (v or {}).get("string_value", "") for k, v in raw.items()}
        self._warn = warn or _log.warning

    def is_set(self, key: str) -> bool:
        v = self.raw.get(key)
        return v is not None and v.strip() != "" and not v.strip().startswith("${")

    def _get(self, key: str, default: Any, conv: Callable[[str], Any], required: bool = False) -> Any:
        v = self.raw.get(key)
        if v is None or v.strip() == "" or v.strip().startswith("${"):
            if required:
                raise ValueError(f"model parameter {key!r} is required (got {v!r})")
            if v is not None and v.strip().startswith("${"):
                self._warn(f"parameter {key} is an unfilled placeholder {v}; using default {default!r}")
            return default
        try:
            return conv(v.strip())
        except ValueError:
            if required:
                raise ValueError(f"model parameter {key!r}: cannot parse {v!r}") from None
            self._warn(f"parameter {key}={v!r} cannot be parsed; using default {default!r}")
            return default

    def str(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        return self._get(key, default, str, required)

    def int(self, key: str, default: int | None = None, required: bool = False) -> int | None:
        return self._get(key, default, int, required)

    def float(self, key: str, default: float | None = None) -> float | None:
        return self._get(key, default, float)

    def bool(self, key: str, default: bool = False) -> bool:
        return self._get(key, default, parse_bool)
