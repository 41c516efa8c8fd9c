"""The GGUF → safetensors conversion cache under concurrent first runs: two processes that
open the embedded model on an empty cache both succeed with the same directory, and no
temporary directory is left behind; a conversion that fails leaves nothing either."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parafill.backends.engine import weights
from parafill.backends.engine.weights import ModelNotFound, default_gguf

_OPEN = "from parafill.backends.engine.weights import resolve; print(resolve(None))"


@pytest.fixture
def gguf() -> Path:
    try:
        return default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))


def test_two_first_runs_share_one_conversion(gguf: Path, tmp_path: Path) -> None:
    env = os.environ | {"PARAFILL_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    made = Path(paths.pop())
    assert (made / "config.json").is_file()
    left = [p.name for p in (tmp_path / "models").iterdir() if ".tmp" in p.name]
    assert left == []


def test_a_failed_conversion_leaves_no_directory(
    gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))

    def broken(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(weights.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        weights.resolve(gguf)
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []
