"""argparse value types shared by every command line (``ddpmkit`` and ``ddpmkit eval``).

A low module on purpose: both CLIs import it, neither imports the other's private helpers.
"""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """``"999,500,0"`` -> ``[999, 500, 0]``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def sampler_options(args) -> dict:
    """The sampler's own options given on the command line (``--eta``); a sampler that does not take
    one given here reports an error instead of ignoring it."""
    return {} if args.eta is None else {"eta": args.eta}


# precisions of the network's forward (networks/precision.py): here so that the CLIs' --help needs no torch
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_HELP = ("network precision while sampling: fp32 (default), bf16 (autocast on CUDA or a CPU with native "
                  "bf16, AVX512_BF16 or AMX; elsewhere fp32, said in one line) or fp16 (CUDA only)")
