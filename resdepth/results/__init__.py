"""Reading and rendering results, the layer below training: the results format that a run writes and every command
reads (`runs.py`: one folder per run, the metric schema, the safe folder reader), what identifies a run (`groups.py`),
the Table-6 summary (`tables.py`), the figures (`plots.py`), the HTML report (`report.py`) and TensorBoard's event
files (`tensorboard_log.py`). Nothing here trains or builds a network."""

from .runs import METRIC_COLUMNS, Run, RunStatus, load_runs

__all__ = ["METRIC_COLUMNS", "Run", "RunStatus", "load_runs"]
