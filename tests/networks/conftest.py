"""Network tests run single-threaded.

The networks here are tiny (or run at batch 1), so a second thread buys nothing, while on a shared
2-core machine an OpenMP barrier waiting for a busy core made a 40 ms forward pass take 2.5 s.
The previous thread count is restored after each test.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
