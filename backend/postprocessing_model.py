"""The `postprocessing` model: token ids -> text.

Streamed chunks arrive with `STREAM_PREFIX_IDS` (tokens of earlier chunks) and `STREAM_FINAL`, from the
`tensorrt_llm` model through the ensemble; with them each chunk decodes to exactly its share of the whole
text (`backend/detokenizer.py`), with no state kept here. Without them (a client calling postprocessing
directly, the TensorRT-LLM interface), each beam is decoded on its own up to its `SEQUENCE_LENGTH`.
"""

from __future__ import annotations

import json

import numpy as np

from backend.detokenizer import decode, stream_delta
from backend.params import Params
from backend.tokenization import load_tokenizer
from backend.triton_utils import get_logger, input_array, log_warn, pb_utils


class PostprocessingModel:
    def initialize(self, args: dict) -> None:
        self.logger = get_logger(__name__)
        cfg = json.loads(args["model_config"])
        params = Params(cfg, warn=lambda m: log_warn(self.logger, m))
        self.tokenizer = load_tokenizer(params.str("tokenizer_dir", required=True))
        self.skip_special_tokens = params.bool("skip_special_tokens", True)

    def process(
        self,
        tokens: np.ndarray,
        lengths: np.ndarray | None,
        prefix: np.ndarray | None = None,
        final: np.ndarray | None = None,
    ) -> np.ndarray:
        """tokens [B, beams, L], lengths [B, beams] -> text [B * beams] (object array of bytes).

        1-D like the TensorRT-LLM postprocessing's OUTPUT (one element per beam, batch rows one after the
        other): its clients read `as_numpy("text_output")[0].decode()`, which a [B, beams] array breaks.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim == 2:
            tokens = tokens[:, None, :]
        batch, beams = tokens.shape[0], tokens.shape[1]
        lengths = None if lengths is None else np.asarray(lengths).reshape(batch, -1)
        out = np.empty((batch, beams), dtype=object)
        for b in range(batch):
            for k in range(beams):
                n = tokens.shape[2] if lengths is None else int(lengths[b, k])
                ids = tokens[b, k, :n].tolist()
                if prefix is not None:
                    p = np.asarray(prefix)[b].reshape(-1).tolist()
                    is_final = bool(np.asarray(final)[b].reshape(-1)[0]) if final is not None else True
                    text = stream_delta(self.tokenizer, p, ids, is_final, self.skip_special_tokens)
                else:
                    text = decode(self.tokenizer, ids, self.skip_special_tokens)
                out[b, k] = text.encode("utf-8")
        return out.reshape(-1)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            out = self.process(
                input_array(request, "TOKENS_BATCH"),
                input_array(request, "SEQUENCE_LENGTH"),
                input_array(request, "STREAM_PREFIX_IDS"),
                input_array(request, "STREAM_FINAL"),
            )
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", out)]))
        return responses
