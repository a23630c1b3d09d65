"""Compiles the decode-path kernels, the context attention kernel and the model-option variants (sliding
window, soft-capping, Gemma's norm, GeLU-tanh) for sm_90 (H100) ahead of time, without a GPU: run by
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

from tensorrt_llm.kernels import activation, attention, kv_cache, norm  # noqa: E402

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
            # the sliding window (a compile-time switch) on the GQA shape only: the others add nothing new
            variants = [(s, f, False, False) for s, f in ((1, False), (9, True), (9, False), (33, True))]
            if Hkv == 8:  # (Gemma-2 runs both options at once)
                variants += [(1, False, True, False), (9, True, True, False), (9, False, True, False)]
                variants += [(1, False, True, True), (9, True, True, True)]
            for splits, fused, window, softcap in variants:
                block_gm = p2(group)
                block_s = min(p2(splits), max(1, attention.MERGE_TILE // (block_gm * 128)))
                ptrs = {p: f"*{dt}" for p in ("q_ptr", "kc_ptr", "vc_ptr", "o_ptr")}
                ptrs.update(part_o_ptr="*fp32", part_ml_ptr="*fp32", bt_ptr="*i32", ctx_lens_ptr="*i32",
                            count_ptr="*i32" if fused else f"*{dt}")  # fmt: skip
                consts = dict(GROUP=group, BLOCK_G=max(16, p2(group)), TOKENS_PER_BLOCK=64, BLOCK_N=64, BLOCK_D=128,
                              FUSED_MERGE=fused, BLOCK_GM=block_gm, BLOCK_S=block_s,
                              DOT_PRECISION="tf32", TILE_IN_BLOCK=True, SLIDING_WINDOW=window,
                              SOFTCAP=softcap)  # fmt: skip
                compile_one(attention._decode_attention_kernel, ptrs, consts, ("qk_scale", "softcap"), num_warps=4,
                            num_stages=2)  # fmt: skip
                n += 1
                if splits > 1 and not fused:
                    ptrs = {"part_o_ptr": "*fp32", "part_ml_ptr": "*fp32", "o_ptr": f"*{dt}", "ctx_lens_ptr": "*i32"}
                    consts = dict(GROUP=group, BLOCK_N=64, BLOCK_GM=block_gm, BLOCK_S=block_s, BLOCK_D=128,
                                  SLIDING_WINDOW=window)  # fmt: skip
                    compile_one(attention._decode_reduce_kernel, ptrs, consts)
                    n += 1
            if Hkv == 8:  # the context kernel: plain causal (split at the diagonal) and sliding window
                for window, softcap in ((False, False), (True, False), (True, True)):
                    ptrs = {p: f"*{dt}" for p in ("q_ptr", "kc_ptr", "vc_ptr", "o_ptr")}
                    ptrs.update(bt_ptr="*i32", seq_lens_ptr="*i32", ctx_lens_ptr="*i32", q_start_ptr="*i32")
                    consts = dict(GROUP=group, TOKENS_PER_BLOCK=64, BLOCK_M=64, BLOCK_N=64, BLOCK_D=128,
                                  DOT_PRECISION="tf32", TILE_IN_BLOCK=True, SPLIT_CAUSAL=not window,
                                  SLIDING_WINDOW=window, SOFTCAP=softcap)  # fmt: skip
                    compile_one(attention._context_attention_kernel, ptrs, consts, ("qk_scale", "softcap"),
                                num_warps=4, num_stages=3)  # fmt: skip
                    n += 1
        if dt == "fp32":
            continue
        for option in (False, True):  # Llama / Gemma weighting of the norm; SiLU / GeLU-tanh gate
            ptrs = {p: f"*{dt}" for p in ("x_ptr", "r_ptr", "w_ptr", "y_ptr", "r_out_ptr")}
            consts = dict(HAS_RESIDUAL=True, UNIT_OFFSET=option, BLOCK=4096)
            compile_one(norm._rms_norm_kernel, ptrs, consts, ("eps",), num_warps=16)
            compile_one(activation._act_and_mul_kernel, {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}"},
                        dict(GELU_TANH=option, BLOCK=1024))  # fmt: skip
            n += 2
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
