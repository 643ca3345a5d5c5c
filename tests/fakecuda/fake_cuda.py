"""A fake CUDA for the CPU suite: `torch.cuda` reports GPUs, as strict as the real API, up to the first CUDA tensor.

A launch path (a sweep's worker, a Ray or Slurm task, `run_training`, a benchmark process, ...) runs its CUDA
branch against it: picking and setting its device, reading RNG states and device names, synchronizing. The first
tensor it puts on a GPU raises `FakeCudaReached` after one JSON line is appended to the record file
(RESDEPTH_FAKE_CUDA_RECORD): which process, the device it asked for, the device that means there, the physical GPU
behind it (CUDA_VISIBLE_DEVICES), and its current device. A test reads those lines to see where each process ended.

Strict where the real API is: `set_device` needs an index, an index past the GPUs this process sees fails as
"invalid device ordinal", RNG states are CPU byte tensors. Only tests activate it: in their own process through
the `fake_cuda` fixture, in a subprocess through tests/fakecuda/sitecustomize.py, which Python imports only when
this folder is on its PYTHONPATH and acts only when RESDEPTH_FAKE_CUDA names a number of GPUs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.cuda._utils import _get_device_index
from torch.overrides import TorchFunctionMode

GPUS_VARIABLE = "RESDEPTH_FAKE_CUDA"  # how many GPUs the machine has
RECORD_VARIABLE = "RESDEPTH_FAKE_CUDA_RECORD"  # the file each process appends its first CUDA tensor's line to
FOLDER = Path(__file__).resolve().parent  # on a subprocess's PYTHONPATH: its sitecustomize installs the fake
RNG_STATE_BYTES = 16  # a CUDA generator's state: seed and offset
NOT_TENSORS = ("device", "_parse_to")  # torch functions that name a device without making a tensor there


class FakeCudaReached(RuntimeError):
    """The first tensor on a (fake) GPU: as far as a CPU machine can follow a launch path."""


class FakeCuda:
    """The GPUs of one process: the machine's `gpus`, of which CUDA_VISIBLE_DEVICES shows some, and the current one."""

    def __init__(self, gpus: int, record: Path | None):
        self.machine, self.record = gpus, record
        self.current = 0

    @property
    def visible(self) -> list[int]:
        """The GPUs of this process, read when asked: Ray sets CUDA_VISIBLE_DEVICES in a worker for each task."""
        listed = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [int(part) for part in listed.split(",") if part.strip()] if listed is not None else range(self.machine)
        visible = []
        for gpu in ids:  # the CUDA runtime stops at the first id the machine does not have
            if not 0 <= gpu < self.machine:
                break
            visible.append(gpu)
        return visible

    # ------------------------------------------------------------------------------------------ the API
    def index(self, device: Any, optional: bool) -> int:
        """The real API's reading of a device argument (an index required unless optional), checked to exist."""
        index = _get_device_index(device, optional=optional)
        index = self.current if index is None or index < 0 else index
        if index >= len(self.visible):
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def set_device(self, device: Any) -> None:
        self.current = self.index(device, optional=False)

    def get_rng_state(self, device: Any = "cuda") -> torch.Tensor:
        return torch.full((RNG_STATE_BYTES,), self.index(device, optional=True), dtype=torch.uint8)

    def set_rng_state(self, new_state: torch.Tensor, device: Any = "cuda") -> None:
        self.index(device, optional=True)
        if new_state.dtype != torch.uint8 or new_state.device.type != "cpu":
            raise TypeError(f"expected a CPU torch.ByteTensor, got {new_state.type()} on {new_state.device}")
        if new_state.numel() != RNG_STATE_BYTES:
            raise RuntimeError(f"RNG state is wrong size: {new_state.numel()} bytes, not {RNG_STATE_BYTES}")

    def get_device_name(self, device: Any = None) -> str:
        return f"Fake GPU {self.visible[self.index(device, optional=True)]}"

    def checked(self, result: Any = None) -> Callable[..., Any]:
        """A call that only checks its device argument (synchronize, memory statistics)."""
        def call(device: Any = None) -> Any:
            self.index(device, optional=True)
            return result
        return call

    def patches(self) -> Iterator[tuple[Any, str, Any]]:
        """(object, attribute, fake) for everything the fake replaces in torch.cuda."""
        cuda = torch.cuda
        yield cuda, "is_available", lambda: True
        yield cuda, "device_count", lambda: len(self.visible)
        yield cuda, "current_device", lambda: self.current
        yield cuda, "is_initialized", lambda: True
        for name in ("set_device", "get_rng_state", "set_rng_state", "get_device_name"):
            yield cuda, name, getattr(self, name)
        for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
            yield cuda, name, self.checked()
        for name in ("memory_allocated", "max_memory_allocated"):
            yield cuda, name, self.checked(0)
        yield cuda, "_lazy_init", self.lazy_init
        yield threading.Thread, "run", self.thread_run(threading.Thread.run)

    # ------------------------------------------------------------------------------------------ the first tensor
    def reached(self, requested: Any) -> FakeCudaReached:
        """Record the first CUDA tensor of this process, then the error that stops the launch path there."""
        device = torch.device(requested) if requested is not None else torch.device("cuda")
        index = self.index(device, optional=True)
        line = {"pid": os.getpid(), "requested": str(device), "device": f"cuda:{index}",
                "physical": self.visible[index], "current": self.current,
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if self.record is not None:
            with self.record.open("a") as file:
                file.write(json.dumps(line) + "\n")
        return FakeCudaReached(f"first CUDA tensor, on {device} (cuda:{index}, physical GPU {line['physical']})")

    def lazy_init(self) -> None:
        """What torch calls before its first CUDA tensor (for a device it does not tell): the current device."""
        raise self.reached(f"cuda:{self.current}")

    def mode(self) -> TorchFunctionMode:
        return FirstCudaTensor(self)

    def thread_run(self, run: Callable[[threading.Thread], None]) -> Callable[[threading.Thread], None]:
        """Thread.run under the fake's function mode: torch keeps modes per thread, and workers train in threads."""
        def run_with_mode(thread: threading.Thread) -> None:
            with self.mode():
                run(thread)
        return run_with_mode


class FirstCudaTensor(TorchFunctionMode):
    """Sees every torch call: one that names a CUDA device (to, zeros, randperm, ...) is the first CUDA tensor."""

    def __init__(self, fake: FakeCuda):
        super().__init__()
        self.fake = fake

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in NOT_TENSORS:
            if name == "cuda":
                raise self.fake.reached(args[1] if len(args) > 1 else kwargs.get("device"))
            for value in (*args, *kwargs.values()):
                if is_cuda(value):
                    raise self.fake.reached(value)
        return func(*args, **kwargs)


def is_cuda(value: Any) -> bool:
    return (isinstance(value, torch.device) and value.type == "cuda") or (
        isinstance(value, str) and value.partition(":")[0] == "cuda")


def records(path: Path) -> list[dict[str, Any]]:
    """The lines every process wrote to the record file, in order."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def install_from_environment() -> None:
    """In a subprocess (sitecustomize): the fake for the rest of its life, on every thread."""
    record = os.environ.get(RECORD_VARIABLE)
    fake = FakeCuda(int(os.environ[GPUS_VARIABLE]), Path(record) if record else None)
    for target, name, value in fake.patches():
        setattr(target, name, value)
    fake.mode().__enter__()  # the main thread's; Thread.run enters it on the others
