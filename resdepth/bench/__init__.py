"""Measuring speed: training throughput against the common DataLoader recipe (`throughput.py`), fused seeds against
separate runs (`fused.py`, `bench --fuse`) and the dry run's time estimate of a sweep (`estimate.py`)."""

from .throughput import BenchConfig, BenchRow, run_benchmark

__all__ = ["BenchConfig", "BenchRow", "run_benchmark"]
