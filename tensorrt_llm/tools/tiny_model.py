"""A tiny checkpoint with random weights and a tokenizer trained on the spot: the embedded default of the
quick start and the tests, made without any download. Llama by default; any architecture transformers
has (`--architecture Qwen2ForCausalLM`) with the same tiny shape.

    python -m tensorrt_llm.tools.tiny_model OUT_DIR [--layers N] [--hidden N] [--kv_heads N] [--architecture A]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

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


def train_tokenizer(out_dir: Path | str, vocab_size: int = 384, kind: str = "bytelevel") -> PreTrainedTokenizerFast:
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


def tiny_llama_config(vocab_size: int = 384, **overrides) -> PretrainedConfig:
    return tiny_config("LlamaForCausalLM", vocab_size, **overrides)


def tiny_config(architecture: str, vocab_size: int = 384, **overrides) -> PretrainedConfig:
    """A transformers config of `architecture` with the tiny shape (hidden 64, 2 layers, 4 heads)."""
    import transformers

    kw = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )  # fmt: skip
    kw.update(overrides)
    return getattr(transformers, architecture).config_class(**kw)


def make_tiny_llama(out_dir: Path | str, seed: int = 0, with_tokenizer: bool = True, **overrides) -> PreTrainedModel:
    """Saves a random-weight Llama (and, by default, a trained tokenizer) to `out_dir`; returns the model."""
    return make_tiny_model(out_dir, "LlamaForCausalLM", seed, with_tokenizer, **overrides)


def make_tiny_model(
    out_dir: Path | str,
    architecture: str = "LlamaForCausalLM",
    seed: int = 0,
    with_tokenizer: bool = True,
    norm_std: float = 0.0,
    **overrides,
) -> PreTrainedModel:
    """Saves a random-weight model of `architecture` (and, by default, a trained tokenizer) to `out_dir`;
    returns the model. Weights are scaled up from Hugging Face's init so that greedy outputs vary between
    prompts; norm weights keep their init (1, or 0 where the norm weighs by 1 + w) plus N(0, norm_std)."""
    import transformers

    out_dir = Path(out_dir)
    vocab = overrides.pop("vocab_size", None)
    if with_tokenizer:
        tok = train_tokenizer(out_dir)
        vocab = vocab or len(tok)
    cfg = tiny_config(architecture, vocab or 384, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.08)
            elif norm_std:
                p.add_(torch.randn_like(p) * norm_std)
    model.save_pretrained(out_dir)
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--architecture", default="LlamaForCausalLM", help="a transformers class, e.g. Qwen2ForCausalLM")
    a = p.parse_args(argv)
    make_tiny_model(a.out_dir, a.architecture, a.seed, num_hidden_layers=a.layers, hidden_size=a.hidden,
                    intermediate_size=2 * a.hidden, num_key_value_heads=a.kv_heads)  # fmt: skip
    print(f"tiny {a.architecture} checkpoint and tokenizer written to {a.out_dir}")


if __name__ == "__main__":
    main()
