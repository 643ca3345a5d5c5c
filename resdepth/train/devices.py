"""Where and how a run executes: the device, its precision, its random states, and the CUDA-graph step.

None of this changes what a run computes beyond the order of floating-point sums (and TF32/bf16, which are
named precisions); `train.py` decides what to compute.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import re
import shutil
import socket
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .._version import __version__
from ..config import digits
from ..errors import UserError

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
# What the TF32 switches give in a process that never touched them: cuDNN convolutions in TF32, matmuls in fp32.
PYTORCH_DEFAULT_PRECISION = {"cuda": "PyTorch default: tf32 convolutions, fp32 matmuls", "cpu": "fp32"}


# ---------------------------------------------------------------------------------------------- which device
def check_device_name(name: str) -> None:
    """The spelling of --device, checked without touching any GPU (a sweep may be planned on a login node)."""
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not digits(index))):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """The device a run on this machine uses, always with its index (cuda: this process's current GPU); a UserError
    when this machine does not have it. An index is what torch.cuda.set_device, the RNG state of one GPU and a
    CUDA graph's streams need: `cuda` alone would mean "whichever GPU is current" at each call."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"device {name} asked for, but this machine has no CUDA GPU: use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    # current_device() would initialise CUDA in a process that may only plan (and fork); until then it is GPU 0
    return torch.device("cuda", device.index if device.index is not None else
                        torch.cuda.current_device() if torch.cuda.is_initialized() else 0)


def check_cuda_graph_device(cuda_graph: bool, device: str) -> None:
    """--cuda-graph records CUDA kernels: refused for a run or sweep that will train on the CPU."""
    if cuda_graph and device.startswith("cpu"):
        raise UserError(f"--cuda-graph needs a CUDA device, not {device}: leave it out on the CPU")


def compile_unavailable(device_type: str) -> str | None:
    """Why torch.compile cannot build its code on this machine, found without compiling (so a login node can say it
    cheaply), or None when nothing is missing. On the CPU it writes C++ for g++ (or $CXX); on CUDA, Triton builds
    its kernels' launchers with a C compiler. Slim container images and some cluster nodes have neither, and
    compiling would then fail at the first step, a page of torch's text."""
    if device_type == "cuda":  # Triton looks for exactly these: $CC, else gcc, else clang
        if os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang"):
            return None
        return ("torch.compile's CUDA kernels (Triton) need a C compiler, and none is on PATH (gcc, clang or $CC): "
                "install one (e.g. apt install gcc)")
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch's layout: the trial compile will say
        return None
    try:
        get_cpp_compiler()  # runs `g++ --version` once per process
    except RuntimeError:
        return ("torch.compile's CPU code needs a C++ compiler, and none works here (g++, or $CXX): install one "
                "(e.g. apt install g++)")
    return None


def compile_fails(device: str) -> str | None:
    """Why torch.compile fails on this machine, or None when it works: the compiler check, then a trial compile of a
    two-op function on `device` (cpu, cuda, cuda:N), which meets what a present compiler does not prove (missing
    Python headers, a cache folder that cannot be written, a /tmp mounted noexec). Known once per process and
    setting: a few seconds the first time (the build's headers), then nothing."""
    settings = tuple(os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TMPDIR", "PATH", "CC", "CXX"))
    return trial_compile(device, settings)


def _two_ops(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


@functools.cache
def trial_compile(device: str, settings: tuple[str | None, ...]) -> str | None:
    """Compile and run `_two_ops` anew: a fresh code object, built in a fresh folder inside torch's cache folder
    (where a noexec mount would show) and removed after, so no kernel cached before, perhaps by another machine
    sharing this home folder, can stand in for a build. The failure's gist, or None."""
    try:
        import torch._inductor.config  # imports dynamo, which makes its cache folder
    except OSError as exc:  # a second import would fail otherwise, half-registered
        return compile_failure(exc)
    reason = compile_unavailable(torch.device(device).type)
    if reason:
        return reason
    prepare_compiling()  # torch's empty notices kept off the terminal from the first compile on
    fresh = types.FunctionType(_two_ops.__code__.replace(), _two_ops.__globals__)
    quiet = logging.getLogger("torch._inductor")  # its warning that a failed build's folder was kept
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    folder = None
    try:
        folder = tempfile.mkdtemp(prefix="resdepth-trial-", dir=torch_cache_folder())
        with fresh_build_folder(folder), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.compile(fresh)(torch.ones(4, device=device))
    except Exception as exc:  # noqa: BLE001 - whatever the failure: it is reported, in a line, not raised
        return compile_failure(exc)
    finally:
        quiet.setLevel(level)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    return None


def torch_cache_folder() -> str | None:
    """Where torch.compile writes and loads its builds (TORCHINDUCTOR_CACHE_DIR, by default under /tmp); None in
    a torch whose layout differs (the system's temporary folder stands in)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        try:
            from torch._inductor.runtime.runtime_utils import cache_dir  # torch < 2.6
        except ImportError:
            return None
    return cache_dir()


def fresh_build_folder(folder: str) -> contextlib.AbstractContextManager[Any]:
    """torch's own switch to an empty cache (its in-memory caches cleared too), inside `folder`."""
    from torch._inductor import utils

    fresh = getattr(utils, "fresh_cache", None) or getattr(utils, "fresh_inductor_cache", None)  # before 2.8
    if fresh is None:
        return contextlib.nullcontext()
    try:
        return fresh(dir=folder)
    except TypeError:  # a torch without its `dir`
        return fresh()


def compile_failure(exc: BaseException) -> str:
    """The gist of a failed compile: the compiler's first words where torch's message holds them (after its
    "Output:", below the command line), else a compiler-style "error:" line, else the message's first line."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    output = lines.index("Output:") + 1 if "Output:" in lines else len(lines)
    said = [line for line in lines if re.search(r"(^|\s)error:", line)]
    gist = lines[output] if output < len(lines) else said[0] if said else lines[0] if lines else ""
    return (f"torch.compile fails on this machine ({type(exc).__name__}: {gist[:240]}): docs/install.md says what "
            "it needs")


def check_compile_possible(flag: str | None, device: str, trial: bool = True) -> None:
    """Refuse an asked-for compile (flag: the option that asks for it, None: not asked) that fails on device (trial:
    found by compiling, `compile_fails`; else by looking, `compile_unavailable`)."""
    if not flag:
        return
    reason = compile_fails(device) if trial else compile_unavailable(torch.device(device).type)
    if reason:
        raise UserError(f"{flag}: {reason}; or train without {flag}")


def device_label(device: torch.device, environ: Mapping[str, str] = os.environ) -> str:
    """The device as the machine numbers it: a worker that sees only GPU 3 (CUDA_VISIBLE_DEVICES=3, as the local,
    Ray and Slurm executors give it) trains on its cuda:0, which a progress display should call cuda:3."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if device.type != "cuda" or not visible:
        return str(device)
    ids = [part.strip() for part in visible.split(",")]
    index = device.index or 0
    return f"cuda:{ids[index]}" if index < len(ids) else str(device)


def environment(device: torch.device) -> dict[str, Any]:
    """What config.json records of the machine a run trained on."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"python": platform.python_version(), "torch": torch.__version__, "resdepth": __version__,
            "device": str(device), "device_name": name, "host": socket.gethostname(),
            "threads": torch.get_num_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


# ---------------------------------------------------------------------------------------------- precision
def resolved_precision(precision: str, device: torch.device) -> str:
    return precision if precision != "auto" else "tf32" if device.type == "cuda" else "fp32"


def precision_context(precision: str, device: torch.device, graph_safe: bool = False) -> Callable[[], Any]:
    """Set matmul/conv precision for the run and return the autocast context factory for its forward passes."""
    precision = resolved_precision(precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        # autocast runs the convs and the FC layer in bf16; BN takes their bf16 activations as they come (its weights
        # and running statistics stay fp32); the loss is computed in fp32
        # a CUDA graph must not keep autocast's cache of cast weights: a replay would read stale copies
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=not graph_safe)
    return contextlib.nullcontext


def cudnn_benchmark(device: torch.device, deterministic: bool) -> bool:
    """Whether cuDNN times its convolution algorithms at each new shape and keeps the fastest: on CUDA, unless
    --deterministic asks for algorithms that give the same bits in every process (the fastest one it times may
    differ from process to process, and so may the float order of a resumed run)."""
    return device.type == "cuda" and not deterministic


def set_cudnn_mode(device: torch.device, deterministic: bool) -> None:
    """cuDNN's algorithm choice for the run (process-wide switches, as the TF32 ones); the CPU has none."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark(device, deterministic)
        torch.backends.cudnn.deterministic = deterministic


@contextlib.contextmanager
def pytorch_default_precision() -> Iterator[None]:
    """PyTorch's own TF32 switches for the duration, whatever a Trainer in this process set (they are global)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def caller_state_kept() -> Iterator[None]:
    """What a run sets process-wide, put back as the caller had it once the run returns (a script or notebook goes
    on as before): the global random state it seeds (CPU, and CUDA where the caller had started it), this process's
    threads, the TF32 and cuDNN switches, and its current GPU (a run on cuda:1 sets it; the caller's "cuda" tensors
    would land there after)."""
    threads = torch.get_num_threads()
    backends = torch.backends
    switches = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark,
                backends.cudnn.deterministic)
    started = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    current = torch.cuda.current_device() if started else None  # asked only where CUDA is started: it would start it
    try:
        with torch.random.fork_rng(devices=started):
            yield
    finally:
        torch.set_num_threads(threads)
        if torch.cuda.is_initialized():  # the run started CUDA, or the caller had: GPU 0 is CUDA's first current one
            torch.cuda.set_device(current if current is not None else 0)
        (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark,
         backends.cudnn.deterministic) = switches


# ---------------------------------------------------------------------------------------------- random states
CPU_GENERATOR_STATE_BYTES = 5056  # a CPU torch.Generator's state; a CUDA one's is 16 bytes (seed and offset)


def rng_state(device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """The random states a run draws from: its own generator (data order, augmentation), torch's global CPU RNG
    and, on CUDA, the global RNG of the run's own GPU only (a model with dropout draws from it). Saving one state
    per visible GPU would tie a checkpoint to the number of GPUs the process saw."""
    return {"generator": generator.get_state(), **global_rng_state(device), "device_type": device.type}


def global_rng_state(device: torch.device) -> dict[str, Any]:
    """torch's global CPU RNG state and, on CUDA, the run's own GPU's."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng_state(state: dict[str, Any], device: torch.device, generator: torch.Generator) -> None:
    """Put back what `rng_state` saved (CPU byte tensors, whatever device they were mapped to), refusing a state
    saved on another kind of device."""
    check_same_device_type(state, device)
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    cuda_rng = state.get("cuda_rng")
    if device.type == "cuda" and torch.is_tensor(cuda_rng):  # checkpoints of older versions saved a list: skip it
        torch.cuda.set_rng_state(cuda_rng.cpu(), device)


def check_same_device_type(state: dict[str, Any], device: torch.device) -> None:
    """Refuse to resume on another kind of device: the generator's state (data order and augmentation) does not
    carry over between CPU and CUDA, and `--precision auto` means fp32 on one and tf32 on the other."""
    saved = state.get("device_type")
    if saved is None:  # written before device_type was saved: the generator state's size tells
        saved = "cpu" if state["generator"].numel() == CPU_GENERATOR_STATE_BYTES else "cuda"
    if saved != device.type:
        raise UserError(f"this run was trained on {saved} and is now asked to resume on {device.type}: the two draw "
                        f"different random numbers, so resume it on {saved} (--device {saved}), or delete "
                        "checkpoint.pt and rerun with --retry-failed to start over")


# ---------------------------------------------------------------------------------------------- CUDA graphs
Step = Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]


# Compiles of one function a process may make before dynamo gives up on it: dynamo's own bound on all of a function's
# compiles (accumulated_recompile_limit), ~128 compiled runs; measured, 30 closed compiled ResNet-20 runs in one
# process kept 7 MB of compiled code between them
RECOMPILE_LIMIT = 256
# torch.compile's notices that say nothing about a run: compiling on a machine without CUDA names CUDA_HOME, and
# torch's SGD step marks itself for the profiler, which dynamo skips; a user would read both as trouble
COMPILE_NOTICES = {"torch.utils.cpp_extension": "No CUDA runtime is found",
                   "torch._dynamo.variables.ctx_manager": "Profiler record function"}


def prepare_compiling(limit: int = RECOMPILE_LIMIT) -> None:
    """Before this process compiles a training step: let dynamo compile one function up to `limit` times, and keep
    its empty notices off the terminal and the logs.

    The limit: each run or fused group compiles its step anew (new parameters, new optimizer), and one process may
    train many in turn (an in-process sweep, `bench`, a group's models dropping out); past the default of 8 the
    step silently ran eagerly from the 5th compiled run of a process on (2 SGD graphs a run). The setting's name
    before torch 2.6: cache_size_limit."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))
    for logger_name, message in COMPILE_NOTICES.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, DropNotice) and f.message == message for f in logger.filters):
            logger.addFilter(DropNotice(message))


class DropNotice(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.message)


class CapturedStep:
    """The training step (forward, loss, backward, SGD update) recorded once as a CUDA graph, then replayed.

    Why a hand-written capture beside `--compile`'s CUDA-graph mode: it captures in seconds at any depth, where
    compiling ResNet-1202 takes minutes; which is faster per step is what gpu_bench.sh (2b against 2c) measures.
    A replay launches the whole step at once. Shapes are static (full batches); the lr lives in a device tensor,
    so the schedule and the warm-up change it without a new capture; augmentation stays outside the graph, drawing
    from the run's generator as the eager step does, so checkpoints resume exactly. Capturing needs a few real
    steps first (cuDNN plans, the momentum buffers, with lr 0); `restore_training_state` then puts the weights,
    BN statistics and momentum back, so the replayed run computes what the eager step computes (a GPU test checks
    this; the CPU suite checks the restore itself). Everything happens under the run's own device: a capture
    stream made on another GPU than the model's records nothing that replays.
    """

    WARMUP_STEPS = 3  # PyTorch's recipe: run the step a few times on a side stream before capturing it

    def __init__(self, step: Step, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 inputs: torch.Tensor, labels: torch.Tensor):
        self.inputs, self.labels = inputs.clone(), labels.clone()  # the graph's fixed input addresses
        self.lr = torch.zeros((), device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        saved = snapshot_training_state(model, optimizer)
        with torch.cuda.device(device):
            clear_cublas_workspaces()
            current = torch.cuda.current_stream(device)
            side = torch.cuda.Stream(device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_STEPS):
                    step(self.inputs, self.labels, True)
            current.wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device)):
                self.loss, self.wrong = step(self.inputs, self.labels, False)
            clear_cublas_workspaces()
        restore_training_state(model, optimizer, saved)

    def replay(self, inputs: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the step on this batch; the returned tensors are overwritten by the next replay."""
        self.inputs.copy_(inputs)
        self.labels.copy_(labels)
        self.lr.fill_(lr)
        self.graph.replay()
        return self.loss, self.wrong


def clear_cublas_workspaces() -> None:
    """Free cuBLAS's scratch buffers, as torch's own CUDA-graph mode does around each recording: cuBLAS keeps one
    (32 MiB on an H100) per handle and stream, never freed, and a capture uses two new streams from each of two
    threads (forward, and autograd's backward), so each capture of an in-process sweep would keep ~128 MiB more.
    The one the graph records lives on in the graph's own memory pool."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private, so looked up rather than assumed
    if clear is not None:
        clear()


def snapshot_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of the weights, BN statistics and momentum buffers, to undo steps taken only to prepare a capture."""
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    momentum = {id(p): s["momentum_buffer"].clone() for p, s in optimizer.state.items()
                if s.get("momentum_buffer") is not None}
    return {"model": weights, "momentum": momentum}


@torch.no_grad()
def restore_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Copy the snapshot back into the same tensors (a CUDA graph holds their addresses). A momentum buffer born
    in the undone steps becomes zero, so the next real step sets it to the gradient, as SGD's first step does."""
    for name, tensor in model.state_dict().items():
        tensor.copy_(saved["model"][name])
    for param, state in optimizer.state.items():
        buffer = state.get("momentum_buffer")
        if buffer is None:
            continue
        before = saved["momentum"].get(id(param))
        if before is not None:
            buffer.copy_(before)
        else:
            buffer.zero_()
