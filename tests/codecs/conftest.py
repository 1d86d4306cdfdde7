from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _single_torch_thread() -> Iterator[None]:
    # These tests run tiny convolutions; on a busy 2-core machine torch's intra-op thread pool
    # oversubscribes the cores and makes them ~100x slower. One thread keeps them at milliseconds.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
