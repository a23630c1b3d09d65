"""Compiles the new decode-path kernels for sm_90 (H100) ahead of time, without a GPU: run by
test_compile_sm90.py in a process without TRITON_INTERPRET. The interpreter runs a kernel's Python; this
catches what only the compiler checks (types that differ between the branches of an `if`, shapes,
atomics, cache modifiers) in the launch variants the engine uses.

    python tests/kernels/compile_sm90.py
"""

import os
import sys
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tensorrt_llm.kernels import attention, kv_cache  # noqa: E402

gemv_module = sys.modules["tensorrt_llm.kernels.gemv"]  # (the package exports the function as `gemv`)
TARGET = GPUTarget("cuda", 90, 32)


def compile_one(fn, pointers: dict[str, str], constexprs: dict, floats: tuple[str, ...] = (), **options) -> None:
    """Every argument not named is an int32 scalar."""
    sig = {}
    for name in fn.arg_names:
        sig[name] = "constexpr" if name in constexprs else pointers.get(name, "fp32" if name in floats else "i32")
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=TARGET, options=options)


def main() -> None:
    n = 0
    p2 = triton.next_power_of_2
    for dt in ("fp16", "bf16", "fp32"):
        for H, Hkv in ((32, 32), (32, 8), (32, 1)):  # MHA, GQA, MQA
            group = H // Hkv
            ptrs = {p: f"*{dt}" for p in ("q_ptr", "k_ptr", "v_ptr", "qo_ptr", "kc_ptr", "vc_ptr")}
            ptrs.update(pos_ptr="*i64", cache_ptr="*fp32", slot_ptr="*i64")
            consts = dict(TOKENS_PER_BLOCK=64, BLOCK_HQ=p2(H), BLOCK_HK=p2(Hkv), BLOCK_HALF=64, BLOCK_D=128)
            compile_one(kv_cache._rotary_write_kv_kernel, ptrs, consts)
            n += 1
            if dt == "fp32":  # float32 engines are for tests; the rotary kernel covers the dtype
                continue
            for splits, fused in ((1, False), (9, True), (9, False), (33, True)):
                block_gm = p2(group)
                block_s = min(p2(splits), max(1, attention.MERGE_TILE // (block_gm * 128)))
                ptrs = {p: f"*{dt}" for p in ("q_ptr", "kc_ptr", "vc_ptr", "o_ptr")}
                ptrs.update(part_o_ptr="*fp32", part_ml_ptr="*fp32", bt_ptr="*i32", ctx_lens_ptr="*i32",
                            count_ptr="*i32" if fused else f"*{dt}")  # fmt: skip
                consts = dict(GROUP=group, BLOCK_G=max(16, p2(group)), TOKENS_PER_BLOCK=64, BLOCK_N=64, BLOCK_D=128,
                              FUSED_MERGE=fused, BLOCK_GM=block_gm, BLOCK_S=block_s,
                              DOT_PRECISION="tf32", TILE_IN_BLOCK=True)  # fmt: skip
                compile_one(attention._decode_attention_kernel, ptrs, consts, ("qk_scale",), num_warps=4, num_stages=2)
                n += 1
                if splits > 1 and not fused:
                    ptrs = {"part_o_ptr": "*fp32", "part_ml_ptr": "*fp32", "o_ptr": f"*{dt}", "ctx_lens_ptr": "*i32"}
                    consts = dict(GROUP=group, BLOCK_N=64, BLOCK_GM=block_gm, BLOCK_S=block_s, BLOCK_D=128)
                    compile_one(attention._decode_reduce_kernel, ptrs, consts)
                    n += 1
        if dt == "fp32":
            continue
        gemv_launches = [(1, (4, 512, 4, 3)), (1, (8, 256, 4, 3)), (2, (8, 512, 4, 3)), (4, (8, 512, 4, 4))]
        for block_m, (block_n, block_k, warps, stages) in gemv_launches:
            for even_k, bias in ((True, False), (False, True)):
                ptrs = {p: f"*{dt}" for p in ("x_ptr", "w_ptr", "b_ptr", "y_ptr")}
                consts = dict(HAS_BIAS=bias, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=even_k)
                compile_one(gemv_module._gemv_kernel, ptrs, consts, num_warps=warps, num_stages=stages)
                n += 1
    print(f"compiled {n} kernel variants for sm_90")


if __name__ == "__main__":
    main()
