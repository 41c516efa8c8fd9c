"""Diffusion test fixtures: tiny random checkpoints on disk, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusion_ref import Reference, make_llada, make_qwen_bd

from parafill.diffusion import DiffusionLM, load

KINDS = ("qwen", "llada")


@pytest.fixture(scope="session")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion")
    return {
        "qwen": make_qwen_bd(root / "qwen"),
        "llada": make_llada(root / "llada"),
        # an output head scaled up, so that confidences are high and steps reveal many tokens
        "qwen_peaked": make_qwen_bd(root / "qwen_peaked", seed=1, head_scale=12.0),
        "llada_peaked": make_llada(root / "llada_peaked", seed=1, head_scale=12.0),
    }


@pytest.fixture(scope="session")
def models(dirs: dict[str, Path]) -> dict[str, DiffusionLM]:
    return {kind: load(path) for kind, path in dirs.items()}


@pytest.fixture(scope="session")
def refs(dirs: dict[str, Path]) -> dict[str, Reference]:
    return {kind: Reference(path) for kind, path in dirs.items()}
