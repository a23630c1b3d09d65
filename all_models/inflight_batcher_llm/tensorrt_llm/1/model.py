"""Triton adapter of the `tensorrt_llm` model; the logic is in backend/engine_model.py."""

from backend.engine_model import EngineModel


class TritonPythonModel(EngineModel):
    pass
