"""Running sweeps: the grid of depths x kinds x seeds (x any axis, `grid.py`) planned against the results folder and
run (`runner.py`), one cell's lock and lifecycle (`cell.py`), the executors behind one interface: in-process and
local processes (`executors.py`), Ray and Slurm (`cluster.py`), the worker process and how it starts
(`worker.py`, `startup.py`), and what `status` reads of a sweep (`watch.py`)."""

from .runner import SweepConfig, make_cells, make_executor, plan_sweep, run_sweep

__all__ = ["SweepConfig", "make_cells", "make_executor", "plan_sweep", "run_sweep"]
