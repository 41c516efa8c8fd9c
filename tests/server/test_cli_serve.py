"""`parafill serve` as a process: binds 127.0.0.1 by default, takes its key from the
environment, stops on SIGTERM; a bad --model is a clear error (exit 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port

from parafill.cli.serve import served_name

CMD = (str(Path(sys.executable).parent / "parafill"), "serve")  # the console script


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def test_serve_process_binds_localhost_and_asks_for_the_key() -> None:
    port = free_port()
    env = {**os.environ, "PARAFILL_API_KEY": "k-env"}
    proc = subprocess.Popen(
        [*CMD, "--port", str(port), "--max-tokens", "8"], env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}/v1/models"
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None and status is None:
            status = _status(url)
            if status is None:
                time.sleep(0.2)
        assert status == 401  # PARAFILL_API_KEY was picked up
        ok = httpx.get(url, headers={"authorization": "Bearer k-env"}, timeout=10)
        assert [m["id"] for m in ok.json()["data"]] == ["SmolLM2-135M-Instruct", "parafill-sot"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/v1 (API key required)" in err
    # uvicorn shuts down cleanly, then re-raises the signal it caught
    assert proc.returncode == -signal.SIGTERM and "Traceback" not in err


def test_bad_model_path_is_a_clear_error() -> None:
    done = subprocess.run(
        [*CMD, "--model", "/nonexistent/model.gguf"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "'/nonexistent/model.gguf' does not exist" in done.stderr


def test_served_name_drops_the_quant_tag() -> None:
    assert served_name(None) == "SmolLM2-135M-Instruct"
    assert served_name("/m/Qwen2.5-0.5B-Instruct.Q4_K_M.gguf") == "Qwen2.5-0.5B-Instruct"
    assert served_name("/m/my-model/") == "my-model"


def test_kv_budget_in_bytes_bad_or_too_small_is_a_clear_error() -> None:
    bad = subprocess.run([*CMD, "--kv-budget", "2 bananas"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert "--kv-budget: not a size: '2 bananas'" in bad.stderr
    small = subprocess.run([*CMD, "--kv-budget", "10KiB"], capture_output=True, text=True,
                           timeout=120)
    assert small.returncode == 2 and "Traceback" not in small.stderr
    assert "KV budget of 10240 bytes holds no token" in small.stderr


def test_bad_max_body_size_is_a_clear_error() -> None:
    for size, why in (("lots", "not a size: 'lots'"), ("0", "must be more than 0 bytes")):
        done = subprocess.run([*CMD, "--max-body-size", size], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"--max-body-size{':' if size == 'lots' else ''} {why}" in done.stderr


def test_bad_decode_or_prefill_chunk_is_a_clear_error() -> None:
    for args, why in (
        (["--decode", "fast"], "--decode auto, eager or static (not 'fast')"),
        (["--prefill-chunk", "0"], "--prefill-chunk must be at least 1, not 0"),
    ):
        done = subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert why in done.stderr, done.stderr
