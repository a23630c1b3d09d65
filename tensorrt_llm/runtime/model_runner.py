"""`ModelRunner`: TensorRT-LLM's offline interface, a static batch generated to completion.

All sequences of a call start together and run until each ends (static, "V1" batching). The in-flight
batcher (`inflight_batcher`) drives the same `Engine.forward` step for serving."""

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tensorrt_llm.runtime.engine import Engine
from tensorrt_llm.runtime.sampling import make_sampling_tensors, sample
from tensorrt_llm.runtime.step import StepInput, build_step_input


def _ids(x: torch.Tensor | Sequence[int]) -> list[int]:
    return x.flatten().tolist() if isinstance(x, torch.Tensor) else [int(t) for t in x]


class _Seq:
    def __init__(self, prompt: list[int], blocks: list[int], seed: int) -> None:
        self.prompt = prompt
        self.output: list[int] = []
        self.log_probs: list[float] = []
        self.blocks = blocks
        self.cached = 0
        self.done = False
        self.seed = seed

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output


class ModelRunner:
    def __init__(self, engine: Engine, max_kv_blocks: int | None = None, cuda_graphs: bool = True) -> None:
        self.engine = engine
        self.config = engine.config
        self.kv = engine.make_kv_cache(max_kv_blocks or engine.num_kv_blocks())
        if cuda_graphs:
            engine.capture_cuda_graphs(self.kv)

    @classmethod
    def from_dir(
        cls,
        engine_dir: Path | str,
        device: str | torch.device | None = None,
        rank: int = 0,
        kv_cache_free_gpu_mem_fraction: float = 0.9,
        max_tokens_in_paged_kv_cache: int | None = None,
        cuda_graphs: bool = True,
    ) -> "ModelRunner":
        engine = Engine.from_dir(engine_dir, device, rank)
        blocks = engine.num_kv_blocks(kv_cache_free_gpu_mem_fraction, max_tokens_in_paged_kv_cache)
        return cls(engine, blocks, cuda_graphs)

    @property
    def vocab_size(self) -> int:
        return self.config.model.vocab_size

    def _check(self, prompts: list[list[int]], max_new_tokens: int, num_beams: int) -> None:
        b = self.config.build
        if num_beams != 1:
            raise NotImplementedError("ModelRunner does beam search through the in-flight batcher only")
        if not prompts:
            raise ValueError("batch_input_ids is empty")
        if len(prompts) > b.max_batch_size:
            raise ValueError(f"batch of {len(prompts)} exceeds the engine's max_batch_size {b.max_batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) > b.max_input_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens, over the engine's max_input_len {b.max_input_len}")
            if len(p) + max_new_tokens > b.max_seq_len:
                raise ValueError(
                    f"prompt {i} ({len(p)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the engine's "
                    f"max_seq_len {b.max_seq_len}"
                )
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.vocab_size}): {bad[:5]}")

    def generate(
        self,
        batch_input_ids: Sequence[torch.Tensor | Sequence[int]],
        max_new_tokens: int = 16,
        end_id: int | None = None,
        pad_id: int | None = None,
        temperature: float | None = 1.0,
        top_k: int = 1,
        top_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        random_seed: int | None = None,
        num_beams: int = 1,
        stop_words_list: Sequence[Sequence[int]] | None = None,
        bad_words_list: Sequence[Sequence[int]] | None = None,
        streaming: bool = False,
        output_log_probs: bool = False,
        return_dict: bool = False,
        output_sequence_lengths: bool = False,
    ) -> torch.Tensor | dict | Iterator[torch.Tensor | dict]:
        """Generates up to `max_new_tokens` after each prompt. Returns `output_ids` [B, 1, max_in + max_new]
        (prompt then output, padded with `pad_id`), or with `return_dict` a dict that also holds
        `sequence_lengths` [B, 1] (and `log_probs` [B, 1, max_new] on request). With `streaming`, an
        iterator yielding that after every step."""
        prompts = [_ids(p) for p in batch_input_ids]
        self._check(prompts, max_new_tokens, num_beams)
        if end_id is None:  # every eos id of the checkpoint ends a sequence (Llama-3 instruct lists two)
            eos = self.config.model.eos_token_id
            end_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        else:
            end_ids = [end_id]
        pad_id = (end_ids[0] if end_ids else None) if pad_id is None else pad_id
        end_set = frozenset(e for e in end_ids if e >= 0)  # -1: nothing ends a sequence
        gen = self._generate(
            prompts, max_new_tokens, end_set, temperature, top_k, top_p, repetition_penalty, presence_penalty,
            frequency_penalty, random_seed, [list(w) for w in stop_words_list or []],
            [list(w) for w in bad_words_list or []], output_log_probs,
        )  # fmt: skip
        width = max(map(len, prompts)) + max_new_tokens

        def result(seqs: list[_Seq]) -> torch.Tensor | dict:
            out = torch.full((len(seqs), 1, width), pad_id if pad_id is not None else 0, dtype=torch.int32)
            for i, s in enumerate(seqs):
                out[i, 0, : len(s.tokens)] = torch.tensor(s.tokens, dtype=torch.int32)
            if not (return_dict or output_sequence_lengths):
                return out
            d = {
                "output_ids": out,
                "sequence_lengths": torch.tensor([[len(s.tokens)] for s in seqs], dtype=torch.int32),
            }
            if output_log_probs:
                lp = torch.zeros(len(seqs), 1, max_new_tokens)
                for i, s in enumerate(seqs):
                    lp[i, 0, : len(s.log_probs)] = torch.tensor(s.log_probs)
                d["log_probs"] = lp
            return d

        if streaming:
            return (result(seqs) for seqs in gen)
        *_, seqs = gen
        return result(seqs)

    def _generate(
        self, prompts, max_new_tokens, end_set, temperature, top_k, top_p, rep, pres, freq, seed, stop_words,
        bad_words, want_log_probs,
    ) -> Iterator[list[_Seq]]:  # fmt: skip
        tpb = self.config.build.tokens_per_block
        need = [-(-(len(p) + max_new_tokens) // tpb) for p in prompts]
        if sum(need) > self.kv.num_blocks:
            raise ValueError(
                f"the batch needs {sum(need)} KV blocks, the cache has {self.kv.num_blocks}: "
                "use a smaller batch or max_new_tokens, or a larger KV cache"
            )
        device = self.engine.device
        seqs, start = [], 0
        for i, (p, n) in enumerate(zip(prompts, need, strict=True)):
            seqs.append(
                _Seq(p, list(range(start, start + n)), seed + i if seed is not None else random.getrandbits(62))
            )
            start += n
        single_bad = [w[0] for w in bad_words if len(w) == 1]
        # Without penalties or multi-token bad words, a step's sampling needs no host state, so once
        # every prompt is in the cache the rest runs ahead of the host (_decode_ahead).
        plain = rep == 1.0 and pres == 0.0 and freq == 0.0 and all(len(w) == 1 for w in bad_words)

        def finish(s: _Seq, t: int, lp: float | None) -> None:
            # As TensorRT-LLM: the end id ends a sequence and is not part of its output; a stop word is.
            if t in end_set:
                s.done = True
                return
            s.output.append(t)
            if lp is not None:
                s.log_probs.append(lp)
            s.done = len(s.output) >= max_new_tokens or any(w and s.output[-len(w) :] == w for w in stop_words)

        budget = self.config.build.max_num_tokens
        while True:
            live = [s for s in seqs if not s.done]
            if not live:
                return
            if plain and all(s.cached == len(s.tokens) - 1 for s in live):
                n = len(live)
                st = make_sampling_tensors(
                    self.vocab_size, device, [temperature] * n, [top_k] * n, [top_p] * n, banned=[single_bad] * n,
                    seeds=[s.seed for s in live], offsets=[len(s.output) for s in live],
                )  # fmt: skip
                yield from self._decode_ahead(seqs, live, st, max_new_tokens, want_log_probs, finish)
                return
            # Context chunks up to the token budget (prompts longer than it run over several steps);
            # sequences whose prompt is in the cache generate one token each.
            batch, chunks = [], []
            for s in live:
                pending = s.tokens[s.cached :]
                take = min(len(pending), max(budget, 1))
                if batch and take > budget:
                    continue
                budget -= take
                batch.append(s)
                chunks.append(pending[:take])
            budget = self.config.build.max_num_tokens
            step = build_step_input(chunks, [s.cached for s in batch], [s.blocks for s in batch], tpb, device)
            logits = self.engine.forward(step, self.kv)
            ready = [i for i, s in enumerate(batch) if s.cached + len(chunks[i]) == len(s.tokens)]
            for s, c in zip(batch, chunks, strict=True):
                s.cached += len(c)
            if ready:
                rows = [batch[i] for i in ready]
                banned = [self._banned(s, bad_words, single_bad) for s in rows]
                st = make_sampling_tensors(
                    self.vocab_size, device, [temperature] * len(rows), [top_k] * len(rows), [top_p] * len(rows),
                    [rep] * len(rows), [pres] * len(rows), [freq] * len(rows),
                    seen_ids=[s.tokens for s in rows], output_ids=[s.output for s in rows], banned=banned,
                    seeds=[s.seed for s in rows], offsets=[len(s.output) for s in rows],
                )  # fmt: skip
                tokens, log_probs = sample(logits[ready], st, want_log_probs)
                tokens = tokens.tolist()
                log_probs = log_probs.tolist() if log_probs is not None else [None] * len(rows)
                for s, t, lp in zip(rows, tokens, log_probs, strict=True):
                    finish(s, t, lp)
            yield seqs

    def _decode_ahead(self, seqs, live, st, max_new_tokens, want_log_probs, finish) -> Iterator[list[_Seq]]:
        """Generation steps with the host one step behind the GPU.

        Every step's positions, slots and context lengths are known in advance (each live sequence adds
        one token a step), so they are computed once and uploaded; step i's input tokens are step i-1's
        sampled tokens, still on the GPU. While the GPU runs step i, the host reads step i-1's tokens
        (copied asynchronously) and checks end id and stop words: a sequence that ended runs one wasted
        step, never past its own blocks. A sequence whose output is full stops taking part (its row
        writes to the scratch block)."""
        tpb, device, B = self.config.build.tokens_per_block, self.engine.device, len(live)
        remaining = np.array([max_new_tokens - len(s.output) for s in live])  # [B] steps each row needs
        n_steps = int(remaining.max())
        start = np.array([len(s.tokens) - 1 for s in live])  # position of each row's first input token
        i = np.arange(n_steps)[:, None]  # [steps, 1]
        active = i < remaining[None, :]  # [steps, B]
        pos = np.where(active, start[None, :] + i, start[None, :])  # [steps, B]
        width = max(len(s.blocks) for s in live)
        table = np.full((B, width), self.kv.scratch_block, dtype=np.int64)
        for b, s in enumerate(live):
            table[b, : len(s.blocks)] = s.blocks
        scratch = self.kv.scratch_block * tpb
        slots = np.where(active, table[np.arange(B)[None, :], pos // tpb] * tpb + pos % tpb, scratch)
        ctx = pos + 1  # [steps, B]
        plan = torch.from_numpy(np.stack([pos, slots, ctx])).to(device)  # [3, steps, B]
        seq_lens = torch.ones(B, dtype=torch.int32, device=device)
        tables = torch.from_numpy(table).to(device, torch.int32)
        ctx32 = plan[2].to(torch.int32)
        cuda = device.type == "cuda"
        tokens_host = torch.empty(n_steps, B, dtype=torch.int64, pin_memory=cuda)
        lp_host = torch.empty(n_steps, B, dtype=torch.float32, pin_memory=cuda)
        events = [torch.cuda.Event() if cuda else None for _ in range(n_steps)]
        tokens = torch.tensor([s.output[-1] for s in live], device=device)
        rows = torch.arange(B, device=device)
        max_ctx = ctx.max(axis=1)
        offsets0 = st.offsets

        def consume(k: int) -> None:
            if events[k] is not None:
                events[k].synchronize()
            toks, lps = tokens_host[k].tolist(), lp_host[k].tolist()
            for b, s in enumerate(live):
                if not s.done and active[k, b]:
                    finish(s, toks[b], lps[b] if want_log_probs else None)

        for k in range(n_steps):
            step = StepInput(
                input_ids=tokens, positions=plan[0, k], seq_lens=seq_lens, context_lens=ctx32[k],
                block_tables=tables, slot_mapping=plan[1, k], logits_indices=rows,
                max_seq_len=1, max_context_len=int(max_ctx[k]),
            )  # fmt: skip
            logits = self.engine.forward(step, self.kv)
            if st.offsets is not None:  # row b's k-th step draws with offset (its outputs so far) + k
                st.offsets = offsets0 + k
            tokens, log_probs = sample(logits, st, want_log_probs)
            tokens_host[k].copy_(tokens, non_blocking=True)
            if log_probs is not None:
                lp_host[k].copy_(log_probs, non_blocking=True)
            if events[k] is not None:
                events[k].record()
            if k > 0:
                consume(k - 1)
                yield seqs
                if all(s.done for s in live):
                    return
        consume(n_steps - 1)
        yield seqs

    @staticmethod
    def _banned(s: _Seq, bad_words: list[list[int]], single: list[int]) -> list[int]:
        """Bad words: a word's last token is banned when the sequence ends with the rest of the word."""
        banned = list(single)
        for w in bad_words:
            if len(w) > 1 and s.tokens[-(len(w) - 1) :] == w[:-1]:
                banned.append(w[-1])
        return banned
