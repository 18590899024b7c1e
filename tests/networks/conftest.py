"""Network tests run single-threaded.

The networks here are tiny (or run at batch 1), so a second thread buys nothing, while on a shared
2-core machine an OpenMP barrier waiting for a busy core made a 40 ms forward pass take 2.5 s.
The previous thread count is restored after each test.
"""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_torch_thread):
    yield
