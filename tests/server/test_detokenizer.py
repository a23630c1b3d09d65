"""Streamed text == non-streamed text, byte for byte, for byte-level BPE and SentencePiece-style tokenizers."""

import random

import pytest

from backend.detokenizer import IncrementalDetokenizer, add_many, decode, stream_delta
from tests.helpers import train_tokenizer

TEXTS = [
    "What is machine learning? It focuses on learning from data.",
    "机器学习是人工智能的一个分支。你好，世界！",
    "Emoji test: 🙂 🚀 👍🏽 and café, naïve, résumé.",
    "  leading and   repeated spaces ",
    "mixed 机器 🙂 text, with 'quotes' and Ünïcödé",
]


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def tok(request, tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp(request.param), kind=request.param)


def chunks(ids, size):
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


def stream_stateful(tok, ids, size):
    d = IncrementalDetokenizer(tok)
    parts = [d.add(c) for c in chunks(ids, size)]
    parts.append(d.finish())
    return "".join(parts)


def stream_stateless(tok, ids, size):
    parts, prefix = [], []
    cs = chunks(ids, size)
    for i, c in enumerate(cs):
        parts.append(stream_delta(tok, prefix, c, final=i == len(cs) - 1))
        prefix = prefix + c
    return "".join(parts)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_whole(tok, text, size):
    ids = tok.encode(text, add_special_tokens=False)
    whole = decode(tok, ids)
    assert stream_stateful(tok, ids, size).encode() == whole.encode()
    assert stream_stateless(tok, ids, size).encode() == whole.encode()


def test_whole_text_round_trips(tok):
    for text in TEXTS[:3]:  # (SentencePiece's decoder strips one leading space, by design)
        assert decode(tok, tok.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("seed", range(30))
def test_random_ids_including_broken_utf8(tok, seed):
    # A random model emits any token, e.g. lone UTF-8 continuation bytes: the stream must still match.
    rng = random.Random(seed)
    ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 40))]
    whole = decode(tok, ids)
    for size in (1, 2, 5):
        assert stream_stateful(tok, ids, size) == whole
        assert stream_stateless(tok, ids, size) == whole


def test_naive_chunk_decoding_is_wrong(tok):
    """The bug being fixed: decoding chunks in isolation breaks multi-byte characters or spaces."""
    broken = 0
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        naive = "".join(decode(tok, [i]) for i in ids)
        broken += naive != text
    assert broken > 0


def test_special_tokens_skipped(tok):
    ids = [tok.bos_token_id] + tok.encode("café 🙂", add_special_tokens=False) + [tok.eos_token_id]
    assert stream_stateful(tok, ids, 1) == decode(tok, ids) == "café 🙂"


def test_batched_streams_equal_single_streams(tok):
    """`add_many` (one batched decode per step, what the engine process's text thread runs) gives each
    stream exactly the pieces `add` gives it alone."""
    rng = random.Random(7)
    streams = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    streams += [[rng.randrange(len(tok)) for _ in range(rng.randrange(1, 30))] for _ in range(10)]
    alone = [IncrementalDetokenizer(tok) for _ in streams]
    batched = [IncrementalDetokenizer(tok) for _ in streams]
    pos = [0] * len(streams)
    expected = [[] for _ in streams]
    got = [[] for _ in streams]
    while any(p < len(s) + 1 for p, s in zip(pos, streams, strict=True)):
        step = []
        for i, s in enumerate(streams):
            if pos[i] > len(s):
                continue
            k = rng.choice([0, 1, 1, 2, 3])
            new, final = s[pos[i] : pos[i] + k], pos[i] + k >= len(s)
            pos[i] = len(s) + 1 if final else pos[i] + k
            expected[i].append(alone[i].add(new, final))
            step.append((i, new, final))
        for (i, _, _), piece in zip(step, add_many([(batched[i], new, f) for i, new, f in step]), strict=True):
            got[i].append(piece)
    assert got == expected
    assert ["".join(g) for g in got] == [decode(tok, s) for s in streams]
