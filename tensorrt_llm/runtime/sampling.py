"""Next-token selection over a batch of logits: prepare the per-row tensors once, then sample.

Greedy rule (one for the whole project): a row is greedy when `temperature == 0`, or `top_k == 1`, or
no sampling knob was given at all (temperature unset and top_k, top_p both 0). TensorRT-LLM treated
`temperature` alone as greedy, which its users reported as "sampling ignored"; here a temperature
that is set samples from the whole vocabulary.

Draws come from `tensorrt_llm.kernels.top_k_top_p_sample`: noise hashed from (seed, offset, token), so
a row's token depends only on its own seed and how many tokens it has generated (the offset): the same
seed gives the same output alone or in any batch, with no generator state and no host sync.

Penalties: `repetition_penalty` (Hugging Face/CTRL: divide positive logits, multiply negative ones)
over prompt and generated tokens; `presence_penalty` and `frequency_penalty` (OpenAI) over generated
tokens only. Log-probs are those of the distribution sampled from, after penalties and temperature
and before top-k/top-p truncation.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tensorrt_llm import kernels
from tensorrt_llm._utils import host_to_device


def is_greedy(temperature: float | None, top_k: int, top_p: float) -> bool:
    if temperature == 0.0 or top_k == 1:
        return True
    return temperature is None and top_k == 0 and top_p == 0.0


@dataclass
class SamplingTensors:
    """Per-row sampling inputs of one step (N rows), all on the logits' device."""

    all_greedy: bool
    # Made only when some row samples (all_greedy False); an all-greedy step reads none of them.
    greedy: torch.Tensor | None = None  # [N] bool
    temperature: torch.Tensor | None = None  # [N] float32, 1.0 on greedy rows
    top_k: torch.Tensor | None = None  # [N] int64, 0 = no limit
    top_p: torch.Tensor | None = None  # [N] float32, 1.0 = no limit
    repetition_penalty: torch.Tensor | None = None  # [N]
    presence_penalty: torch.Tensor | None = None  # [N]
    frequency_penalty: torch.Tensor | None = None  # [N]
    seen_ids: torch.Tensor | None = None  # [N, L] prompt + generated ids, -1 padded
    output_ids: torch.Tensor | None = None  # [N, L'] generated ids, -1 padded
    banned: torch.Tensor | None = None  # [2, K] int64 (row, token id) pairs: bad words, end ids under min_length
    seeds: torch.Tensor | None = None  # [N] int64
    offsets: torch.Tensor | None = None  # [N] int64: tokens generated so far
    max_top_k: int | None = None  # when every sampled row has 0 < top_k <= it: top-k without a full sort


def _pad(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    out = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return host_to_device(out, device)


def make_sampling_tensors(
    vocab_size: int,
    device: torch.device | str,
    temperature: Sequence[float | None],
    top_k: Sequence[int],
    top_p: Sequence[float],
    repetition_penalty: Sequence[float] | None = None,
    presence_penalty: Sequence[float] | None = None,
    frequency_penalty: Sequence[float] | None = None,
    seen_ids: Sequence[Sequence[int]] | None = None,
    output_ids: Sequence[Sequence[int]] | None = None,
    banned: Sequence[Sequence[int]] | None = None,
    seeds: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
) -> SamplingTensors:
    """Builds the step's tensors from host lists; penalty tensors are made only when some row uses one."""
    device = torch.device(device)
    greedy = [is_greedy(t, k, p) for t, k, p in zip(temperature, top_k, top_p, strict=True)]

    def vec(values: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
        return host_to_device(torch.tensor(values, dtype=dtype), device)

    st = SamplingTensors(all_greedy=all(greedy))
    if not st.all_greedy:
        if seeds is None or offsets is None:
            raise ValueError("sampled rows need seeds and offsets")
        # Two host buffers, two copies (each copy is ~10-20 us of host time on CUDA, every step); the fields
        # are views into them.
        n = len(greedy)
        ints = vec([*greedy, *top_k, *seeds, *offsets], torch.int64)  # [4N]
        temps = [1.0 if g or t is None else t for g, t in zip(greedy, temperature, strict=True)]
        floats = vec(temps + [p if 0.0 < p < 1.0 else 1.0 for p in top_p], torch.float32)  # [2N]
        st.greedy, st.top_k, st.seeds, st.offsets = ints[:n] != 0, ints[n : 2 * n], ints[2 * n : 3 * n], ints[3 * n :]
        st.temperature, st.top_p = floats[:n], floats[n:]
        ks = [k for k, g in zip(top_k, greedy, strict=True) if not g]
        st.max_top_k = max(ks) if all(k > 0 for k in ks) else None
    if repetition_penalty is not None and any(p != 1.0 for p in repetition_penalty):
        st.repetition_penalty = vec(repetition_penalty, torch.float32)
        st.seen_ids = _pad(seen_ids or [[] for _ in greedy], device)
    if presence_penalty is not None and any(p != 0.0 for p in presence_penalty):
        st.presence_penalty = vec(presence_penalty, torch.float32)
    if frequency_penalty is not None and any(p != 0.0 for p in frequency_penalty):
        st.frequency_penalty = vec(frequency_penalty, torch.float32)
    if st.presence_penalty is not None or st.frequency_penalty is not None:
        st.output_ids = _pad(output_ids or [[] for _ in greedy], device)
    if banned is not None and any(banned):
        # Pairs, not an [N, V] mask: with min_length every row bans its end ids, and a dense mask was a
        # 32 MB host build and copy per step at batch 256 (measured: 44 % of the executor thread).
        # Ids outside the vocabulary cannot be sampled anyway, and on CUDA they would fault the indexing.
        pairs = [(i, t) for i, ids in enumerate(banned) for t in ids if 0 <= t < vocab_size]
        if pairs:
            st.banned = vec(list(zip(*pairs, strict=True)), torch.int64)
    return st


def _counts(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """[N, L] ids (-1 padded) → [N, V] occurrence counts."""
    counts = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.float32, device=ids.device)
    counts.scatter_add_(1, torch.where(ids < 0, vocab, ids), torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab]


def process_logits(logits: torch.Tensor, st: SamplingTensors) -> torch.Tensor:
    """Penalties, bans and temperature applied to float32 logits [N, V] (returns a new tensor)."""
    logits = logits.float().clone()
    vocab = logits.shape[-1]
    if st.repetition_penalty is not None:
        seen = _counts(st.seen_ids, vocab) > 0
        p = st.repetition_penalty[:, None]
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if st.output_ids is not None:
        counts = _counts(st.output_ids, vocab)
        if st.presence_penalty is not None:
            logits -= st.presence_penalty[:, None] * (counts > 0)
        if st.frequency_penalty is not None:
            logits -= st.frequency_penalty[:, None] * counts
    if st.banned is not None:
        # The value made on the device (a fill), not copied from the host: torch.tensor(..., device=cuda) is a
        # blocking copy that waited for the whole step's forward here, every step with a ban (min_length),
        # undoing the overlap of host and GPU (py-spy, H200: 23 % of the executor thread's wall time).
        logits.index_put_((st.banned[0], st.banned[1]), logits.new_full((), float("-inf")))
    if not st.all_greedy:
        logits /= st.temperature[:, None]
    return logits


def sample(
    logits: torch.Tensor, st: SamplingTensors, return_log_probs: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token of each row [N] (int64) and, on request, its log-prob [N] (float32)."""
    logits = process_logits(logits, st)
    if st.all_greedy:
        tokens = logits.argmax(-1)
    else:
        # Temperature is already applied; 0 marks the greedy rows for the kernel.
        temperature = torch.where(st.greedy, 0.0, 1.0)
        tokens = kernels.top_k_top_p_sample(
            logits, temperature, st.top_k, st.top_p, st.seeds, st.offsets, max_top_k=st.max_top_k
        )
    log_probs = None
    if return_log_probs:
        log_probs = logits.log_softmax(-1).gather(1, tokens[:, None])[:, 0]
    return tokens, log_probs
