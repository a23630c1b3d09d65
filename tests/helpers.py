"""Factories for tests: tiny Hugging Face Llama models with random weights, a tokenizer trained on the
spot, and engines built from them. No downloads."""

import json
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning is a field of study in artificial intelligence.",
    "What is machine learning? It focuses on learning from data.",
    "How do I count to nine in French? Un, deux, trois, quatre, cinq, six, sept, huit, neuf.",
    "Triton Inference Server serves models over HTTP and gRPC.",
    "机器学习是人工智能的一个分支。你好，世界！",
    "Emoji test: 🙂 🚀 👍🏽 and café, naïve, résumé.",
    "In-flight batching keeps the GPU busy with many requests at once.",
] * 4

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def train_tokenizer(out_dir: Path | str, vocab_size: int = 384, kind: str = "bytelevel"):
    """A byte-level BPE (GPT/Llama-3 style) or Metaspace (SentencePiece/Llama-2 style) tokenizer,
    trained on CORPUS and saved as a Hugging Face tokenizer. Ids 0..3 are <unk> <s> </s> <pad>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        alphabet = [f"<0x{b:02X}>" for b in range(256)]
    else:
        raise ValueError(kind)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer)
    if kind == "metaspace":  # byte-fallback pieces must exist as tokens
        tok.add_tokens([a for a in alphabet if tok.token_to_id(a) is None])
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_llama_config(vocab_size: int = 384, **overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )  # fmt: skip
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_tiny_llama(out_dir: Path | str, seed: int = 0, with_tokenizer: bool = True, **overrides):
    """Saves a random-weight Llama (and, by default, a trained tokenizer) to `out_dir`; returns the model.
    Weights are scaled up from Hugging Face's init so that greedy outputs vary between prompts."""
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    vocab = overrides.pop("vocab_size", None)
    if with_tokenizer:
        tok = train_tokenizer(out_dir)
        vocab = vocab or len(tok)
    cfg = tiny_llama_config(vocab or 384, **overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out_dir)
    return model


def build_engine(model_dir: Path | str, engine_dir: Path | str, dtype: str = "float32", **build) -> Path:
    """Builds through the real `trtllm-build` command line (in-process)."""
    from tensorrt_llm.commands.build import main

    args = ["--model_dir", str(model_dir), "--output_dir", str(engine_dir), "--dtype", dtype]
    build.setdefault("tokens_per_block", 8)
    build.setdefault("max_input_len", 128)
    build.setdefault("max_seq_len", 256)
    for k, v in build.items():
        args += [f"--{k}", str(v)]
    if main(args) != 0:
        raise RuntimeError(f"trtllm-build failed: {args}")
    return Path(engine_dir)


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())
