"""build_step_input: the host-side facts a step carries for kernel choices."""

from tensorrt_llm.runtime import build_step_input


def test_num_decode_tail_counts_trailing_one_token_sequences():
    tables = [[0, 1], [2], [3], [4]]
    mk = lambda toks, cached: build_step_input(toks, cached, tables[: len(toks)], 8)  # noqa: E731
    assert mk([[1, 2, 3], [4], [5]], [0, 3, 4]).num_decode_tail == 2  # prompt, then generation rows
    assert mk([[4], [5], [6]], [3, 4, 1]).num_decode_tail == 3  # generation only
    assert mk([[4], [1, 2], [6]], [3, 0, 1]).num_decode_tail == 1  # a one-token row before a prompt stays
    assert mk([[1, 2], [3, 4]], [0, 0]).num_decode_tail == 0  # prompts only
