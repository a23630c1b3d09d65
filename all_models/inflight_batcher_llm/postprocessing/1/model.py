"""Triton adapter of the `postprocessing` model; the logic is in backend/postprocessing_model.py."""

from backend.postprocessing_model import PostprocessingModel


class TritonPythonModel(PostprocessingModel):
    pass
