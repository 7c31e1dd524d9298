import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Helper modules, not test modules: keep --doctest-modules from importing them on their own
# (the cases package imports its modules itself).
collect_ignore_glob = ["cases/*", "data/*"]


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many small ops (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared CPU one thread is ~10x faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
