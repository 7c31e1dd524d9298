import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# The interrupt tests send SIGINT, SIGTERM and SIGHUP to this process, as a terminal would.
# A suite started in the background of a script (`make test &`, a CI runner without job
# control) inherits SIGINT ignored, and training leaves an ignored signal ignored (nohup):
# those tests would then train on. So the suite runs with the interactive defaults.
import signal  # noqa: E402

for _s, _default in (
    (signal.SIGINT, signal.default_int_handler),
    (signal.SIGTERM, signal.SIG_DFL),
    (getattr(signal, "SIGHUP", None), signal.SIG_DFL),
):
    if _s is not None and signal.getsignal(_s) is signal.SIG_IGN:
        signal.signal(_s, _default)

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
