"""Trained networks read back from run folders, the paper's constructed deeper solution, and `--init`.

§1: "There exists a solution by construction to the deeper model: the added layers are identity mapping, and
the other layers are copied from the learned shallower model." `construct_from_run` builds that deeper net from
a finished run: the trained layers copied in order, and blocks that compute the identity added at the end of
each stage (after its downsampling block):

- residual: a block computes relu(x + F(x)); with its last BN's scale and shift at zero F(x) = 0, and x >= 0
  (it is a ReLU's output), so the block is the identity, in evaluation and in training mode alike;
- plain: a block computes relu(bn(conv(relu(bn(conv(x)))))); Dirac kernels make each conv the identity, and
  each BN gets running statistics (mean m, variance v) with scale sqrt(v + eps) and shift m, so its evaluation
  transform (x - m) / sqrt(v + eps) * sqrt(v + eps) + m is the identity; the ReLUs pass x >= 0 unchanged.
  With identity_bn "data" (default), m and v are the measured per-channel statistics of the block's input on the
  training images, so that in training mode, where BN uses each batch's own statistics, the block stays close to
  the identity; with "unit" (m = 0, v = 1) training-mode BN standardizes its input instead.

The constructed net is checked on the run's train and test images (evaluation mode): it must give the source
net's predictions. `resdepth train --init` then trains from it (`load_init`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DATA, config_args, from_dict
from ..errors import UserError
from ..models import CifarNet, count_parameters
from ..models.families import build_network, family_named_by_folder, file_name, get_family, known_family
from ..results.groups import is_complete
from ..results.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONSTRUCTED_KEY,
    atomic_write_bytes,
    check_run_config,
    ensure_writable_dir,
    load_runs,
    read_checkpoint,
    read_json,
    write_config,
)
from .data import DataConfig, Dataset, load_dataset, normalize

IDENTITY_BN = ("data", "unit")
EVAL_BATCH = 500  # images per forward pass when evaluating: ResNet-110's largest activations stay near 40 MB


# ---------------------------------------------------------------------------------------------- saved networks
@dataclass(frozen=True)
class NetSpec:
    """Which network a set of weights belongs to."""

    kind: str  # the network family
    depth: int
    shortcut: str | None  # as the family resolves it (None: a family that takes none)
    num_classes: int | None  # None: not recorded (then only the weights' shapes can tell)
    options: tuple[tuple[str, Any], ...] = ()  # the family's network options other than their defaults (width)

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str) -> NetSpec:
        """The net a run's config.json names (checked by the results reader); its family is never imported by
        path (families.family_named_by_folder)."""
        classes = config.get("resolved", {}).get("num_classes")
        kind = config.get("kind")
        family, options = family_named_by_folder(kind, where), config.get("options")
        return cls(kind, int(config.get("depth", 0)), family.shortcut_for(config.get("shortcut")),
                   int(classes) if classes is not None else None,
                   tuple(family.resolve_options(options if isinstance(options, dict) else {}).items()))

    @property
    def label(self) -> str:
        """plain-20, residual-56, residual-56-B (the shortcut where it is not the family's default)."""
        return f"{known_family(self.kind).variant(self.shortcut)}-{self.depth}"

    def same_net(self, kind: str, depth: int, shortcut: str | None) -> bool:
        family = get_family(kind)
        return (self.kind, self.depth) == (kind, depth) and (
            not family.shortcuts or family.shortcut_for(self.shortcut) == family.shortcut_for(shortcut))

    def build(self, where: str) -> nn.Module:
        family_named_by_folder(self.kind, where)  # never a module the folder names by path
        return build_network(self.kind, self.depth, num_classes=self.num_classes or 10, shortcut=self.shortcut,
                             net_options=dict(self.options))


@dataclass
class SavedNet:
    """A checkpoint's weights, read without running code, and the network they belong to."""

    spec: NetSpec
    checkpoint: dict[str, Any]
    path: Path  # the checkpoint file

    def load(self, device: torch.device) -> nn.Module:
        """The network with these weights, in evaluation mode, on device."""
        model = self.spec.build(str(self.path))
        load_weights(model, self.checkpoint["model"], self.path)
        return model.to(device).eval()


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint on the CPU, read with `weights_only=True` (never running code it may carry); a UserError
    naming the file when it cannot be used."""
    if not os.path.lexists(path):  # a link or a FIFO is there: read_checkpoint says which, not "missing"
        raise UserError(f"{path} is missing")
    return read_checkpoint(path, fix="name another run folder or checkpoint")


def saved_options(options: Any, file: Path) -> tuple[tuple[str, Any], ...]:
    """A checkpoint's net.options as (name, value) pairs; their names and values are the family's to check when
    the net is built."""
    if not isinstance(options, (list, tuple)) or not all(
            isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) for item in options):
        raise UserError(f"{file}: key net.options: expected (name, value) pairs, got {type(options).__name__}")
    return tuple((str(name), value) for name, value in options)


def read_saved_net(path: Path | str) -> SavedNet:
    """Weights from a run folder (its checkpoint.pt and config.json) or a checkpoint file. The network is the
    one the checkpoint names (`resdepth construct` writes it), else the one its folder's config.json names."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    checkpoint = read_checkpoint_file(file)
    net = checkpoint.get("net")
    if isinstance(net, dict) and set(net) | {"options"} == set(NetSpec.__dataclass_fields__):  # older: no options
        spec = replace(from_dict(NetSpec, {**net, "options": ()}, str(file), "net."),
                       options=saved_options(net.get("options", ()), file))
    else:
        config = read_json(file.parent / CONFIG_FILE)
        if not isinstance(config, dict) or "kind" not in config or "depth" not in config:
            raise UserError(f"cannot tell which network {file} holds: name a run folder (with its config.json) or "
                            "a checkpoint written by `resdepth construct`")
        check_run_config(config, str(file.parent / CONFIG_FILE))
        spec = NetSpec.from_config(config, str(file.parent / CONFIG_FILE))
    return SavedNet(spec, checkpoint, file)


def load_weights(model: nn.Module, weights: dict[str, Any], source: Path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"the weights in {source} do not fit the network they are loaded into "
                        f"({first[1].strip() if len(first) > 1 else first[0]})") from None


# ---------------------------------------------------------------------------------------------- --init
def check_init(init: str, kind: str, depth: int, shortcut: str | None, num_classes: int | None = None) -> SavedNet:
    """The weights --init names, refused in one line when they belong to another network than the run's."""
    if not Path(init).exists():
        raise UserError(f"--init {init} does not exist: name a run folder or checkpoint (resdepth construct writes "
                        "one)")
    try:
        saved = read_saved_net(init)
    except UserError as exc:
        raise UserError(f"--init {init}: {exc}") from None
    spec = saved.spec
    if not spec.same_net(kind, depth, shortcut):
        wanted = NetSpec(kind, depth, shortcut, None).label
        shown = known_family(spec.kind).shown_shortcut(spec.shortcut)
        fix = f"--kind {spec.kind} --depth {spec.depth}" + (f" --shortcut {shown}" if shown else "")
        raise UserError(f"--init {init} holds a {spec.label} net, not the {wanted} this run trains: pass {fix}, "
                        "or --init weights of a " + wanted)
    if num_classes is not None and spec.num_classes is not None and spec.num_classes != num_classes:
        raise UserError(f"--init {init} holds a net with {spec.num_classes} classes; this run's dataset has "
                        f"{num_classes}: use weights trained on a dataset with {num_classes} classes")
    return saved


def load_init(model: nn.Module, init: str, kind: str, depth: int, shortcut: str | None, num_classes: int) -> None:
    """Replace the model's initial weights (and BN statistics) with those --init names, which must be of the
    run's network (family, depth, shortcut, classes)."""
    saved = check_init(init, kind, depth, shortcut, num_classes)
    load_weights(model, saved.checkpoint["model"], saved.path)


def describe_init(init: str) -> dict[str, Any]:
    """What config.json records about --init: where, which net, a hash of the file, what it was constructed from."""
    record: dict[str, Any] = {"path": str(Path(init).resolve())}
    try:
        saved = read_saved_net(init)
    except UserError as exc:  # a resumed run whose --init source has gone since it started
        return {**record, "unreadable": str(exc)}
    record.update(net=saved.spec.label, num_classes=saved.spec.num_classes,
                  sha256=hashlib.sha256(saved.path.read_bytes()).hexdigest())
    construction = saved.checkpoint.get("construction")
    if isinstance(construction, dict):
        record["constructed_from"] = construction
    return record


# ---------------------------------------------------------------------------------------------- evaluation
@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """Convolutions and matmuls in full fp32 on CUDA too (no TF32), restored afterwards (the switches are global)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def input_batches(images: torch.Tensor, mean: torch.Tensor, device: torch.device,
                  batch_size: int = EVAL_BATCH) -> Iterator[torch.Tensor]:
    """The un-augmented images as the run's network sees them in evaluation: [0, 1] minus the training mean."""
    mean = mean.to(device)
    for start in range(0, len(images), batch_size):
        yield normalize(images[start:start + batch_size].to(device), mean)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, device: torch.device,
            batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Predicted classes (on the CPU) in evaluation mode, fp32."""
    model.eval()
    with full_fp32(device):
        return torch.cat([model(batch).argmax(1).cpu() for batch in input_batches(images, mean, device, batch_size)])


def run_dataset(config: dict[str, Any]) -> Dataset:
    """The run's own splits (subsets and validation split included), as its config.json describes them."""
    data = config.get("data", {})
    return load_dataset(DataConfig(**{k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__}))


def check_same_data(dataset: Dataset, checkpoint: dict[str, Any], run_dir: Path) -> None:
    saved = checkpoint.get("data_fingerprint")
    if saved is not None and saved != dataset.fingerprint():
        raise UserError(f"the data of {run_dir} is not what it was trained on (images or labels changed since): "
                        "restore the data it names in config.json")


# ---------------------------------------------------------------------------------------------- construction
def construct_deeper(source: CifarNet, depth: int,
                     stage_inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[CifarNet, str]:
    """A net of `depth` layers that computes what `source` computes in evaluation mode: its layers copied, and
    identity blocks added at the end of each stage (each block knows how: BasicBlock.make_identity); and how the
    added blocks were made the identity. stage_inputs: per stage, the per-channel mean and variance that blocks
    needing them (plain ones) take as BN statistics."""
    target = CifarNet(source.kind, depth, num_classes=source.linear.out_features, shortcut=source.shortcut_option,
                      width=source.width)
    copied = len(source.layer1)
    # Block i of a stage has the same name in both nets for i < copied, so the source's state dict is a subset.
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected and all(".".join(key.split(".")[:2]) in added_blocks(target, copied) for key in missing)
    how = ""
    for stage, blocks in enumerate(target.stages()):
        for block in list(blocks)[copied:]:
            how = block.make_identity(*(stage_inputs[stage] if block.identity_needs_statistics else (None, None)))
    return target.eval(), how


def added_blocks(net: CifarNet, copied: int) -> set[str]:
    return {f"layer{stage}.{index}" for stage, blocks in enumerate(net.stages(), start=1)
            for index in range(copied, len(blocks))}


class StageInputs:
    """Per stage, float64 per-channel sums of the stage's output: the input of the blocks added after it."""

    def __init__(self, model: CifarNet):
        self.sums: list[torch.Tensor | None] = [None] * 3
        self.squares: list[torch.Tensor | None] = [None] * 3
        self.count = [0] * 3
        self.handles = [stage.register_forward_hook(self.hook(i)) for i, stage in enumerate(model.stages())]

    def hook(self, index: int) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            sums, squares = out.sum((0, 2, 3), dtype=torch.float64), out.square().sum((0, 2, 3), dtype=torch.float64)
            self.sums[index] = sums if self.sums[index] is None else self.sums[index] + sums
            self.squares[index] = squares if self.squares[index] is None else self.squares[index] + squares
            self.count[index] += out.numel() // out.shape[1]
        return record

    def moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stage (mean, population variance) per channel, float32 on the CPU."""
        for handle in self.handles:
            handle.remove()
        result = []
        for sums, squares, count in zip(self.sums, self.squares, self.count, strict=True):
            assert sums is not None and squares is not None
            mean = sums / count
            result.append((mean.float().cpu(), (squares / count - mean.square()).clamp_min(0).float().cpu()))
        return result


def unit_moments(model: CifarNet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    widths = [blocks[-1].bn2.num_features for blocks in model.stages()]
    return [(torch.zeros(width), torch.ones(width)) for width in widths]


@dataclass
class SplitComparison:
    """Source and constructed net on one split, in evaluation mode."""

    split: str
    images: int
    source_error: float  # %
    constructed_error: float  # %
    disagreements: int  # images on which the two nets predict different classes


@dataclass
class Construction:
    out_dir: Path
    source: str  # e.g. plain-20
    target: str  # e.g. plain-56
    comparisons: list[SplitComparison]
    train_args: list[str]  # `resdepth train` options that train from it on the source run's data
    source_config: dict[str, Any]  # the source run's config.json: its protocol, for the command that trains on


def train_args(spec: NetSpec, target_dir: Path, config: dict[str, Any]) -> list[str]:
    args = ["--kind", spec.kind, "--depth", str(spec.depth)]
    shown = known_family(spec.kind).shown_shortcut(spec.shortcut)
    if shown:
        args += ["--shortcut", shown]
    args += [f"--{name}={value}" for name, value in spec.options if name == "width"]  # the one option with a flag
    data_args, _ = config_args(DataConfig, config.get("data", {}), DATA)  # split_seed: no option, the default's
    return [*args, *data_args, "--init", str(target_dir)]


class ConstructionMismatch(RuntimeError):
    """The constructed net does not compute the source's function: a defect, not bad input."""


def construction_name(source_dir: Path, target: NetSpec) -> str:
    """The new net's folder name; the source's name reduced to safe characters, as every name resdepth makes is (a
    folder's name is anyone's: escapes, newlines or bidirectional controls would reach every listing)."""
    return f"{target.label}-from-{file_name(source_dir.name)}"


def construct_from_run(run_dir: Path, depth: int, out: Path, device: torch.device, identity_bn: str = "data",
                       force: bool = False, batch_size: int = EVAL_BATCH) -> Construction:
    """Build the deeper net from a finished run, check it predicts as the source does on every train and test
    image, and write it to out/<kind>-<depth>-from-<run folder>/ (config.json naming its source, checkpoint.pt)."""
    if identity_bn not in IDENTITY_BN:
        raise UserError(f"unknown --identity-bn {identity_bn!r}: use data (measured statistics) or unit")
    config = finished_run(run_dir)
    kind = config.get("kind")
    if isinstance(kind, str) and ":" in kind:  # a family by path: not one construct can deepen; never imported
        raise UserError(f"{run_dir} holds a {kind} net (a family by import path, which resdepth never imports for a "
                        "folder): construct adds identity blocks to the paper's plain and residual nets only")
    spec = NetSpec.from_config(config, str(run_dir / CONFIG_FILE))
    family = family_named_by_folder(spec.kind, str(run_dir / CONFIG_FILE))
    if family.build is None or not isinstance(build_network(spec.kind, family.depths.offset + family.depths.step),
                                              CifarNet):
        raise UserError(f"{run_dir} holds a {spec.kind} net: construct adds identity blocks to the paper's plain and "
                        "residual nets (kind plain or residual), whose blocks can compute the identity")
    family.depths.blocks(depth, spec.kind)  # a valid depth, or a UserError naming the nearest ones
    if depth <= spec.depth:
        raise UserError(f"--depth {depth} is not deeper than the source's {spec.depth} layers: ask for a larger depth "
                        f"of the form 6n+2, e.g. {spec.depth + 6}")
    target_spec = NetSpec(spec.kind, depth, spec.shortcut, spec.num_classes, spec.options)
    target_dir = out / construction_name(run_dir, target_spec)
    if target_dir.exists() and any(target_dir.iterdir()) and not force:
        raise UserError(f"{target_dir} already exists: remove it, choose another --out, or pass --force to "
                        "overwrite it")
    saved = read_saved_net(run_dir)
    dataset = run_dataset(config)
    check_same_data(dataset, saved.checkpoint, run_dir)
    mean = dataset.pixel_mean()
    source = saved.load(device)
    torch.manual_seed(int(config.get("seed", 0)))  # the added blocks' unused weights: reproducible
    needs_statistics = source.layer1[0].identity_needs_statistics
    measured = StageInputs(source) if needs_statistics and identity_bn == "data" else None
    before, moments = {}, unit_moments(source)
    # the training split first: the plain blocks' statistics come from it
    for name, (images, _) in dataset.splits().items():
        before[name] = predict(source, images, mean, device, batch_size)
        if name == "train" and measured:
            moments = measured.moments()
    target, identity = construct_deeper(source.cpu(), depth, moments)
    target = target.to(device)
    comparisons = []
    for name, (images, labels) in dataset.splits().items():
        after = predict(target, images, mean, device, batch_size)
        comparisons.append(SplitComparison(name, len(labels), error(before[name], labels), error(after, labels),
                                           int((before[name] != after).sum())))
    differing = [c for c in comparisons if c.disagreements]
    if differing:
        raise ConstructionMismatch(f"the constructed {target_spec.label} predicts differently from {spec.label} on "
                                   f"{differing[0].disagreements} {differing[0].split} images: nothing written")
    write_construction(target_dir, target, target_spec, config, run_dir, spec, identity, comparisons,
                       identity_bn if needs_statistics else None)
    return Construction(target_dir, spec.label, target_spec.label, comparisons,
                        train_args(target_spec, target_dir, config), config)


def finished_run(run_dir: Path) -> dict[str, Any]:
    """The config of the finished run in run_dir; a UserError for anything else."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE}): name a folder such as "
                        "results/figure6/plain-20-s0")
    runs, _ = load_runs(run_dir)
    run = runs[0]
    if not is_complete(run):
        raise UserError(f"{run_dir} has not finished training (status {run.status}, epoch "
                        f"{int(run.metrics['epoch'].iloc[-1])}): construct from a finished run")
    return run.config


def error(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions != labels.cpu()).float().mean() * 100)


def write_construction(target_dir: Path, target: CifarNet, spec: NetSpec, source_config: dict[str, Any],
                       run_dir: Path, source_spec: NetSpec, identity: str, comparisons: list[SplitComparison],
                       identity_bn: str | None) -> None:
    """config.json (the source's training config at the new depth, and where the net came from) and checkpoint.pt
    (the weights and which net they are). No metrics.csv: this folder is a starting point, not a trained run."""
    construction = {
        "run": str(run_dir.resolve()), "net": source_spec.label, "seed": source_config.get("seed"),
        "placement": "identity blocks at the end of each stage",
        "identity": identity + (f" (identity_bn {identity_bn})" if identity_bn else ""),
        "identity_bn": identity_bn,
    }
    config = {key: value for key, value in source_config.items() if key not in ("resolved", "environment")}
    config.update(depth=spec.depth, init=None)
    config[CONSTRUCTED_KEY] = construction
    config["resolved"] = {"num_classes": spec.num_classes, "params": count_parameters(target),
                          "train_size": next(c.images for c in comparisons if c.split == "train"),
                          "test_size": next(c.images for c in comparisons if c.split == "test")}
    config["errors"] = [asdict(c) for c in comparisons]
    ensure_writable_dir(target_dir)
    buffer = io.BytesIO()
    state = {key: value.cpu() for key, value in target.state_dict().items()}
    torch.save({"model": state, "net": asdict(spec), "construction": construction}, buffer)
    atomic_write_bytes(target_dir / CHECKPOINT_FILE, buffer.getvalue())
    write_config(target_dir, config)
