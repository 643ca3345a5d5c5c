"""Installs the fake CUDA (fake_cuda.py) in a subprocess a test started with this folder on its PYTHONPATH and
RESDEPTH_FAKE_CUDA set; without that variable it does nothing. Nothing outside tests/ puts this folder on a path."""

import os

if os.environ.get("RESDEPTH_FAKE_CUDA"):
    import fake_cuda

    fake_cuda.install_from_environment()
