import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

# Helper modules, not test modules: keep --doctest-modules from importing them on their own
# (the registry imports the cases_* modules itself).
collect_ignore_glob = ["registry.py", "cases_*.py", "data/*"]
