import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

# Helper modules, not test modules: keep --doctest-modules from importing them on their own
# (the cases package imports its modules itself).
collect_ignore_glob = ["cases/*", "data/*"]
