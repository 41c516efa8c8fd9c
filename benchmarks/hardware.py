"""One line naming the machine a benchmark ran on: CPU model, the SIMD flags that decide which
kernels run (torch's and parafill's), cores, torch. Every results file starts with it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from parafill.backends.engine import kernels

FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def cpu() -> tuple[str, list[str]]:
    """(model name, the FLAGS it has) from /proc/cpuinfo (the platform's name elsewhere)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return platform.processor() or platform.machine(), []
    model, flags = platform.machine(), set()
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return model, [f for f in FLAGS if f in flags]


def describe() -> str:
    model, flags = cpu()
    cap = torch.backends.cpu.get_cpu_capability()
    return (
        f"{model} ({', '.join(flags) or 'no AVX2'}), {os.cpu_count()} cores, torch "
        f"{torch.__version__} (CPU capability {cap}), parafill kernels: {kernels.simd()}"
    )


if __name__ == "__main__":
    print(describe())  # noqa: T201
