"""trtllm-run: generate from an engine, with text prompts (and a local tokenizer) or token-id files.

Runs `ModelRunner`, so the in-flight batcher's executor (`python -m inflight_batcher.run` as well)."""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trtllm-run", description=__doc__)
    p.add_argument("--engine_dir", required=True)
    p.add_argument("--tokenizer_dir", help="local Hugging Face tokenizer directory")
    p.add_argument("--input_text", nargs="+", help="prompt(s)")
    p.add_argument("--input_file", help=".csv (token ids, one prompt per row) or .npy ([B, L], padded with pad_id)")
    p.add_argument("--max_output_len", type=int, default=32, help="new tokens per prompt")
    p.add_argument("--output_csv", help="write generated token ids (output only) as csv, one row per prompt and beam")
    p.add_argument("--output_npy", help="write output_ids [B, beams, L] as .npy")
    p.add_argument("--end_id", type=int)
    p.add_argument("--pad_id", type=int)
    p.add_argument("--num_beams", type=int, default=1, help="beam search (the engine's --max_beam_width at least)")
    p.add_argument("--length_penalty", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=1)
    p.add_argument("--top_p", type=float, default=0.0)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--presence_penalty", type=float, default=0.0)
    p.add_argument("--frequency_penalty", type=float, default=0.0)
    p.add_argument("--random_seed", type=int)
    p.add_argument("--streaming", action="store_true", help="print text as it is generated")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    return p.parse_args(argv)


def _read_ids(path: str, pad_id: int | None) -> list[list[int]]:
    if path.endswith(".npy"):
        arr = np.load(path)
        rows = [list(map(int, r)) for r in np.atleast_2d(arr)]
        if pad_id is not None:  # right padding is dropped
            rows = [r[: max((i + 1 for i, t in enumerate(r) if t != pad_id), default=0)] for r in rows]
        return rows
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            return [[int(x) for x in row if x.strip()] for row in csv.reader(f) if row]
    raise ValueError(f"--input_file must be .csv or .npy, got {path}")


def main(argv: list[str] | None = None) -> int:
    from inflight_batcher.runner import ModelRunner

    args = parse_args(argv)
    try:
        if (args.input_text is None) == (args.input_file is None):
            raise ValueError("give exactly one of --input_text and --input_file")
        tokenizer = None
        if args.tokenizer_dir:
            from transformers import AutoTokenizer

            if not Path(args.tokenizer_dir).is_dir():
                raise FileNotFoundError(f"tokenizer directory {args.tokenizer_dir} does not exist")
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
        elif args.input_text:
            raise ValueError("--input_text needs --tokenizer_dir")
        end_id = args.end_id if args.end_id is not None else getattr(tokenizer, "eos_token_id", None)
        pad_id = args.pad_id if args.pad_id is not None else getattr(tokenizer, "pad_token_id", None)
        pad_id = end_id if pad_id is None else pad_id
        prompts = (
            [tokenizer.encode(t) for t in args.input_text] if args.input_text else _read_ids(args.input_file, pad_id)
        )
        runner = ModelRunner.from_dir(args.engine_dir, device=args.device)
        kw = dict(
            max_new_tokens=args.max_output_len, end_id=end_id, pad_id=pad_id, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
            presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
            random_seed=args.random_seed, num_beams=args.num_beams, length_penalty=args.length_penalty,
            return_dict=True,
        )  # fmt: skip
        if args.streaming:
            printed = [0] * len(prompts)
            out = None
            for out in runner.generate(prompts, streaming=True, **kw):
                for i, n in enumerate(out["sequence_lengths"][:, 0].tolist()):
                    new = out["output_ids"][i, 0, len(prompts[i]) + printed[i] : n].tolist()
                    printed[i] += len(new)
                    if new:
                        print(f"[{i}] +{new}" if tokenizer is None else f"[{i}] {tokenizer.decode(new)!r}")
        else:
            out = runner.generate(prompts, **kw)
    except (ValueError, FileNotFoundError) as e:
        print(f"trtllm-run: error: {e}", file=sys.stderr)
        return 2
    outputs = []
    for i, prompt in enumerate(prompts):
        src = args.input_text[i] if args.input_text else prompt
        print(f'Input [Text {i}]: "{src}"')
        for beam in range(out["output_ids"].shape[1]):
            n = int(out["sequence_lengths"][i, beam])
            gen = out["output_ids"][i, beam, len(prompt) : n].tolist()
            outputs.append(gen)
            text = tokenizer.decode(gen, skip_special_tokens=True) if tokenizer else gen
            print(f'Output [Text {i} Beam {beam}]: "{text}"')
    if args.output_csv:
        with open(args.output_csv, "w", newline="") as f:
            csv.writer(f).writerows(outputs)
    if args.output_npy:
        np.save(args.output_npy, out["output_ids"].to(torch.int32).numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
