"""The launcher refuses an environment whose numpy the wheel's Python backend stub cannot read."""

import importlib.metadata
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import launch_triton_server as launcher  # noqa: E402


def test_numpy_2_is_refused_with_a_clear_error(monkeypatch, tmp_path):
    try:
        tritonserver = launcher.find_tritonserver(None)
    except (FileNotFoundError, SystemExit):
        pytest.skip("no tritonserver here")
    if not (tritonserver.parent.parent / "python_backend_stubs").is_dir():
        pytest.skip("not the nvidia-pytriton wheel's tritonserver")
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "2.1.0" if n == "numpy" else real(n))
    with pytest.raises(RuntimeError, match=r"needs numpy < 2, and .* has numpy 2\.1\.0"):
        launcher.prepare_environment(tritonserver, tmp_path)
