"""Which models the front end serves, read from the running tritonserver's model repository.

A served model is a Triton *text* model (one with a `text_input` input: `ensemble`, `tensorrt_llm_bls`),
under its Triton name. Its requests go to the engine model it wraps (the `engine_model` of our `ensemble`,
a Triton ensemble's engine step, the BLS's `tensorrt_llm_model_name`), with the pre- and post-processing
done here, with the same tokenizer and the same `add_special_tokens` / `skip_special_tokens` as its Triton
models (read from their configs), so that the front end can count tokens, tell why generation ended and
cut at stop strings: the text models return neither token counts nor the reason generation ended.
A repository without text models serves its engine models, given `--tokenizer_dir`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.params import Params
from backend.tokenization import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("openai_frontend")


@dataclass(frozen=True)
class EngineLimits:
    """The engine's build limits (its config.json), when the front end can read them; None = unknown."""

    max_input_len: int | None = None
    max_seq_len: int | None = None
    vocab_size: int | None = None
    tokens_per_block: int | None = None  # KV cache block size: a reused block is this many cached prompt tokens


@dataclass
class ServedModel:
    name: str  # the OpenAI model id: the Triton text model's name
    engine_model: str  # the Triton engine model requests go to
    tokenizer: Any
    add_special_tokens: bool
    skip_special_tokens: bool
    decoupled: bool  # the engine model streams (else one response per request)
    limits: EngineLimits
    # The engine model declares the perf outputs (kv_cache_reused_blocks): its cached prompt tokens can be
    # reported (`prompt_tokens_details`, --enable_prompt_tokens_details).
    reports_reuse: bool = False


def _inputs(cfg: dict) -> set[str]:
    return {i["name"] for i in cfg.get("input", [])}


def _params(cfg: dict) -> Params:
    return Params(cfg, warn=lambda _m: None)


def _is_engine(cfg: dict) -> bool:
    return "input_ids" in _inputs(cfg) and any(o["name"] == "output_ids" for o in cfg.get("output", []))


def read_limits(engine_cfg: dict) -> EngineLimits:
    """From the engine directory named by the engine model's `gpt_model_path`, if it is on this machine."""
    path = _params(engine_cfg).str("gpt_model_path")
    if not path:
        return EngineLimits()
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        log.warning(
            "cannot read the engine's config.json under %s: prompt lengths are checked by the engine only, and "
            "a completion cut by max_seq_len reports finish_reason 'stop'",
            path,
        )
        return EngineLimits()
    build, model = cfg.get("build", {}), cfg.get("model", {})
    return EngineLimits(
        build.get("max_input_len"), build.get("max_seq_len"), model.get("vocab_size"), build.get("tokens_per_block")
    )


class Discovery:
    """Builds the served models from the repository's configs (`configs`: model name -> config dict)."""

    def __init__(self, tokenizer_dir: str | None = None):
        self.tokenizer_dir = tokenizer_dir
        self._tokenizers: dict[str, Any] = {}

    def tokenizer(self, path: str) -> PreTrainedTokenizerBase:
        if path not in self._tokenizers:
            self._tokenizers[path] = load_tokenizer(path)
        return self._tokenizers[path]

    def served(self, configs: dict[str, dict]) -> dict[str, ServedModel]:
        out: dict[str, ServedModel] = {}
        for name, cfg in configs.items():
            if "text_input" not in _inputs(cfg):
                continue
            try:
                model = self._text_model(name, cfg, configs)
            except (ValueError, FileNotFoundError, RuntimeError) as e:
                log.warning("not serving %s: %s", name, e)
                continue
            out[name] = model
        if not out and self.tokenizer_dir:
            for name, cfg in configs.items():
                if _is_engine(cfg):
                    out[name] = self._model(name, name, cfg, self.tokenizer_dir, True, True)
        return out

    def _text_model(self, name: str, cfg: dict, configs: dict[str, dict]) -> ServedModel:
        if cfg.get("platform") == "ensemble":
            steps = [s["model_name"] for s in cfg.get("ensemble_scheduling", {}).get("step", [])]
            engines = [s for s in steps if _is_engine(configs.get(s, {}))]
            pre = [s for s in steps if "QUERY" in _inputs(configs.get(s, {}))]
            post = [s for s in steps if "TOKENS_BATCH" in _inputs(configs.get(s, {}))]
            if not engines:
                raise ValueError(f"no loaded engine model among its steps {steps}")
            pre_p = _params(configs[pre[0]]) if pre else None
            post_p = _params(configs[post[0]]) if post else None
        elif _params(cfg).is_set("engine_model"):  # a text front of the native backend (our `ensemble`)
            own = _params(cfg)
            engines = [own.str("engine_model")]
            if not _is_engine(configs.get(engines[0], {})):
                raise ValueError(f"its engine model {engines[0]!r} is not loaded")
            pre_name = own.str("preprocessing_model", "preprocessing")
            post_name = own.str("postprocessing_model", "postprocessing")
            pre_p = _params(configs[pre_name]) if pre_name in configs else None
            post_p = _params(configs[post_name]) if post_name in configs else None
        else:  # the BLS: tokenizes itself (tokenizer_dir) or through the preprocessing model
            own = _params(cfg)
            engines = [own.str("tensorrt_llm_model_name", "tensorrt_llm") or "tensorrt_llm"]
            if not _is_engine(configs.get(engines[0], {})):
                raise ValueError(f"its engine model {engines[0]!r} is not loaded")
            pre_p = post_p = own if own.is_set("tokenizer_dir") else None
            if pre_p is None:
                pre_p = _params(configs["preprocessing"]) if "preprocessing" in configs else None
                post_p = _params(configs["postprocessing"]) if "postprocessing" in configs else None
        tokenizer_dir = self.tokenizer_dir or (pre_p.str("tokenizer_dir") if pre_p else None)
        if not tokenizer_dir:
            raise ValueError("no tokenizer_dir in its preprocessing config: pass --tokenizer_dir")
        add = pre_p.bool("add_special_tokens", True) if pre_p else True
        skip = post_p.bool("skip_special_tokens", True) if post_p else True
        return self._model(name, engines[0], configs[engines[0]], tokenizer_dir, add, skip)

    def _model(self, name: str, engine: str, engine_cfg: dict, tokenizer_dir: str, add: bool, skip: bool):
        decoupled = bool(engine_cfg.get("model_transaction_policy", {}).get("decoupled", False))
        limits = read_limits(engine_cfg)
        reuse = limits.tokens_per_block is not None and any(
            o["name"] == "kv_cache_reused_blocks" for o in engine_cfg.get("output", [])
        )
        return ServedModel(name, engine, self.tokenizer(tokenizer_dir), add, skip, decoupled, limits, reuse)
