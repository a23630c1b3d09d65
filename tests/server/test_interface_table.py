"""The table of the engine model's inputs and parameters (backend/interface.py) covers everything the model
declares and everything the interface spec names, and the parser and README read it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from backend.interface import INPUTS, MODELS, PARAMETERS, differences_markdown, unsupported_parameter_warnings
from backend.request_parsing import EngineLimits, parse_request
from backend.triton_utils import InputError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "all_models" / "inflight_batcher_llm" / "tensorrt_llm" / "config.pbtxt"
SPEC = ROOT.parent / "shared" / "spec" / "triton_interface.md"
# Values and outputs the spec's tables mention beside names; `_guide` is its shorthand for
# guided_decoding_guide.
VALUES = {"max_utilization", "guaranteed_no_evict", "top_k", "top_p", "top_k_top_p", "beam_search", "_guide"}
VALUES |= {"inflight_batching", "inflight_fused_batching", "output_ids"}


def _known(name: str) -> bool:
    if name.endswith("*"):
        return any(k.startswith(name[:-1]) for k in [*INPUTS, *PARAMETERS])
    return name in INPUTS or name in PARAMETERS


@pytest.mark.parametrize("model", list(MODELS))
def test_every_config_input_and_parameter_is_in_the_table(model):
    text = (CONFIG.parent.parent / model / "config.pbtxt").read_text()
    inputs = re.findall(r'name:\s*"([^"]+)"', text[text.index("input [") : text.index("output [")])
    # The ensemble's `key:` lines are its step mappings, not parameters.
    params = [] if model == "ensemble" else re.findall(r'key:\s*"([^"]+)"', text)
    table_inputs, table_params = MODELS[model]
    assert inputs
    assert [n for n in inputs if n not in table_inputs] == []
    assert [n for n in params if n not in table_params] == []
    if model != "tensorrt_llm":  # whose table also keeps legacy keys, to say what they did
        assert [n for n in table_params if n not in params] == []


@pytest.mark.skipif(not SPEC.exists(), reason="the spec lives in ../shared beside the project")
def test_every_name_of_the_spec_is_in_the_table():
    section = SPEC.read_text().split("### 2.2 tensorrt_llm")[1].split("### 2.3")[0]
    inputs_part, rest = section.split("Outputs:")
    params_part = rest.split("Parameters")[1]
    names = set()
    for part in (inputs_part, params_part):
        for line in part.splitlines():
            if line.startswith("|"):
                names |= {t for t in re.findall(r"`([A-Za-z_*]+)`", line) if "_" in t and t not in VALUES}
    for name in re.findall(r"`([A-Za-z_]+)`", params_part.split("v0.5 tensorrt_llm:")[1]):
        if "_" in name and name not in VALUES:
            names.add(name)
    assert len(names) > 60
    assert sorted(n for n in names if not _known(n)) == []


def _req(**extra) -> dict:
    base = {
        "input_ids": np.array([[5, 6, 7]], np.int32),
        "input_lengths": np.array([[3]], np.int32),
        "request_output_len": np.array([[4]], np.int32),
    }
    return {**base, **{k: np.asarray(v) for k, v in extra.items()}}


LIMITS = EngineLimits(vocab_size=100, max_input_len=16, max_seq_len=32, max_beam_width=4)


@pytest.mark.parametrize(
    "name, value",
    [
        ("runtime_top_p_decay", np.array([[1.0]], np.float32)),  # upstream's neutral defaults pass
        ("runtime_top_p_min", np.array([[1e-6]], np.float32)),
        ("runtime_top_p_reset_ids", np.array([[-1]], np.int32)),
        ("decoder_input_lengths", np.array([[0]], np.int32)),  # what the ensemble always wires
        ("embedding_bias", np.zeros((1, 100), np.float32)),
        ("return_context_logits", np.array([[False]])),
    ],
)
def test_neutral_values_pass(name, value):
    assert parse_request(_req(**{name: value}), LIMITS).rows


@pytest.mark.parametrize(
    "name, value, feature",
    [
        ("runtime_top_p_decay", np.array([[0.5]], np.float32), "top-p decay"),
        ("lora_task_id", np.array([[0]], np.uint64), "LoRA"),  # task 0 is a task, not "absent"
        ("prompt_table_extra_ids", np.array([[5, 5, 5]], np.uint64), "prompt tuning"),
        ("return_generation_logits", np.array([[True]]), "generation logits"),
        ("guided_decoding_guide_type", np.array([[b"json"]], dtype=object), "guided decoding"),
    ],
)
def test_rejected_inputs_name_the_feature(name, value, feature):
    with pytest.raises(InputError, match=f"{name}.*{feature}"):
        parse_request(_req(**{name: value}), LIMITS)


def test_num_return_sequences_and_early_stopping():
    row = parse_request(_req(beam_width=np.array([[4]]), num_return_sequences=np.array([[2]])), LIMITS).rows[0]
    assert row.num_return_sequences == 2 and row.sampling["beam_width"] == 4
    row = parse_request(_req(beam_width=np.array([[2]]), early_stopping=np.array([[1]])), LIMITS).rows[0]
    assert row.sampling["early_stopping"] is True
    with pytest.raises(InputError, match="early_stopping=2"):
        parse_request(_req(beam_width=np.array([[2]]), early_stopping=np.array([[2]])), LIMITS)


def test_unsupported_parameters_are_logged_only_when_set():
    raw = {
        "enable_kv_cache_reuse": "true",  # supported: no warning
        "kv_cache_host_memory_bytes": "1000000",  # supported (host offload): no warning
        "sink_token_length": "4",  # supported (attention sinks): no warning
        "multi_block_mode": "true",
        "normalize_log_probs": "false",
        "decoding_mode": "top_k_top_p",
        "gpu_device_ids": "0",
    }
    warnings = unsupported_parameter_warnings(raw)
    assert len(warnings) == 1
    assert any("normalize_log_probs='false'" in w for w in warnings)


def test_readme_lists_the_differences_from_the_table():
    readme = (ROOT / "all_models" / "inflight_batcher_llm" / "README.md").read_text()
    assert differences_markdown() in readme, "regenerate with: python -m backend.interface"
