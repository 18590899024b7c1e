"""The machine a benchmark ran on, for its JSON: CPU models differ between sessions."""

from __future__ import annotations

import os
import platform

from ddpmkit.networks.cpu_fast import cpu_identity

# The instruction-set features that decide which kernels torch runs (fp32 width, native bf16).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """CPU model name, family / model numbers, core count and the FLAGS present: the library's own
    reading of /proc/cpuinfo (the one its CPU-path profiles are keyed by), so a JSON names the CPU the
    same way the cache does."""
    c = cpu_identity()
    return {"model": c.get("name") or platform.processor() or "unknown",
            "family": c.get("family") or None, "model_number": c.get("model") or None,
            "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in c.get("flags", frozenset())]}


def cpu_model() -> str:
    """One line: model name, family/model and the FLAGS present."""
    c = cpu_info()
    flags = " ".join(c["flags"]) or "no listed flags"
    return f"{c['model']} (family {c['family']}, model {c['model_number']}; {flags})"
