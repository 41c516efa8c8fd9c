"""Masked-diffusion decoding (Fast-dLLM): confidence-threshold parallel unmasking in
semi-autoregressive blocks, block-wise approximate KV cache, batched rows and tree-packed
branches, for Fast_dLLM_v2 (Qwen2-shape block diffusion) and LLaDA checkpoints on disk.
`parafill.diffusion.backend.DiffusionBackend` serves one to the planners."""

from parafill.diffusion.decoder import DiffusionLM, Generation, Options, Result, Session, load
from parafill.diffusion.loader import SUPPORTED, Spec

__all__ = ["SUPPORTED", "DiffusionLM", "Generation", "Options", "Result", "Session", "Spec", "load"]
