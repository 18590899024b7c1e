"""Evaluation tests run many tiny tensor ops (T = 1000 loops over small batches): one intra-op thread is
faster than two, and far faster on a busy machine, so every test here runs single-threaded."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")  # module scope: also covers module fixtures
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
