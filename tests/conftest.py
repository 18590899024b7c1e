"""Shared test settings: slow quality runs are skipped unless DDPMKIT_SLOW=1."""

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The cache ddpmkit writes (the CPU-path profile, the bf16 layouts it measures, FID references)
    goes to a directory of this test session, never the user's ~/.cache; a test may set its own."""
    saved = os.environ.get("DDPMKIT_CACHE_DIR")
    os.environ["DDPMKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("ddpmkit-cache"))
    yield
    if saved is None:
        os.environ.pop("DDPMKIT_CACHE_DIR", None)
    else:
        os.environ["DDPMKIT_CACHE_DIR"] = saved


@pytest.fixture
def single_torch_thread():
    """One torch thread for the test, the previous count restored after it (see tests/networks/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DDPMKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow quality run: set DDPMKIT_SLOW=1 (make test-all) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A digits run trained for 4 steps with a tiny U-Net: a real checkpoint for CLI/eval tests."""
    from ddpmkit.config import load_config
    from ddpmkit.testing.tiny import tiny_overrides
    from ddpmkit.training.trainer import train

    out = tmp_path_factory.mktemp("tiny") / "run"
    train(load_config("configs/digits.toml" if os.path.exists("configs/digits.toml") else None,
                      tiny_overrides(out)), progress=False)
    return out
