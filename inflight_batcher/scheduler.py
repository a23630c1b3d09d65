"""The scheduler plans one step at a time; the executor runs the plan and never calls back into it.

Invariant kept here (vLLM's): a request computes tokens `[num_computed_tokens, num_tokens)` of its
sequences; when a step brings `num_computed_tokens` up to `num_tokens`, the step also samples the next
token. A new prompt (context phase), one new token (generation phase), a prompt split over several
steps (chunked context) and the recompute of a paused request are all this one rule.

Each step:
1. `_schedule_running`: every running request, oldest first, gets its tokens and blocks. Under
   `max_utilization`, when blocks run out the newest running requests are paused (blocks freed, put back
   at the head of the queue, recomputed on resume).
2. `_admit_waiting`: then, if nothing was paused, queued requests are admitted in arrival order while
   batch slots, the token budget and blocks allow (first come, first served: the head blocks the rest).

Prefix reuse (when the block manager has it on): a request admitted with nothing computed first takes the
longest chain of cached blocks matching its tokens (`BlockManager.lookup`), never its last token (the
step must produce logits), and starts computing after them; `publish` makes the full blocks a finished
step computed findable by later requests.

KV reservations: under `guaranteed_no_evict` every request, and under `max_utilization` every beam
search request, reserves at admission the blocks of its whole possible length (`reserve_blocks`).
Blocks are still allocated lazily; `_outstanding()` is what reserved requests may still take, and
nobody else may use it, so a reserved request's extension never fails. Invariant:
`bm.num_free >= _outstanding()` at all times; `_Budget.blocks` is the difference, kept current
through the step's plan.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property

from inflight_batcher.block_manager import BlockManager
from inflight_batcher.request import Request, RequestStatus, Sequence

LONG_ROPE_SEED = 1  # the start of the key chain of blocks computed with LongRoPE's long factors (others: None)


@dataclass(slots=True)  # one per row per step
class ScheduledSeq:
    """One sequence (beam) in this step: compute `num_new` tokens from position `start`."""

    request: Request
    seq: Sequence
    start: int
    num_new: int
    block_table: list[int]  # a copy, long enough for start + num_new tokens
    sample: bool  # the step reaches the end of the sequence: its logits pick the next token


def count_allocation(req: Request, bm: BlockManager, n: int, evicted_before: int) -> None:
    """Adds `n` blocks just allocated for `req` to its perf metrics; those past `evicted_before` (the block
    manager's eviction count before the allocation) took a cached block, the rest were blank."""
    req.perf.kv_alloc_total_blocks += n
    req.perf.kv_alloc_new_blocks += n - (bm.evicted_blocks - evicted_before)


@dataclass
class SchedulerOutput:
    """The plan of one step: context-phase sequences first, then generation-phase ones."""

    context: list[ScheduledSeq] = field(default_factory=list)
    generation: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def seqs(self) -> list[ScheduledSeq]:
        return self.context + self.generation

    @cached_property
    def new_tokens_per_request(self) -> list[tuple[Request, int]]:
        """(request, tokens it computes this step), each scheduled request once, in plan order."""
        return list({id(s.request): (s.request, s.num_new) for s in self.context + self.generation}.values())

    @property
    def requests(self) -> list[Request]:
        """Scheduled requests, each once, in plan order."""
        return [r for r, _ in self.new_tokens_per_request]

    @property
    def num_context_tokens(self) -> int:
        return sum(s.num_new for s in self.context)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new for s in self.context) + len(self.generation)

    def __bool__(self) -> bool:
        return bool(self.context or self.generation)


@dataclass
class _Budget:
    """What is left for the rest of this step's plan."""

    tokens: int  # of max_num_tokens
    seats: int  # of max_batch_size (a beam is a seat)
    blocks: int  # free blocks minus those reserved requests may still take (see module doc)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        policy: str,
        max_batch_size: int,
        max_num_tokens: int,
        enable_chunked_context: bool = False,
        longrope_from: int | None = None,
    ) -> None:
        self.bm = block_manager
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.enable_chunked_context = enable_chunked_context
        # LongRoPE engines (ModelConfig.longrope_from): a request's KV is computed with the long factors when it is
        # longer than this, so one that grows past it is recomputed, and cached blocks are keyed by the set.
        self.longrope_from = longrope_from
        # Keys a query attends to on every layer (sliding window), 0: all. With a window, blocks wholly
        # before the window of a request's next query are handed back (`release_out_of_window`), except
        # those holding one of the first `sinks` keys (attention sinks: every query sees them).
        self.window = 0
        self.sinks = 0
        self.waiting: deque[Request] = deque()  # paused requests at the head, then arrivals in order
        self.running: list[Request] = []  # in admission order; the newest is paused first

    # -- sizes --
    def reserves(self, req: Request) -> bool:
        return self.policy == "guaranteed_no_evict" or req.is_beam_search

    def reserve_blocks(self, req: Request) -> int:
        """Blocks `req` can hold at most: the prompt's, shared by the beams, then each beam's own tail
        (its copy of the prompt's partial last block plus the generated tokens)."""
        total = req.prompt_len + req.max_new_tokens
        if not req.is_beam_search:
            if self.window:  # the prompt's blocks at first, then the sinks' and a window's (+1: it straddles blocks)
                windowed = max(
                    self.bm.blocks_for(req.prompt_len),
                    self.bm.blocks_for(self.sinks) + self.bm.blocks_for(self.window) + 1,
                )
                return min(self.bm.blocks_for(total), windowed)
            return self.bm.blocks_for(total)
        return self.bm.blocks_for(req.prompt_len) + req.beam_width * (self.bm.blocks_for(req.max_new_tokens) + 1)

    def check_fits(self, req: Request) -> None:
        """Raise ValueError when `req` could never run, even alone (reliability.md, fault 3)."""
        if (
            self.longrope_from is not None
            and req.is_beam_search
            and req.prompt_len <= self.longrope_from < req.prompt_len + req.max_new_tokens
        ):
            # Growing past it means computing the beams again (`_schedule_running`), which forked beams cannot.
            raise ValueError(
                f"beam search that may grow past LongRoPE's original context ({self.longrope_from} tokens) is not "
                f"supported: a prompt of {req.prompt_len} tokens and max_new_tokens={req.max_new_tokens}"
            )
        need = self.reserve_blocks(req)
        if need > self.bm.num_blocks:
            raise ValueError(
                f"request needs {need} KV blocks ({req.prompt_len} prompt + {req.max_new_tokens} new tokens"
                f", beam_width={req.beam_width}) but the whole cache has {self.bm.num_blocks} blocks of "
                f"{self.bm.tokens_per_block} tokens"
            )

    def _held(self, req: Request) -> int:
        released = self.bm.released
        if len(req.seqs) == 1:
            table = req.seqs[0].block_table
            return len(table) - table.count(released) if self.window else len(table)
        return len({b for s in req.seqs for b in s.block_table} - {released})  # beams share blocks: once each

    def release_out_of_window(self) -> None:
        """With a window W, a running request's next query (position num_computed_tokens) and every later
        one read keys from num_computed_tokens - W + 1 on: the blocks wholly before go back to the pool,
        except, with S sinks, those holding keys [0, S), which every query reads (so the blocks wholly in
        keys [S, num_computed_tokens - W] go). (A step already launched reads them before any later step
        can write them: one stream.)"""
        if not self.window:
            return
        tpb = self.bm.tokens_per_block
        first = -(-self.sinks // tpb)  # blocks holding a sink key stay
        for req in self.running:
            upto = max(0, req.num_computed_tokens - self.window + 1) // tpb
            if upto > first:
                for s in req.seqs:
                    if first:  # the entries between the sinks' blocks and the window's, in place
                        between = s.block_table[first:upto]
                        self.bm.release(between, len(between))
                        s.block_table[first:upto] = between
                    else:
                        self.bm.release(s.block_table, upto)

    def reserved(self, req: Request) -> int:
        """`reserve_blocks(req)`, computed once: it depends only on the request and this scheduler."""
        if req.reserve < 0:
            req.reserve = self.reserve_blocks(req)
        return req.reserve

    def _outstanding(self) -> int:
        """Blocks the running requests may still take of their reservations."""
        return sum(max(0, self.reserved(r) - self._held(r)) for r in self.running if self.reserves(r))

    # -- queue --
    def add(self, req: Request) -> None:
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def remove(self, req: Request) -> None:
        """Take `req` out (finished, cancelled or failed) and free its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        for s in req.seqs:
            self.bm.free(s.block_table)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- planning --
    def schedule(self) -> SchedulerOutput:
        self.release_out_of_window()
        out = SchedulerOutput()
        budget = _Budget(
            tokens=self.max_num_tokens,
            seats=self.max_batch_size - sum(r.beam_width for r in self.running),
            blocks=self.bm.num_free - self._outstanding(),
        )
        self._schedule_running(out, budget)
        if not out.preempted:
            # Admitting right after pausing would take the blocks the running requests just needed.
            self._admit_waiting(out, budget)
        return out

    def _rope_long(self, req: Request) -> bool:
        return self.longrope_from is not None and req.num_tokens > self.longrope_from

    def _key_seed(self, req: Request) -> int | None:
        """Where `req`'s chain of block keys starts: blocks of KV computed with LongRoPE's long factors are
        not those of the same tokens computed with the short ones."""
        return LONG_ROPE_SEED if req.kv_rope_long else None

    def _schedule_running(self, out: SchedulerOutput, budget: _Budget) -> None:
        i = 0
        while i < len(self.running):
            req = self.running[i]
            if not req.kv_rope_long and req.num_computed_tokens and self._rope_long(req):
                # Grown past LongRoPE's original context: every token is computed again with the long factors
                # (Hugging Face's generate drops its cache there); a pause does it, resumed next step.
                self._preempt(req, out, budget)
                continue  # the list shrank: `i` already points past it
            remaining = req.num_tokens - req.num_computed_tokens
            beams = req.num_live_beams
            # Chunks only before the beams fork (one sequence), so a beam request moves in lockstep.
            n = (
                min(remaining, budget.tokens)
                if beams == 1
                else (remaining if remaining * beams <= budget.tokens else 0)
            )
            if n == 0:
                i += 1
                continue
            if not self.reserves(req):
                need = sum(self.bm.blocks_to_extend(s.block_table, req.num_computed_tokens + n) for s in req.seqs)
                while need > budget.blocks:
                    victim = self._pick_victim()
                    assert victim is not None, "no request to pause; check_fits should have refused one"
                    self._preempt(victim, out, budget)
                    if victim is req:
                        break
                if req.status == RequestStatus.PAUSED:
                    continue  # `req` paused itself; the list shrank, so `i` already points past it
                budget.blocks -= need
            # (A reserved request's new blocks come out of its own reservation: budget.blocks unchanged.)
            self._place(req, n, out)
            budget.tokens -= n * beams
            i += 1

    def _reusable(self, req: Request) -> tuple[list[int], list[int]]:
        """(blocks, keys) of the longest cached prefix of `req`'s tokens, nothing taken yet."""
        if not self.bm.enable_reuse or req.num_computed_tokens or len(req.seqs) > 1:
            return [], []
        tokens = req.seqs[0].tokens if req.seqs else req.input_ids
        usable = (req.num_tokens - 1) // self.bm.tokens_per_block  # the last token is always computed
        seed = self._key_seed(req)
        keys = self.bm.keys(tokens[: usable * self.bm.tokens_per_block], prev=seed)
        return self.bm.lookup(tokens, keys, seed), keys

    def _admit_waiting(self, out: SchedulerOutput, budget: _Budget) -> None:
        while self.waiting and budget.tokens > 0:
            req = self.waiting[0]
            if req.beam_width > budget.seats:
                break
            # A waiting request holds no KV: what it computes from admission on, and the prefix it may take, use
            # the factor set of its length now (LongRoPE).
            req.kv_rope_long = self._rope_long(req)
            found, keys = self._reusable(req)
            # Found blocks held by live requests cost no free block; cached ones leave the free pool as
            # an allocation would (and are counted in the reservation as held).
            shared = sum(1 for b in found if self.bm.ref_counts[b] > 0)
            matched = len(found) * self.bm.tokens_per_block
            remaining = req.num_tokens - req.num_computed_tokens - matched
            # A paused request is always resumed in chunks: its prompt + generated tokens may exceed
            # one step's budget even when the prompt alone did not.
            chunked = self.enable_chunked_context or req.status == RequestStatus.PAUSED
            n = min(remaining, budget.tokens) if chunked else remaining
            if n > budget.tokens:
                break
            need = self.reserved(req) if self.reserves(req) else self.bm.blocks_for(matched + n)
            need -= shared
            if need > budget.blocks:
                break
            self.waiting.popleft()
            if not req.seqs:
                req.seqs = [Sequence(tokens=list(req.input_ids))]
            if found:
                seq = req.seqs[0]
                seq.block_table = self.bm.take(found, matched)
                seq.block_keys = keys[: len(found)]
                req.num_computed_tokens = matched
                req.perf.kv_reused_blocks += len(found)
            if not req.perf.first_scheduled_time_ns:
                req.perf.first_scheduled_time_ns = time.time_ns()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            self._place(req, n, out)
            budget.tokens -= n
            budget.seats -= req.beam_width
            budget.blocks -= need

    def _place(self, req: Request, n: int, out: SchedulerOutput) -> None:
        """Allocate the blocks for `n` more tokens of each beam of `req` and add them to the plan."""
        start = req.num_computed_tokens
        sample = start + n == req.num_tokens
        is_context = n > 1 or start < req.prompt_len
        capacity = start + n  # tokens each table must hold
        for s in req.seqs:
            # Most steps allocate nothing: the table's length says so without a call (~1 us a row at batch 256).
            if capacity > len(s.block_table) * self.bm.tokens_per_block:
                evicted = self.bm.evicted_blocks
                new = self.bm.extend(s.block_table, capacity)
                count_allocation(req, self.bm, len(new), evicted)
            sched = ScheduledSeq(req, s, start, n, list(s.block_table), sample)
            (out.context if is_context else out.generation).append(sched)

    def publish(self, s: ScheduledSeq) -> None:
        """`s`'s step has run: its full blocks hold computed KV and become findable (prefix reuse)."""
        tpb = self.bm.tokens_per_block
        full = (s.start + s.num_new) // tpb
        seq = s.seq
        have = len(seq.block_keys)
        if full <= have or len(seq.block_table) < full:
            return  # nothing new, or a beam whose table was replaced since (its blocks are published by it)
        prev = seq.block_keys[-1] if have else self._key_seed(s.request)
        keys = self.bm.keys(seq.tokens[: full * tpb], have, prev)
        self.bm.publish(seq.block_table, seq.tokens, keys, have, prev)
        seq.block_keys += keys

    def _pick_victim(self) -> Request | None:
        for r in reversed(self.running):
            if not self.reserves(r):
                return r
        return None

    def _preempt(self, req: Request, out: SchedulerOutput, budget: _Budget) -> None:
        """Pause `req`: free its blocks; on resume it recomputes prompt + generated tokens."""
        self.running.remove(req)
        free_before = self.bm.num_free
        for s in req.seqs:
            self.bm.free(s.block_table)
            s.block_keys = []
        budget.blocks += self.bm.num_free - free_before
        budget.seats += req.beam_width
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.PAUSED
        self.waiting.appendleft(req)
        out.preempted.append(req)
        # A request already placed in this plan cannot be paused: placed ones are older than `req`
        # (we walk oldest first and pause newest first), so this only holds if the walk is broken.
        assert all(s.request is not req for s in out.seqs), "paused a request already in the plan"
