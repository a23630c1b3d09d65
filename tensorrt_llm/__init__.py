"""The engine library: Hugging Face checkpoints in, engines out, and the runtime that runs them.

It knows nothing of batching policies or of Triton: `inflight_batcher` and `backend` build on it.
"""

from tensorrt_llm.mapping import Mapping

__version__ = "0.1.0"
# 2: config.json's "quantization" and quantized weights (version 1 engines still load)
ENGINE_FORMAT_VERSION = 2

__all__ = ["ENGINE_FORMAT_VERSION", "Mapping", "__version__"]
