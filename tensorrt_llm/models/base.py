"""What a model family is: the module interface the runtime relies on (`CausalLM`) and the registration
the builder uses (`ModelFamily`).

    checkpoint dir ──config_from_hf──▶ ModelConfig ──┐
          │                                          ├──▶ engine dir: config.json + rank{N}.safetensors
          └──────convert_weights(get, cfg, rank)─────┘
    engine dir ──▶ model_cls(cfg, dtype, mapping) on meta ──load_state_dict(assign)──▶ init_buffers(device)
               ──▶ per step: logits(hidden(step, k_caches, v_caches))
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.config import ModelConfig

if TYPE_CHECKING:
    from tensorrt_llm.runtime.step import StepInput

# `get(name)` returns one Hugging Face checkpoint tensor by its name, loaded lazily, so that one rank's
# slice of a large checkpoint never needs the whole of it in memory.
WeightGetter = Callable[[str], torch.Tensor]
ConvertWeights = Callable[[WeightGetter, ModelConfig, Mapping, torch.dtype], dict[str, torch.Tensor]]


class CausalLM(nn.Module, ABC):
    """The contract between a family's module and the runtime (`Engine`, `StepGraphs`).

    - Built as `cls(cfg, dtype, mapping)` on the meta device; the engine then assigns one rank's weights
      with `load_state_dict(assign=True)`, so the state dict's names and shapes are exactly those the
      family's `convert_weights` writes for that rank (the engine checks), and calls `init_buffers`.
    - The KV cache it is handed holds one K and one V tensor per layer, each
      `[blocks, tokens_per_block, max(num_key_value_heads // tp, 1), head_dim]` (sized from `cfg`).
    - A step is `logits(hidden(step, k_caches, v_caches))`. CUDA graphs capture `hidden` alone and run
      `logits` after the replay (vocabulary-sized outputs per graph would cost GBs), so `hidden` must be
      capturable: no host synchronisation, no Python branch on tensor values, every shape fixed by the
      step's tensor shapes and host integers. Options are resolved at construction, never per step.
    """

    cfg: ModelConfig

    @abstractmethod
    def init_buffers(self, device: torch.device | None) -> None:
        """(Re)computes the non-persistent buffers (e.g. the rotary table) on `device`: construction on
        the meta device left them without data."""

    @abstractmethod
    def hidden(self, step: "StepInput", k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> torch.Tensor:
        """Writes the step's K/V into the caches; returns the final hidden states [N, hidden] of the packed
        rows `step.logits_indices`."""

    @abstractmethod
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """float32 logits [N, vocab] over the whole vocabulary (on every rank) of hidden states [N, hidden]."""

    def forward(self, step: "StepInput", k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> torch.Tensor:
        return self.logits(self.hidden(step, k_caches, v_caches))


@dataclass(frozen=True)
class ModelFamily:
    """One registration: the Hugging Face `architectures` names a family builds, and what it gives the
    builder and the runtime.

    - `config_from_hf(config_json_dict) -> ModelConfig`: refuses, with a message saying what, any option
      of the checkpoint the module cannot run (never silently computes something else).
    - `convert_weights(get, cfg, mapping, dtype)`: the engine weights of rank `mapping.rank`, fused,
      sliced for tensor parallelism and cast.
    - `model_cls`: the module the engine builds (families that differ only in options share one).
    """

    architectures: tuple[str, ...]
    config_from_hf: Callable[[dict], ModelConfig]
    convert_weights: ConvertWeights
    model_cls: type[CausalLM]
