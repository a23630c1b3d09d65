"""What the decode-attention kernel compiles to for the H100/H200 (sm_90), on any machine (no GPU needed):
per cache dtype and tile orientation (SWAP_AB), the count of the instructions that decide its speed — MMA
kind, async copies by width, shared-memory reads, conversions.

    python benchmarks/decode_ptx_census.py [--block_n 128 --warps 4 --stages 4] [--keep DIR]

Arguments are specialized as a real launch specializes them (16-divisible pointers, strides and head_dim),
for the Llama-3-8B decode shape (GQA group 4, head_dim 128, 64 tokens per block).
"""

import argparse
import os
import re
import sys
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, CompiledKernel  # noqa: E402

from tensorrt_llm.kernels import attention  # noqa: E402

DIV16 = {"stride_qt", "stride_qh", "stride_ot", "stride_oh", "stride_cb", "stride_ct", "stride_ch", "head_dim",
         "num_heads"}  # fmt: skip


def compile_decode(cache: str, swap: bool, block_n: int, warps: int, stages: int) -> CompiledKernel:
    fn = attention._decode_attention_kernel
    quant = cache != "fp16"
    consts = dict(GROUP=4, BLOCK_G=16, TOKENS_PER_BLOCK=max(64, block_n), BLOCK_N=block_n, BLOCK_D=128,
                  FUSED_MERGE=True, BLOCK_GM=4, BLOCK_S=8, DOT_PRECISION="tf32", TILE_IN_BLOCK=True,
                  SLIDING_WINDOW=False, SOFTCAP=False, KV_QUANT=quant, SINKS=False, ALIBI=False,
                  SWAP_AB=swap)  # fmt: skip
    ptrs = {"q_ptr": "*fp16", "o_ptr": "*fp16", "kc_ptr": f"*{cache}", "vc_ptr": f"*{cache}", "part_o_ptr": "*fp32",
            "part_ml_ptr": "*fp32", "bt_ptr": "*i32", "ctx_lens_ptr": "*i32", "count_ptr": "*i32",
            "ks_ptr": "*fp32", "vs_ptr": "*fp32", "alibi_ptr": "*fp32"}  # fmt: skip
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in ("qk_scale", "softcap") else "i32")
           for n in fn.arg_names}  # fmt: skip
    # bt_ptr and ctx_lens_ptr are never specialized on alignment (_NO_SPECIALIZE)
    aligned = [n for n in fn.arg_names if n not in consts and (n in DIV16 or n in ptrs and n not in ("bt_ptr",
               "ctx_lens_ptr"))]  # fmt: skip
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def census(ptx: str) -> dict[str, int]:
    c = Counter()
    for size in re.findall(r"cp\.async\.c[ag]\.shared\.global \[[^]]*\], \[[^]]*\], (0x[0-9a-f]+)", ptx):
        c[f"cp.async {int(size, 16)} B"] += 1
    for name, pat in [("wgmma", r"wgmma\.mma_async"), ("mma.sync", r"mma\.sync"), ("ldmatrix", r"ldmatrix"),
                      ("ld.shared", r"ld\.shared"), ("st.shared", r"st\.shared"), ("cvt", r"\bcvt\.")]:  # fmt: skip
        c[name] = len(re.findall(pat, ptx))
    return dict(c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--block_n", type=int, default=attention.DECODE_QUANT_CONFIG["BLOCK_N"])
    p.add_argument("--warps", type=int, default=attention.DECODE_QUANT_CONFIG["num_warps"])
    p.add_argument("--stages", type=int, default=attention.DECODE_QUANT_CONFIG["num_stages"])
    p.add_argument("--keep", type=Path, help="write each variant's PTX here")
    args = p.parse_args()
    print(f"sm_90, BLOCK_N {args.block_n}, {args.warps} warps, {args.stages} stages; instructions in the PTX:")
    for cache, swap in [("fp16", False), ("fp8e4nv", False), ("fp8e4nv", True), ("i8", False), ("i8", True)]:
        k = compile_decode(cache, swap, args.block_n, args.warps, args.stages)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"decode_{cache}{'_swap' if swap else ''}.ptx").write_text(k.asm["ptx"])
        counts = "  ".join(f"{k} {v}" for k, v in sorted(census(k.asm["ptx"]).items()))
        print(f"  {cache:8} {'SWAP_AB' if swap else '       '}  shared {k.metadata.shared:>6} B  {counts}", flush=True)


if __name__ == "__main__":
    main()
