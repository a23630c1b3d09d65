"""Top-k / top-p sampling in torch ops, with no host synchronisation.

Sampling is an exponential race (equivalent to Gumbel-max): token = argmax_j p_j / E_j with
E_j ~ Exp(1). The noise E comes from a counter-based hash of (seed, offset, token id), so a row's draw
depends only on its own seed and offset, is the same on CPU and GPU, and needs no generator state.
Callers pass a different `offsets` each step (e.g. the number of tokens generated so far), otherwise a
sequence would draw the same noise every step.

Conventions: `temperature <= 0` means greedy; `top_k <= 0` means no top-k limit; `top_p` outside (0, 1)
means no top-p limit. Top-p is applied to the distribution left after top-k (renormalized).
"""

from __future__ import annotations

import torch

from ._common import check

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # murmur3 finalizer on int64 tensors holding 32-bit values; products are masked back to 32 bits
    # (torch int64 multiplication wraps, and only the low 32 bits are kept)
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def hash_uniform(seeds: torch.Tensor, offsets: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) float32 noise `[N, K]` from seeds `[N]`, offsets `[N]` and token ids `[N, K]`."""
    s = seeds.long()[:, None]
    h = _mix32((s & _MASK32) ^ 0x9E3779B9)
    h = _mix32(h ^ ((s >> 32) & _MASK32))
    h = _mix32(h ^ (offsets.long()[:, None] & _MASK32))
    return bits_to_uniform(_mix32(h ^ (token_ids.long() & _MASK32)))


def bits_to_uniform(h: torch.Tensor) -> torch.Tensor:
    """32-bit values (in int64) -> float32 in (0, 1). 23 bits, so that k + 0.5 stays exact in float32:
    with 24 bits the top value rounds to 1.0, whose Exp(1) draw is 0 and the race a 0/0."""
    return ((h >> 9).float() + 0.5) * (1.0 / (1 << 23))


def top_k_top_p_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_top_k: int | None = None,
) -> torch.Tensor:
    """Sample one token per row of logits `[N, V]`; returns `[N]` int64.

    temperature `[N]` float, top_k `[N]` int, top_p `[N]` float. Randomness: `seeds` `[N]` int64 (with
    `offsets` `[N]`, default 0) for reproducible per-row draws, else `generator` (or torch's default).
    `max_top_k`, when the host knows every row has `0 < top_k <= max_top_k`, replaces the full-vocab
    sort by `torch.topk(max_top_k)` (much cheaper for big vocabularies).
    """
    check(logits.dim() == 2, "logits must be [N, V], got {}", tuple(logits.shape))
    N, V = logits.shape
    for name, t in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        check(t.shape == (N,), "{} must be [N={}], got {}", name, N, tuple(t.shape))
    logits = logits.float()
    greedy = temperature <= 0
    logits = logits / torch.where(greedy, 1.0, temperature.float())[:, None]

    # candidates in descending order: [N, K], K = V or max_top_k
    if max_top_k is not None and 0 < max_top_k < V:
        vals, ids = torch.topk(logits, max_top_k, dim=-1)
    else:
        vals, ids = torch.sort(logits, dim=-1, descending=True)
    K = vals.shape[1]
    rank = torch.arange(K, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k.long(), K)[:, None]
    vals = vals.masked_fill(rank >= k, float("-inf"))
    probs = vals.softmax(-1)
    p = top_p.float()[:, None]
    use_p = (p > 0) & (p < 1)
    # keep a candidate if the mass strictly before it is below top_p (so the first one always stays)
    mass_before = probs.cumsum(-1) - probs
    probs = probs.masked_fill(use_p & (mass_before >= p) & (rank > 0), 0.0)

    if seeds is not None:
        check(seeds.shape == (N,), "seeds must be [N={}]", N)
        off = offsets if offsets is not None else torch.zeros_like(seeds)
        u = hash_uniform(seeds, off, ids)
    else:
        u = torch.rand(N, K, device=logits.device, generator=generator).clamp_(min=1e-20)
    race = probs / -torch.log(u)  # p / Exp(1); filtered candidates have p = 0
    race = torch.where(greedy[:, None], probs, race)
    pick = race.argmax(-1, keepdim=True)  # [N, 1] rank in the candidate list
    return ids.gather(1, pick).squeeze(1)


def top_k_top_p_sample_ref(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Row-by-row reference with `torch.multinomial`: the filtered distribution, then a draw."""
    out = []
    for row, t, k, p in zip(logits.float(), temperature.tolist(), top_k.tolist(), top_p.tolist(), strict=True):
        if t <= 0:
            out.append(int(row.argmax()))
            continue
        probs = top_k_top_p_probs(row / t, k, p)
        out.append(int(torch.multinomial(probs, 1, generator=generator)))
    return torch.tensor(out, dtype=torch.int64, device=logits.device)


def top_k_top_p_probs(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The filtered, renormalized distribution `[V]` one row samples from (for tests and references)."""
    vals, ids = logits.float().sort(descending=True)
    if top_k > 0:
        vals[top_k:] = float("-inf")
    probs = vals.softmax(-1)
    if 0 < top_p < 1:
        before = probs.cumsum(-1) - probs
        drop = before >= top_p
        drop[0] = False
        probs[drop] = 0.0
    probs = probs / probs.sum()
    return torch.zeros_like(probs).scatter_(0, ids, probs)
