"""Where ddpmkit keeps what it computes once per machine: FID reference statistics, the CPU-path
profile and bf16 layouts (``cpu_fast.json``), prepared data sets.

One root for all of them: ``$DDPMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ddpmkit``, else
``~/.cache/ddpmkit``. Prepared data sets can be large, so ``$DDPMKIT_PREPARED_DIR`` (or
``data.prepared_dir``) moves them alone (data/prepared.py)."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "DDPMKIT_CACHE_DIR"


def user_cache_dir() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ddpmkit"


__all__ = ["ENV", "user_cache_dir"]
