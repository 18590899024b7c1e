"""The codec evaluates small batches tick by tick: one torch thread is fastest on a shared machine."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_torch_thread):
    yield
