"""The machine a benchmark ran on, for its JSON: CPU models differ between sessions (lscpu)."""

from __future__ import annotations

import os
import platform
import subprocess

# The instruction-set features that decide which kernels torch runs (fp32 width, native bf16).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """CPU model name, family / model numbers, core count and the FLAGS present, from lscpu."""
    fields = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name") or platform.processor() or "unknown",
            "family": fields.get("CPU family"), "model_number": fields.get("Model"),
            "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def cpu_model() -> str:
    """One line: model name, family/model and the FLAGS present."""
    c = cpu_info()
    flags = " ".join(c["flags"]) or "no listed flags"
    return f"{c['model']} (family {c['family']}, model {c['model_number']}; {flags})"
