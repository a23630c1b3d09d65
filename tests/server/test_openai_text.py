"""The OpenAI front end's text pieces, without a server: the windowed detokenizer, stop strings, token bytes,
and request checks."""

from __future__ import annotations

import random

import pytest

from backend.detokenizer import IncrementalDetokenizer, decode
from openai_frontend.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, completion_generation
from openai_frontend.text import StopMatcher, TokenText

TEXTS = ["Hello world", "机器学习是人工智能的一个分支。", "Emoji 🙂 🚀 and café", "In-flight batching keeps"]


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def tokenizer(request, tmp_path_factory):
    from backend.tokenization import load_tokenizer
    from tests.helpers import train_tokenizer

    d = tmp_path_factory.mktemp(request.param)
    train_tokenizer(d, kind=request.param)
    return load_tokenizer(str(d))


def test_pieces_concatenate_to_the_text_in_context(tokenizer):
    """However the ids are chunked, the pieces add up to the completion's text decoded after its prompt
    (random ids too: partial characters, byte tokens, special tokens)."""
    rng = random.Random(0)
    for trial in range(200):
        prompt = tokenizer.encode(rng.choice(TEXTS))
        if trial % 2:
            out = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 30))]
        else:
            out = tokenizer.encode(rng.choice(TEXTS) + rng.choice(TEXTS), add_special_tokens=False)
        d = IncrementalDetokenizer(tokenizer, prompt_ids=prompt)
        pieces, i = [], 0
        while i < len(out):
            k = rng.randrange(1, 4)
            pieces.append(d.add(out[i : i + k]))
            i += k
        pieces.append(d.add([], final=True))
        whole = IncrementalDetokenizer(tokenizer, prompt_ids=prompt).add(out, final=True)
        assert "".join(pieces) == whole
        full, before = decode(tokenizer, prompt + out), decode(tokenizer, prompt)
        if full.startswith(before):
            assert whole == full[len(before) :]


def test_first_token_keeps_its_leading_space(tokenizer):
    """SentencePiece drops the leading space of a decode call's first token: not of the completion's."""
    prompt = tokenizer.encode("In-flight")
    full = tokenizer.encode("In-flight batching", add_special_tokens=True)
    assert full[: len(prompt)] == prompt
    assert IncrementalDetokenizer(tokenizer, prompt_ids=prompt).add(full[len(prompt) :], final=True) == " batching"


def test_token_bytes_add_up_to_the_text(tokenizer):
    tt = TokenText(tokenizer)
    ids = tokenizer.encode("".join(TEXTS))
    assert b"".join(tt(i)[1] for i in ids).decode().strip() == "".join(TEXTS).strip()
    assert tt(tokenizer.bos_token_id) == ("", b"")


@pytest.mark.parametrize(
    "pieces, stops, out, hit",
    [
        (["Hello wor", "ld! Bye"], ["world"], "Hello ", True),
        (["ab", "c", "d"], ["cd", "bcx"], "ab", True),  # held back "bc", then "cd" matches first
        (["abc", "de"], ["xyz"], "abcde", False),
        (["a\n", "\nb"], ["\n\n"], "a", True),
        (["foo"], [], "foo", False),
        (["xx", "y", "z"], ["yz", "xyz"], "x", True),  # the earliest match wins
    ],
)
def test_stop_matcher(pieces, stops, out, hit):
    m = StopMatcher(stops)
    text, found = "", False
    for p in pieces:
        o, found = m.feed(p)
        text += o
        if found:
            break
    if not found:
        text += m.flush()
    assert (text, found) == (out, hit)


def test_request_checks():
    with pytest.raises(OpenAIError) as e:
        completion_generation(CompletionRequest(model="m", prompt="x", top_p=0.0))
    assert e.value.param == "top_p"
    gen = completion_generation(CompletionRequest(model="m", prompt="x", seed=-1, top_k=-1))
    assert (gen.seed, gen.top_k, gen.max_tokens, gen.temperature) == (2**64 - 1, 0, 16, 1.0)
    with pytest.raises(ValueError):
        ChatCompletionRequest(model="m", messages=[], nonsense=1)
