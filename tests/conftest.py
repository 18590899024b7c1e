"""Shared test settings: slow quality runs are skipped unless DDPMKIT_SLOW=1."""

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DDPMKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow quality run: set DDPMKIT_SLOW=1 (make test-all) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
