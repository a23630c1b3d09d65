"""From a step's logits to each request's next token(s): prepare the per-row tensors once, then call
the torch ops of `tensorrt_llm.runtime.sampling`; then the host-side rules (end id, stop words, beam
search bookkeeping).

Rows are the scheduled sequences that sample this step, in plan order: one row per request, or one per
live beam of a beam-search request. Beam rows are greedy rows for the sampling ops (temperature,
top-k/p do not apply to beam search, as in Hugging Face with `do_sample=False`); their log-probs come
from the same processed logits (penalties, bans) followed by log-softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from inflight_batcher.block_manager import BlockManager
from inflight_batcher.request import Request, RequestStatus, Sequence
from inflight_batcher.scheduler import ScheduledSeq, count_allocation
from tensorrt_llm.runtime import sampling as ops

PLACEHOLDER = -1  # a token sampled on the device, not yet read by the host


def banned_tokens(req: Request, seq: Sequence) -> list[int]:
    """Token ids `seq` may not take next: the last token of each bad word whose other tokens end the
    sequence (prompt included, as TensorRT-LLM does), and the end id while under `min_length`."""
    out = []
    toks = seq.tokens
    for w in req.bad_words:
        if len(w) == 1 or (len(toks) >= len(w) - 1 and toks[len(toks) - len(w) + 1 :] == w[:-1]):
            out.append(w[-1])
    if req.end_set and len(toks) - req.prompt_len < req.sampling.min_length:
        out.extend(req.end_set)
    return out


def hits_stop_word(req: Request, tokens: list[int], end: int | None = None) -> bool:
    """True when `tokens[:end]` (prompt + generated) end with one of the request's stop words, matched
    within the generated part only. Compares tails, never copies the sequence."""
    end = len(tokens) if end is None else end
    generated = end - req.prompt_len
    return any(generated >= len(w) and tokens[end - len(w) : end] == w for w in req.stop_words)


def prepare(rows: list[ScheduledSeq], vocab_size: int, device: torch.device) -> ops.SamplingTensors:
    """The per-row tensors of one step (built once, on the host, then moved)."""
    # Columns of the requests' fixed settings (Request.sampling_row), one transposition per step.
    temperature, top_k, top_p, rep, pres, freq = zip(*(r.request.sampling_row for r in rows), strict=True)
    banned = [banned_tokens(r.request, r.seq) for r in rows]
    seeds = [r.request.seed for r in rows]
    offsets = [len(r.seq.tokens) - r.request.prompt_len for r in rows]
    # Token histories only when a penalty needs them: copying them is the costly part of a step's prep.
    seen = [r.seq.tokens for r in rows] if any(p != 1.0 for p in rep) else None
    outs = None
    if any(p != 0.0 for p in pres) or any(p != 0.0 for p in freq):
        outs = [r.seq.tokens[r.request.prompt_len :] for r in rows]
    return ops.make_sampling_tensors(
        vocab_size, device, temperature, top_k, top_p, rep, pres, freq, seen, outs, banned, seeds, offsets
    )


@dataclass
class StepSample:
    """Host-side results of one step's sampling (one device->host copy), a column per field, a row per
    sampled sequence (columns rather than an object per row: this is read for every row of every step)."""

    tokens: list[int]
    log_probs: list[float]
    bad_logits: list[bool]  # NaN or inf logits: the row's request fails
    beam_log_probs: dict[int, torch.Tensor] = field(default_factory=dict)  # request id -> [beams, V]


class PendingSample:
    """A step's sampling launched on the device; `result()` waits for it and reads it on the host.

    `tokens` [N] int64 stays on the device: the next step's generation rows take their input ids from it
    before the host has seen them (overlapped scheduling)."""

    def __init__(self, logits: torch.Tensor, rows: list[ScheduledSeq], vocab_size: int) -> None:
        st = prepare(rows, vocab_size, logits.device)
        want_lp = any(r.request.return_log_probs for r in rows)
        tokens, log_probs = ops.sample(logits, st, return_log_probs=want_lp)
        self.tokens = tokens
        finite = torch.isfinite(logits).all(dim=-1)  # [N]: NaN/inf logits fail the request, not the step
        # One buffer, one copy back: [2, N] int64 (tokens, finite) unless log-probs are wanted, then [3, N] float64
        # (tokens, log-probs, finite): each conversion or fill is a launch in every step.
        if log_probs is None:
            packed = torch.stack([tokens, finite.long()])
        else:
            packed = torch.stack([tokens.double(), log_probs.double(), finite.double()])
        self._beam_rows = [i for i, r in enumerate(rows) if r.request.is_beam_search]
        self._beam_ids = [rows[i].request.request_id for i in self._beam_rows]
        beam_lp = None
        if self._beam_rows:
            idx = torch.tensor(self._beam_rows).to(logits.device, non_blocking=True)
            beam_lp = ops.process_logits(logits, st)[idx].log_softmax(-1)  # [beam rows, V]
        self._event = None
        if logits.is_cuda:
            # Copies into pinned memory return at once; the event says when they have landed.
            self._host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True).copy_(packed, non_blocking=True)
            self._beam_lp = None
            if beam_lp is not None:
                self._beam_lp = torch.empty(beam_lp.shape, pin_memory=True).copy_(beam_lp, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._beam_lp = packed, beam_lp

    def result(self) -> StepSample:
        if self._event is not None:
            self._event.synchronize()
        rows = self._host.tolist()  # (tokens, [log-probs,] finite), N each
        if len(rows) == 2:
            (tokens, finite), log_probs = rows, [0.0] * len(rows[0])
        else:
            tokens, log_probs, finite = rows
            tokens = list(map(int, tokens))
        out = StepSample(tokens, log_probs, [not f for f in finite])
        for j, rid in enumerate(self._beam_ids):
            prev = out.beam_log_probs.get(rid)
            row = self._beam_lp[j : j + 1]
            out.beam_log_probs[rid] = row if prev is None else torch.cat([prev, row])
        return out


def add_placeholder(req: Request) -> bool:
    """Stand in for the token being sampled for `req` (non-beam) so that the next step can be scheduled
    before it is known. Not when that token is the last one `req` may generate: a request that ends
    for certain is not scheduled again. Returns whether a placeholder was added."""
    if req.num_generated + 1 >= req.max_new_tokens:
        return False
    req.seqs[0].tokens.append(PLACEHOLDER)
    req.num_pending += 1
    return True


def append_token(req: Request, token: int, log_prob: float) -> None:
    """Add a sampled token to a non-beam request (in place of its oldest placeholder, if any) and set
    its status when it ends; an ended request drops its later placeholders.

    An end id token is not kept (TensorRT-LLM's outputs never hold it); a stop word is."""
    seq = req.seqs[0]
    at = len(seq.tokens) - req.num_pending  # where this token goes
    if req.num_pending:
        req.num_pending -= 1
    if token in req.end_set:
        req.status = RequestStatus.FINISHED_END_ID
    else:
        if at < len(seq.tokens):
            seq.tokens[at] = token
        else:
            seq.tokens.append(token)
        at += 1
        seq.log_probs.append(log_prob)
        seq.cum_log_prob += log_prob
        if req.stop_words and hits_stop_word(req, seq.tokens, at):
            req.status = RequestStatus.FINISHED_STOP_WORDS
        elif at - req.prompt_len >= req.max_new_tokens:
            req.status = RequestStatus.FINISHED_LENGTH
    if req.status.finished:
        del seq.tokens[at:]  # the placeholders of later steps
        req.num_pending = 0


def drop_placeholders(req: Request) -> None:
    """Forget the tokens of `req` still in flight (it ended: their steps' results will be ignored)."""
    if req.num_pending:
        del req.seqs[0].tokens[-req.num_pending :]
        req.num_pending = 0


# -- beam search ---------------------------------------------------------------------------------------
# Hugging Face's algorithm (transformers >= 4.50, `_beam_search` with early_stopping=False), per request:
#   1. scores of all continuations = beam cum log-prob + log-softmax(processed logits)   [live beams, V]
#   2. take the top 2W; a candidate "hits" when its token is the end id, it completes a stop word,
#      or it reaches max_new_tokens;
#   3. hits among the first W (and while improvement is still possible) join the finished pool with
#      score = cum_log_prob / generated_len ** length_penalty (the end id counts in the length);
#      the pool keeps the best W;
#   4. the first W non-hits become the live beams;
#   5. improvement stays possible while the pool is not full or the best live beam's score / len**lp
#      beats the pool's worst; the search ends when it is not, or when every candidate hit.
# KV: new beams share their parent's blocks (`fork`); the parent's partly filled last block is copied
# for every child but the first (copy on write), so each live beam writes only its own last block.


def beam_step(req: Request, log_probs: torch.Tensor, bm: BlockManager, copies: list[tuple[int, int]]) -> None:
    """Advance `req`'s beams by one token. `log_probs` [live beams, V] (CPU); appends (src, dst) block
    copies the caller must apply to the KV pool before the next step."""
    W, V = req.beam_width, log_probs.shape[-1]
    gen = req.num_generated + 1  # generated length of every candidate
    lp_pen = req.sampling.length_penalty
    cum = torch.tensor([s.cum_log_prob for s in req.seqs], dtype=torch.float32)
    scores, idx = (log_probs + cum[:, None]).flatten().topk(min(2 * W, log_probs.numel()))
    parents, tokens = (idx // V).tolist(), (idx % V).tolist()
    scores = scores.tolist()

    live: list[Sequence] = []
    for k, (score, p, t) in enumerate(zip(scores, parents, tokens, strict=True)):
        parent = req.seqs[p]
        step_lp = score - parent.cum_log_prob
        is_end = t in req.end_set
        toks = parent.tokens if is_end else parent.tokens + [t]
        hit = is_end or gen >= req.max_new_tokens or hits_stop_word(req, toks)
        if hit:
            if k < W and req.beam_improvable:
                # The end id counts in the ranking score (as in HF) but, like its token, not in the
                # returned log-probs: cum_log_prob == sum(log_probs) for every returned beam.
                lps = parent.log_probs + ([] if is_end else [step_lp])
                done = Sequence(tokens=list(toks), cum_log_prob=sum(lps), log_probs=lps)
                req.finished_beams.append((score / gen**lp_pen, done))
        elif len(live) < W:
            live.append(Sequence(tokens=toks, cum_log_prob=score, log_probs=parent.log_probs + [step_lp]))
            live[-1].block_table = bm.fork(parent.block_table)
            live[-1].parent = p
    req.finished_beams.sort(key=lambda e: -e[0])
    del req.finished_beams[W:]

    _copy_on_write(req, live, bm, copies)
    for s in req.seqs:
        bm.free(s.block_table)
    req.seqs = live

    if live and len(req.finished_beams) >= W:
        best = live[0].cum_log_prob / gen**lp_pen
        done = req.sampling.early_stopping or best <= req.finished_beams[-1][0]
        req.beam_improvable = req.beam_improvable and not done
    if not live or not req.beam_improvable:
        # One reason for the request: "length" when the beams ran to max_new_tokens, else "end_id".
        length = gen >= req.max_new_tokens
        req.status = RequestStatus.FINISHED_LENGTH if length else RequestStatus.FINISHED_END_ID


def _copy_on_write(req: Request, live: list[Sequence], bm: BlockManager, copies: list[tuple[int, int]]) -> None:
    """Give every child but the first of each parent its own copy of the parent's partial last block."""
    tpb = bm.tokens_per_block
    if req.num_computed_tokens % tpb == 0:
        return  # the next token starts a new block, allocated by the scheduler for each beam
    claimed: set[int] = set()
    for s in live:
        p = s.parent
        if p not in claimed:
            claimed.add(p)
            continue
        src = s.block_table[-1]
        evicted = bm.evicted_blocks
        (dst,) = bm.allocate(1)
        count_allocation(req, bm, 1, evicted)
        bm.free([src])
        s.block_table[-1] = dst
        copies.append((src, dst))
