"""Triton adapter of the `tensorrt_llm_bls` model; the logic is in backend/bls_model.py."""

from backend.bls_model import BlsModel


class TritonPythonModel(BlsModel):
    pass
