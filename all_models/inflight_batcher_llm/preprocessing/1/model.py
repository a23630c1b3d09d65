"""Triton adapter of the `preprocessing` model; the logic is in backend/preprocessing_model.py."""

from backend.preprocessing_model import PreprocessingModel


class TritonPythonModel(PreprocessingModel):
    pass
