"""trtllm-build and trtllm-run as users call them, and what they say about bad input."""

import csv
import json
import shutil

import numpy as np
import pytest

from inflight_batcher import run
from tensorrt_llm.commands import build
from tensorrt_llm.runtime import ModelRunner
from tests.helpers import make_tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "hf"
    make_tiny_llama(d)
    return d


@pytest.fixture(scope="module")
def engine_dir(model_dir):
    out = model_dir.parent / "engine"
    # The seed articles' command line, TensorRT-LLM flags included.
    rc = build.main(
        [
            "--model_dir", str(model_dir), "--dtype", "float32", "--use_gpt_attention_plugin", "float32",
            "--use_gemm_plugin", "float32", "--remove_input_padding", "--use_inflight_batching",
            "--paged_kv_cache", "--output_dir", str(out), "--world_size", "1", "--max_batch_size", "4",
            "--max_input_len", "64", "--max_output_len", "64", "--tokens_per_block", "16",
        ]
    )  # fmt: skip
    assert rc == 0
    return out


def test_engine_directory_contents(engine_dir):
    cfg = json.loads((engine_dir / "config.json").read_text())
    assert cfg["format_version"] == 2 and cfg["architecture"] == "LlamaForCausalLM"
    assert cfg["build"]["max_seq_len"] == 128 and cfg["build"]["max_batch_size"] == 4
    assert sorted(p.name for p in engine_dir.iterdir()) == ["config.json", "rank0.safetensors"]


def test_run_with_text_and_tokenizer(engine_dir, model_dir, capsys, tmp_path):
    out_csv = tmp_path / "out.csv"
    rc = run.main(
        [
            "--engine_dir", str(engine_dir), "--tokenizer_dir", str(model_dir), "--input_text",
            "How do I count to nine in French?", "What is machine learning?", "--max_output_len", "12",
            "--end_id", "-1", "--output_csv", str(out_csv),
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert 'Input [Text 0]: "How do I count to nine in French?"' in text
    assert "Output [Text 1 Beam 0]:" in text
    rows = list(csv.reader(out_csv.open()))
    assert [len(r) for r in rows] == [12, 12]


def test_run_with_token_files(engine_dir, tmp_path, capsys):
    ids = [[1, 50, 60, 70], [1, 80, 90]]
    src = tmp_path / "in.csv"
    csv.writer(src.open("w", newline="")).writerows(ids)
    out_npy = tmp_path / "out.npy"
    rc = run.main(["--engine_dir", str(engine_dir), "--input_file", str(src), "--max_output_len", "8",
                   "--end_id", "-1", "--pad_id", "0", "--output_npy", str(out_npy)])  # fmt: skip
    assert rc == 0
    arr = np.load(out_npy)
    assert arr.shape == (2, 1, 4 + 8)
    expected = ModelRunner.from_dir(engine_dir, device="cpu").generate(ids, max_new_tokens=8, end_id=-1, pad_id=0)
    assert (arr == expected.numpy()).all()
    # The same from .npy (right padding with pad_id dropped) and with streaming.
    npy = tmp_path / "in.npy"
    np.save(npy, np.array([[1, 50, 60, 70], [1, 80, 90, 0]]))
    capsys.readouterr()
    assert run.main(["--engine_dir", str(engine_dir), "--input_file", str(npy), "--max_output_len", "8",
                     "--end_id", "-1", "--pad_id", "0", "--streaming"]) == 0  # fmt: skip
    assert capsys.readouterr().out.count("[1] +") == 8


def _err(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_dir", "/nonexistent"], "model directory /nonexistent does not exist"),
        ([], "give --model_dir"),
        (["--max_input_len", "300", "--max_seq_len", "200"], "max_input_len (300) exceeds max_seq_len (200)"),
        (["--max_seq_len", "100000"], "exceeds the model's max_position_embeddings"),
        (["--tp_size", "3", "--world_size", "3"], "not divisible by tp_size (3)"),
        (["--world_size", "4", "--tp_size", "2"], "world_size (4) must equal tp_size * pp_size"),
        (["--tokens_per_block", "12"], "tokens_per_block must be a power of two"),
    ],
)
def test_build_errors_say_what_to_fix(model_dir, tmp_path, capsys, args, message):
    base = ["--output_dir", str(tmp_path / "e")]
    if "--model_dir" not in args and args != []:
        base += ["--model_dir", str(model_dir)]
    assert build.main(base + args) == 2
    assert message in _err(capsys)


def test_build_rejects_unknown_architecture_and_bad_config(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, architectures=["BertModel"])))
    assert build.main(["--model_dir", str(bad), "--output_dir", str(tmp_path / "e")]) == 2
    err = _err(capsys)
    assert "unsupported architecture 'BertModel': supported are " in err and "LlamaForCausalLM" in err
    (bad / "config.json").write_text("{not json")
    assert build.main(["--model_dir", str(bad), "--output_dir", str(tmp_path / "e")]) == 2
    assert "is not valid JSON" in _err(capsys)
    (bad / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}))
    assert build.main(["--model_dir", str(bad), "--output_dir", str(tmp_path / "e")]) == 2
    assert "lacks the field 'hidden_size'" in _err(capsys)
    (bad / "config.json").write_text(json.dumps(cfg))
    for f in bad.glob("*.safetensors"):
        f.unlink()
    assert build.main(["--model_dir", str(bad), "--output_dir", str(tmp_path / "e")]) == 2
    assert "no weights" in _err(capsys)


def test_bad_engine_directories(engine_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelRunner.from_dir(tmp_path / "missing")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(engine_dir / "rank0.safetensors", partial)
    with pytest.raises(FileNotFoundError, match="no config.json: not an engine directory, or its build did not"):
        ModelRunner.from_dir(partial)
    shutil.copy(engine_dir / "config.json", partial)
    (partial / "rank0.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="rank0.safetensors are missing"):
        ModelRunner.from_dir(partial)
    shutil.copy(engine_dir / "rank0.safetensors", partial)
    cfg = json.loads((engine_dir / "config.json").read_text())
    (partial / "config.json").write_text(json.dumps(dict(cfg, format_version=0)))
    with pytest.raises(ValueError, match="format version 0 does not match this runtime's 2: rebuild"):
        ModelRunner.from_dir(partial)
    # an engine of format 1 (before quantization: no "quantization" entry) still loads, as a float engine
    v1 = {k: v for k, v in cfg.items() if k != "quantization"} | {"format_version": 1}
    (partial / "config.json").write_text(json.dumps(v1))
    assert ModelRunner.from_dir(partial, cuda_graphs=False).config.quantization.quant_algo is None
    (partial / "config.json").write_text(json.dumps(dict(cfg, model=dict(cfg["model"], hidden_size=32))))
    with pytest.raises(ValueError, match="do not match its config"):
        ModelRunner.from_dir(partial)


def test_generate_rejects_bad_requests(engine_dir):
    runner = ModelRunner.from_dir(engine_dir, device="cpu")
    with pytest.raises(ValueError, match="prompt 0 has 65 tokens, over the engine's max_input_len 64"):
        runner.generate([[5] * 65], max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds the engine's max_seq_len 128"):
        runner.generate([[5] * 64], max_new_tokens=65)
    with pytest.raises(ValueError, match="token ids outside"):
        runner.generate([[5, 100000]], max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds the engine's max_batch_size 4"):
        runner.generate([[5]] * 5, max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        runner.generate([[5], []], max_new_tokens=4)
