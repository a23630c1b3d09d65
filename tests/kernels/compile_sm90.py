"""Compiles the decode-path kernels, the context attention kernel and the model-option variants (sliding
window, attention sinks, soft-capping, ALiBi, Gemma's norm, GeLU-tanh) for sm_90 (H100) ahead of time, without a
GPU: run by test_compile_sm90.py in a process without TRITON_INTERPRET. The interpreter runs a kernel's Python; this
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


def compile_quant_gemv() -> int:
    """The weight-only / FP8 word GEMV (M <= 4) in the launch variants `quant._launch_word_gemv` uses."""
    from tensorrt_llm.kernels import quant

    n = 0
    for dt in ("fp16", "bf16", "fp32"):
        x_mode = {"fp16": 1, "bf16": 2, "fp32": 0}[dt]
        base = {"x_ptr": "*i64" if x_mode else f"*{dt}", "w_ptr": "*i32", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
                "p_ptr": "*fp32"}  # fmt: skip
        runs = []  # (QUANT, HAS_ZERO, ROWS, EVEN_KW, HAS_BIAS, SPLIT_K)
        for q in (0, 2, 1):
            for rows in (1, 2, 3, 4) if dt != "fp32" else (1, 4):
                runs.append((q, False, rows, True, rows % 2 == 1, 1))
            runs.append((q, q == 1, 1, False, True, 3))  # a masked K tail, split K (int4: zero points)
            if q == 1:
                runs += [(q, True, rows, True, False, 1) for rows in (2, 4)]
        runs = [(*r, quant._WORD_GEMV_CONFIG["int4" if r[0] == 1 else "byte", r[2]]) for r in runs]
        if dt == "fp16":  # configs a sweep reaches: unpipelined; an int4 tile inside a group, 2 warps
            runs += [(0, False, 1, True, False, 1, (8, 64, 1, 1)), (1, True, 2, True, True, 1, (32, 64, 2, 2))]
        for q, zero, rows, even, bias, split, (block_n, block_k, warps, stages) in runs:
            block_kw = block_k // (8 if q == 1 else 4)
            ptrs = base | {"s_ptr": "*fp16" if q == 1 else "*fp32", "z_ptr": "*fp16" if q == 1 else "*fp32"}
            consts = dict(QUANT=q, GROUP_W=16 if q == 1 else 1, HAS_ZERO=zero, HAS_BIAS=bias, X_MODE=x_mode,
                          ROWS=rows, BLOCK_N=block_n, BLOCK_KW=block_kw, EVEN_KW=even, SPLIT_K=split,
                          STAGES=stages)  # fmt: skip
            compile_one(quant._wo_gemv_kernel, ptrs, consts, num_warps=warps)
            n += 1
        for bias in (False, True):
            ptrs = {"p_ptr": "*fp32", "b_ptr": f"*{dt}" if bias else "*fp32", "y_ptr": f"*{dt}"}
            consts = dict(HAS_BIAS=bias, SPLIT_K=3, BLOCK=quant._SPLITK_REDUCE_BLOCK)
            compile_one(quant._splitk_reduce_kernel, ptrs, consts, num_warps=4)
            n += 1
    return n


def main() -> None:
    n = 0
    p2 = triton.next_power_of_2
    for dt in ("fp16", "bf16", "fp32"):
        for H, Hkv in ((32, 32), (32, 8), (32, 1)):  # MHA, GQA, MQA
            group = H // Hkv
            ptrs = {p: f"*{dt}" for p in ("q_ptr", "k_ptr", "v_ptr", "qo_ptr", "kc_ptr", "vc_ptr")}
            ptrs.update(pos_ptr="*i64", cache_ptr="*fp32", slot_ptr="*i64", ks_ptr=f"*{dt}", vs_ptr=f"*{dt}")
            consts = dict(TOKENS_PER_BLOCK=64, BLOCK_HQ=p2(H), BLOCK_HK=p2(Hkv), BLOCK_HALF=64, BLOCK_D=128)
            compile_one(kv_cache._rotary_write_kv_kernel, ptrs, consts | dict(QUANT=0))
            n += 1
            if dt != "fp32":  # quantized caches (kv_cache_quant_algo INT8 / FP8), and the plain write
                for quant, cache in ((1, "*i8"), (2, "*fp8e4nv")):
                    qptrs = ptrs | dict(kc_ptr=cache, vc_ptr=cache, ks_ptr="*fp32", vs_ptr="*fp32")
                    compile_one(kv_cache._rotary_write_kv_kernel, qptrs, consts | dict(QUANT=quant))
                    wptrs = {"k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "kc_ptr": cache, "vc_ptr": cache,
                             "slot_ptr": "*i64", "ks_ptr": "*fp32", "vs_ptr": "*fp32"}  # fmt: skip
                    wconsts = dict(TOKENS_PER_BLOCK=64, BLOCK_H=p2(Hkv), BLOCK_D=128, QUANT=quant)
                    compile_one(kv_cache._write_kv_cache_kernel, wptrs, wconsts)
                    n += 2
            if dt == "fp32":  # float32 engines are for tests; the rotary kernel covers the dtype
                continue
            # the sliding window (a compile-time switch) on the GQA shape only: the others add nothing new
            # (splits, fused merge, window, softcap, sinks, alibi)
            variants = [(s, f, False, False, False, False) for s, f in ((1, False), (9, True), (9, False), (33, True))]
            if Hkv == 8:  # (Gemma-2 runs both options at once)
                passes = ((1, False), (9, True), (9, False))  # one pass, fused merge, the reduce kernel
                variants += [(s, f, True, False, False, False) for s, f in passes]
                variants += [(1, False, True, True, False, False), (9, True, True, True, False, False)]
                # attention sinks (only with a window)
                variants += [(s, f, True, False, True, False) for s, f in passes]
            alibi_runs = [(dt, (s, f, False, False, False, True)) for s, f in ((1, False), (9, True), (9, False))]
            if Hkv == 8:  # ALiBi (BLOOM, MPT): alone, with a window and sinks, over an int8 cache
                alibi_runs += [(dt, (9, True, True, False, True, True)), ("i8", (9, True, False, False, False, True))]
            runs = [(dt, v) for v in variants]
            if Hkv == 8:  # int8 and e4m3 caches (kv_cache_quant_algo INT8 / FP8) on the GQA shape
                runs += [(cache, v) for cache in ("i8", "fp8e4nv") for v in variants[:4]]
                runs += [("fp8e4nv", variants[-2])]  # a quantized cache with a window and sinks
            for cache, (splits, fused, window, softcap, sinks, alibi) in runs + alibi_runs:
                block_gm = p2(group)
                block_s = min(p2(splits), max(1, attention.MERGE_TILE // (block_gm * 128)))
                quant = cache != dt
                ptrs = {"q_ptr": f"*{dt}", "o_ptr": f"*{dt}", "kc_ptr": f"*{cache}", "vc_ptr": f"*{cache}"}
                ptrs.update(part_o_ptr="*fp32", part_ml_ptr="*fp32", bt_ptr="*i32", ctx_lens_ptr="*i32",
                            count_ptr="*i32" if fused else f"*{dt}", ks_ptr="*fp32" if quant else f"*{cache}",
                            vs_ptr="*fp32" if quant else f"*{cache}",
                            alibi_ptr="*fp32" if alibi else f"*{cache}")  # fmt: skip
                consts = dict(GROUP=group, BLOCK_G=max(16, p2(group)), TOKENS_PER_BLOCK=64, BLOCK_N=64, BLOCK_D=128,
                              FUSED_MERGE=fused, BLOCK_GM=block_gm, BLOCK_S=block_s,
                              DOT_PRECISION="tf32", TILE_IN_BLOCK=True, SLIDING_WINDOW=window,
                              SOFTCAP=softcap, KV_QUANT=quant, SINKS=sinks, ALIBI=alibi, SWAP_AB=False)  # fmt: skip
                # the transposed tile (SWAP_AB) too, on the quantized caches it is meant for
                for swap in (False, True) if quant else (False,):
                    compile_one(attention._decode_attention_kernel, ptrs, {**consts, "SWAP_AB": swap},
                                ("qk_scale", "softcap"), num_warps=4, num_stages=2)  # fmt: skip
                    n += 1
                if splits > 1 and not fused and not quant:
                    ptrs = {"part_o_ptr": "*fp32", "part_ml_ptr": "*fp32", "o_ptr": f"*{dt}", "ctx_lens_ptr": "*i32"}
                    consts = dict(GROUP=group, BLOCK_N=64, BLOCK_GM=block_gm, BLOCK_S=block_s, BLOCK_D=128,
                                  SLIDING_WINDOW=window, SINKS=sinks)  # fmt: skip
                    compile_one(attention._decode_reduce_kernel, ptrs, consts)
                    n += 1
            if Hkv == 8:  # the context kernel: plain causal (split at the diagonal), sliding window, sinks
                for window, softcap, cache, sinks, alibi in (
                    (False, False, dt, False, False), (True, False, dt, False, False), (True, True, dt, False, False),
                    (False, False, "i8", False, False), (False, False, "fp8e4nv", False, False),
                    (True, False, dt, True, False), (True, False, "i8", True, False),
                    (False, False, dt, False, True), (True, False, "i8", True, True),  # ALiBi
                ):  # fmt: skip
                    quant = cache != dt
                    ptrs = {"q_ptr": f"*{dt}", "o_ptr": f"*{dt}", "kc_ptr": f"*{cache}", "vc_ptr": f"*{cache}"}
                    ptrs.update(
                        bt_ptr="*i32",
                        seq_lens_ptr="*i32",
                        ctx_lens_ptr="*i32",
                        q_start_ptr="*i32",
                        ks_ptr="*fp32" if quant else f"*{cache}",
                        vs_ptr="*fp32" if quant else f"*{cache}",
                        alibi_ptr="*fp32" if alibi else f"*{cache}",
                    )
                    consts = dict(GROUP=group, TOKENS_PER_BLOCK=64, BLOCK_M=64, BLOCK_N=64, BLOCK_D=128,
                                  DOT_PRECISION="tf32", TILE_IN_BLOCK=True, SPLIT_CAUSAL=not window,
                                  SLIDING_WINDOW=window, SOFTCAP=softcap, KV_QUANT=quant,
                                  SINKS=sinks, ALIBI=alibi)  # fmt: skip
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
    n += compile_quant_gemv()
    print(f"compiled {n} kernel variants for sm_90")


if __name__ == "__main__":
    main()
