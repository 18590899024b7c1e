import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The codec evaluates small batches tick by tick: one torch thread is fastest on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
