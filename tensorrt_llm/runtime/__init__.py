"""Engine loading, the paged KV cache pool, the forward step and sampling ops."""

import os

import torch

from tensorrt_llm.runtime.engine import Engine, read_engine_config
from tensorrt_llm.runtime.kv_cache import KVCachePool
from tensorrt_llm.runtime.step import StepInput, build_step_input


def __getattr__(name: str) -> object:
    # Compatibility alias: TensorRT-LLM's users import ModelRunner from here. It runs the in-flight
    # batcher's executor, so it lives in `inflight_batcher.runner`; this lazy import is the one place
    # `tensorrt_llm` names `inflight_batcher` (nothing here imports it unless ModelRunner is asked for).
    if name == "ModelRunner":
        from inflight_batcher.runner import ModelRunner

        return ModelRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def env_rank() -> int | None:
    """This process's rank as its launcher set it: torchrun's RANK or MPI's (Open MPI, MPICH, PMIx)."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return None


def init_distributed(world_size: int, rank: int | None = None) -> int:
    """Joins the process group of a multi-rank engine: NCCL on GPUs, gloo on CPU. Rank and address come
    from MPI (OMPI_COMM_WORLD_RANK / PMI_RANK) or from torchrun's variables. Returns this rank."""
    if world_size == 1:
        return 0
    if rank is None:
        rank = env_rank()
        if rank is None:
            raise RuntimeError("cannot tell this process's rank: start it with mpirun or torchrun")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    torch.distributed.init_process_group(backend, rank=rank, world_size=world_size)
    return rank


__all__ = [
    "Engine",
    "KVCachePool",
    "StepInput",
    "build_step_input",
    "env_rank",
    "init_distributed",
    "read_engine_config",
]
