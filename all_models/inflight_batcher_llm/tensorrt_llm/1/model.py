"""The `tensorrt_llm` model is served by the native backend `tensorrtllm` (backend/native), which finds its
engine through the `gpt_model_path` parameter; this file only answers a config filled with
`triton_backend:python`, with a clear error instead of a missing-file one."""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        raise ValueError(
            "the tensorrt_llm model runs on the native backend: fill its config.pbtxt with "
            "triton_backend:tensorrtllm (scripts/fill_template.py), as the TensorRT-LLM backend's README does"
        )
