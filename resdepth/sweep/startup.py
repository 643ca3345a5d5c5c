"""How worker processes start from the installed resdepth whatever folder they start in.

`python -m module` (the local worker, submitit's job on a Slurm node) puts the working folder first on sys.path,
and so does Ray for its workers (the driver's folder). Started from the folder that holds a clone of the
repository, `import resdepth` would then find the clone folder `resdepth/` (its `results/` too) instead of the
installed package. Workers therefore drop that one entry before anything of resdepth is imported; PYTHONPATH (and so
a `--kind module:function` family found through it) still holds, and where families come from is the family
loader's policy alone (models/families.py).

Nothing here imports resdepth at module level: Ray ships this module's functions by value, so that a worker can
run them before it can safely import the package.
"""

from __future__ import annotations

import sys
from typing import Any

# `python -c SAFE_START [-u] -m MODULE ARGS...` runs like `python [-u] -m MODULE ARGS...` without the working folder
# on sys.path (`-P` does this from Python 3.11 on; resdepth supports 3.10).
SAFE_START = """import runpy, sys
if sys.path and sys.path[0] == '':  # the working folder, which -c puts first (unless PYTHONSAFEPATH is set)
    del sys.path[0]
args = sys.argv[1:]
if args[0] == '-u':  # unbuffered, as python -u
    sys.stdout.reconfigure(write_through=True)
    sys.stderr.reconfigure(write_through=True)
    args = args[1:]
assert args[0] == '-m', args
sys.argv = args[1:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def python_command(*args: str) -> list[str]:
    """This interpreter running `-m MODULE ARGS` (args start with -m, or -u -m) without the working folder on
    sys.path."""
    return [sys.executable, "-c", SAFE_START, *args]


def run_pickled(payload: bytes, driver_folder: str) -> Any:
    """On a Ray worker: drop the driver's working folder (driver_folder) that Ray put first on sys.path, then unpickle
    the call (which imports resdepth, now the installed one) and run it."""
    import pickle

    if driver_folder in sys.path:
        sys.path.remove(driver_folder)  # the first occurrence: Ray's; one that PYTHONPATH names too stays
    return pickle.loads(payload)()
