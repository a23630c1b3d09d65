"""An OpenAI-compatible API (`/v1/completions`, `/v1/chat/completions`, `/v1/models`) in front of tritonserver.

A client of tritonserver, as `client/` is: it talks to the server over its gRPC streaming API only, and
never imports `inflight_batcher` or `tensorrt_llm`. From `backend` it uses the text logic the Triton
models use (tokenizer loading, the detokenizer's settling rules, config parameters), so that both read
text the same way.

- `discovery`: which models are served (the repository's text models) and with which tokenizer;
- `protocol`: OpenAI's request bodies, their checks (unsupported fields refused by name), its errors;
- `engine`: one engine request as a gRPC stream, cancelled when its consumer stops;
- `text`: token ids -> text pieces (windowed detokenizer) and stop strings;
- `serving`: choices (`n`, prompt lists), their pieces and finish reasons;
- `server`: the FastAPI app (routes, server-sent events); `__main__`: the command line.

Run: `python -m openai_frontend --triton_grpc_url localhost:8001 --port 9000`, or
`scripts/launch_triton_server.py ... --openai_port 9000` to start it beside tritonserver.
"""
