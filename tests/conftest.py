import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Helper modules, not test modules: keep --doctest-modules from importing them on their own
# (the cases package imports its modules itself).
collect_ignore_glob = ["cases/*", "data/*"]


# Property tests draw the same examples on every run (a clean clone's CI must not pass or fail
# by chance); HYPOTHESIS_PROFILE=explore draws new ones, for looking for counterexamples.
try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # (hypothesis is a test extra)
    pass


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many small ops (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared CPU one thread is ~10x faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
