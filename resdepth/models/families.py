"""Network families: the plug-in point for what a depth study trains.

A family is a name, a depth rule (which depths it builds, and the nearest valid ones for an error), a builder
`(depth, num_classes, **options) -> nn.Module`, and what resdepth needs to know about it downstream: the
shortcut options it takes, its plain twin (the same nets without shortcuts), its paper's reference numbers for
`resdepth table`, and the protocol its paper trained it with where that differs from §4.2.

- Built-in families are registered with `@register_family`, as timm registers models: plain and residual
  (§4.2), preact and preact-bottleneck (He et al., *Identity Mappings in Deep Residual Networks*, ECCV 2016).
- A user's family is reached by import path, `--kind mylab.nets:gated` (a builder function or a `Family`), or
  by name when an installed package registers it under the entry-point group `resdepth.families`. Its builder
  is checked on first use: a forward pass on one 32x32 image must give `num_classes` logits.

Everything downstream (folder names, grouping, figure panels, the paper's numbers and protocol, the warm-up)
asks the family here instead of comparing kind strings. Reading results (table, plot) never imports anything:
a run's config.json records its family (`resolved.family`), and only built-in families are looked up by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import importlib.metadata
import json
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..errors import UserError
from .nets import (
    NINE_N_PLUS_TWO,
    SIX_N_PLUS_TWO,
    CifarNet,
    DepthRule,
    LesionBlock,
    PreActNet,
    ResponseLayer,
    check_shortcut,
)

ENTRY_POINT_GROUP = "resdepth.families"
FIGURE6_FAMILIES = ("plain", "residual")  # the paper's Figure 6: the default kinds of a sweep
ANY_DEPTH = DepthRule()  # a bare builder's: any depth from 1 (the builder may refuse some itself)
PATH_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


# ---------------------------------------------------------------------------------------------- what a family is
@dataclass(frozen=True)
class PaperNumber:
    """One CIFAR test error (%) a paper reports for a family at a depth. statistic: what test_error is over the
    paper's runs ('one run', 'best of 5 runs', 'median of 5 runs'; '' not said); `mean` (and `std`) where it gives
    them. Like is compared with like: a median with our median over seeds, a mean with our mean; a single run, as
    the nearest thing, with our mean."""

    depth: int
    test_error: float
    mean: float | None = None
    std: float | None = None
    dataset: str = "cifar10"
    batch_size: int = 128
    statistic: str = ""
    # How the paper's runs trained where that is not the family's protocol (which resdepth runs): a run is never
    # compared with such a number as a like-for-like reproduction, its row always marked with this difference
    trained: str = ""

    @property
    def is_median(self) -> bool:
        return self.statistic.startswith("median")

    @property
    def compared(self) -> float:
        """The paper's value that ours stands beside: its median, else its mean where it gives one, else its number."""
        return self.mean if self.mean is not None and not self.is_median else self.test_error

    @property
    def ours(self) -> str:
        """Our statistic over seeds that is compared with it: median or mean."""
        return "median" if self.is_median else "mean"

    @property
    def compared_words(self) -> str:
        """What `compared` is: 'median of 5 runs', 'mean of 5 runs' (of a 'best of 5 runs' number), 'one run'."""
        if self.mean is not None and not self.is_median:
            return self.statistic.replace("best", "mean") if self.statistic.startswith("best") else "mean of its runs"
        return self.statistic or "as given"

    def shown(self) -> str:
        """As the paper prints it: '6.43 (6.61±0.16)' where it gives a mean and std, else '8.75'."""
        if self.mean is None:
            return f"{self.test_error:.2f}"
        spread = f"±{self.std:.2f}" if self.std is not None else ""
        return f"{self.test_error:.2f} ({self.mean:.2f}{spread})"


@dataclass(frozen=True)
class PaperReference:
    """A paper's table of test errors for a family. label: the table's column header says 'paper <label>' when it
    is the only source shown; citation: the note under the table."""

    label: str
    citation: str
    numbers: tuple[PaperNumber, ...]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(n.dataset for n in self.numbers))

    def depths(self, dataset: str | None = None) -> list[int]:
        """The depths it has numbers for, in its table's order: on that dataset, or (None) on any."""
        return list(dict.fromkeys(n.depth for n in self.numbers if dataset is None or n.dataset == dataset))

    def lookup(self, dataset: str, depth: int, batch_size: int = 128) -> PaperNumber | None:
        """The number for that depth, on that dataset if the paper has it (else CIFAR-10: the run's dataset is then
        a named protocol difference), at that mini-batch if the paper reports one (else its default, 128)."""
        where = dataset if dataset in self.datasets else "cifar10"
        found = [n for n in self.numbers if n.dataset == where and n.depth == depth]
        return next((n for n in found if n.batch_size == batch_size), next(iter(found), None))


@dataclass(frozen=True)
class Protocol:
    """How the family's paper trained it on CIFAR where that differs from §4.2. Every family otherwise trains as
    §4.2: SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k of 64k iterations.

    warmup: which nets `--warmup auto` warms up: deep (those of `--warmup-min-depth` (110) layers and more: §4.2's
    ResNet-110 rule), all, or none. The warm-up runs at lr 0.01 until the training error is below
    `warmup_until_error`, for at most `warmup_max_iterations`; fixed_warmup: the paper's warm-up is exactly that
    many iterations (no threshold). shortcut: the shortcut of the paper's numbers (None: not checked)."""

    summary: str
    warmup: str = "deep"
    warmup_until_error: float = 80.0
    warmup_max_iterations: int = 4_000
    fixed_warmup: bool = False
    warmup_words: str = "lr 0.01 until training error < 80%"
    no_warmup_words: str = "none below 110 layers nor for plain nets"
    shortcut: str | None = "A"

    def warms_up(self, depth: int, min_depth: int) -> bool:
        """Whether `--warmup auto` warms up a net of this depth."""
        return self.warmup == "all" or (self.warmup == "deep" and depth >= min_depth)


@dataclass(frozen=True)
class NetOption:
    """A network option a family declares: its builder takes it as a keyword argument, runs set it in their config's
    `options` (`--width` for width, `[train.options]` in sweep files) and sweeps put it on the grid
    (`--grid width=1,2,4`). Its values have the type of its default; minimum and maximum: the range of a number
    (a maximum refuses, before anything is allocated, a value that would fill the memory)."""

    name: str
    default: int | float | str | bool
    help: str
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: Any, family: str) -> Any:
        """value if it fits the option (an int for a float option becomes a float), else one line saying why."""
        kind = type(self.default)
        fits = (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))) or \
            (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not fits:
            raise UserError(f"{family} nets' option {self.name} takes a {kind.__name__}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise UserError(f"{family} nets' option {self.name} must be at least {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise UserError(f"{family} nets' option {self.name} must be at most {self.maximum:g}, got {value!r}")
        return kind(value)


# Zagoruyko and Komodakis 2016 (Wide Residual Networks): stage widths 16k/32k/64k; k = 1 is the paper's nets
WIDTH = NetOption("width", 1, "Width multiplier k: stages of 16k/32k/64k filters, as Wide ResNets (1: the paper's "
                              "16/32/64).", minimum=1, maximum=32)  # WRN's widest CIFAR net is k = 10


@dataclass(frozen=True)
class FamilySource:
    """What produced a family's networks, as config.json records it: the builder's module and attribute, and the
    installed distribution (and version) that holds the module, when there is one."""

    module: str
    attribute: str
    distribution: str | None = None
    version: str | None = None
    file: str | None = None  # the module's file when no installed distribution holds it

    def __str__(self) -> str:
        where = f"{self.module}:{self.attribute}"
        if self.distribution:
            return f"{where} ({self.distribution} {self.version})"
        return f"{where} ({self.file})" if self.file else where


SECTION_4_2 = Protocol(summary="§4.2; a warm-up of lr 0.01 until training error < 80% for 110+ layers "
                                "(at most 4,000 iterations); batch 128, there on 2 GPUs: BN statistics over 64 images")
PLAIN_PROTOCOL = Protocol(summary="§4.2; no warm-up (the paper warms up residual nets only)", warmup="none")
PREACT_PROTOCOL = Protocol(
    summary="2016b appendix: a warm-up of lr 0.01 for the first 400 iterations at every depth, then §4.2's schedule "
            "(batch 128, there on 2 GPUs: BN statistics over 64 images)",
    warmup="all", warmup_until_error=0.0, warmup_max_iterations=400, fixed_warmup=True,
    warmup_words="lr 0.01 for the first 400 iterations", no_warmup_words="none", shortcut=None)
USER_PROTOCOL = dataclasses.replace(SECTION_4_2, summary="§4.2 (resdepth's defaults), warm-up as residual nets "
                                                          "(110+ layers)")


@dataclass(frozen=True)
class Family:
    """A network family. build: `(depth, num_classes, **options) -> nn.Module`, None for a family known only from a
    results folder's record. shortcuts: the values `--shortcut` may take, the first being the default (empty:
    the family takes none, and the builder gets no shortcut option). net_options: the other keyword options its
    builder takes (built-in families: width), each with its default."""

    name: str
    build: Callable[..., nn.Module] | None = field(default=None, compare=False, repr=False)
    depths: DepthRule = ANY_DEPTH
    shortcuts: tuple[str, ...] = ()
    twin: str | None = None
    reference: PaperReference | None = None
    no_reference: str = ""  # why its paper gives no table (plain nets: only curves); '' for none known
    protocol: Protocol = USER_PROTOCOL
    summary: str = ""
    builtin: bool = False
    source: FamilySource | None = None
    # The version of the networks it builds: raised when a fix changes what a net computes, so that runs of the old
    # nets are never averaged with, resumed as, or compared like runs of the new (config.json records it).
    version: int = 1
    # Its nets are a stem layer, this many stages of equally many weight layers, and the FC (the built-in ones: 3);
    # 0 where it does not say (a user's family): figures then draw no stage boundaries.
    stages: int = 0
    net_options: tuple[NetOption, ...] = ()

    @property
    def default_shortcut(self) -> str:
        return self.shortcuts[0] if self.shortcuts else ""

    @property
    def slug(self) -> str:
        """The name as folder and file names use it: mylab.nets:gated -> mylab.nets.gated."""
        return file_name(self.name)

    def stage_boundaries(self, depth: int) -> list[float]:
        """Where its stages end along the weight layers (1 the stem, depth the FC), halfway between two layers:
        between the stages and before the FC (2n layers a stage for 6n+2 nets, 3n for 9n+2 ones)."""
        if not self.stages or (depth - 2) % self.stages:
            return []
        per_stage = (depth - 2) // self.stages
        return [1.5 + k * per_stage for k in range(1, self.stages + 1)]

    def shown_shortcut(self, shortcut: str | None) -> str:
        """The shortcut where names show it: '' for the family's default and for families that take none."""
        return "" if not self.shortcuts or not shortcut or shortcut == self.default_shortcut else shortcut

    def variant(self, shortcut: str | None) -> str:
        """The family as figures name a run of it: 'residual', 'residual-B' for its other shortcut."""
        shown = self.shown_shortcut(shortcut)
        return f"{self.name}-{shown}" if shown else self.name

    def shortcut_for(self, given: str | None) -> str | None:
        """The shortcut a run of this family uses: the given one (checked), else the family's default; None for a
        family that takes none: what was given stays as it is, ignored (a plain net in a sweep of residual-B nets
        keeps the sweep's B, as config.json files of earlier versions hold it)."""
        if given is None:
            return self.default_shortcut or None
        if given in self.shortcuts:
            return given
        check_shortcut(given)
        if not self.shortcuts:
            return given
        raise UserError(f"{self.name} nets take --shortcut {' or '.join(self.shortcuts)}, not {given}: leave "
                        f"--shortcut out for its default ({self.default_shortcut}), or sweep it apart")

    def options(self, shortcut: str | None, net_options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The builder's keyword options: the shortcut where it takes one, and its declared options (checked)."""
        shortcut_option = {} if not self.shortcuts else {"shortcut": self.shortcut_for(shortcut)}
        return {**shortcut_option, **self.resolve_options(net_options or {})}

    def net_option(self, name: str) -> NetOption | None:
        return next((o for o in self.net_options if o.name == name), None)

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The given network options, each checked against the family's declaration, without those at their default
        (a config saying width 1 is the same run as one that does not say): what config.json keeps."""
        resolved = {}
        for name, value in given.items():
            declared = self.net_option(name)
            if declared is None:
                takes = ", ".join(o.name for o in self.net_options) or "none"
                raise UserError(f"{self.name} nets take no option {name!r} (they take: {takes}; see `resdepth models`)")
            value = declared.check(value, self.name)
            if value != declared.default:
                resolved[name] = value
        return dict(sorted(resolved.items()))

    def option_values(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every declared option's value for a run that gives these: its own, else the default."""
        return {o.name: given.get(o.name, o.default) for o in self.net_options}


# ---------------------------------------------------------------------------------------------- built-in families
_BUILTIN: dict[str, Family] = {}


def register_family(name: str, *, depths: DepthRule, **details: Any) -> Callable[[Callable[..., nn.Module]],
                                                                                 Callable[..., nn.Module]]:
    """Register the decorated builder as the built-in family `name` (details: the other Family fields)."""
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        source = FamilySource(builder.__module__, builder.__name__, "resdepth", __version__)
        _BUILTIN[name] = Family(name, builder, depths, builtin=True, source=source, net_options=(WIDTH,), **details)
        return builder
    return decorate


# He et al. 2016 (CVPR), Table 6: CIFAR-10 test error (%) of the residual nets (option A, 64k iterations). One run
# per depth, except 110 layers: 6.43 is the best of 5 runs, whose mean and std follow.
ONE_RUN = "one run"
TABLE6 = PaperReference("Table 6", "He et al. 2016, Table 6 (CIFAR-10, one run per depth; 110 layers: best of 5 "
                                   "runs (6.61 ± 0.16))", (
    PaperNumber(20, 8.75, statistic=ONE_RUN), PaperNumber(32, 7.51, statistic=ONE_RUN),
    PaperNumber(44, 7.17, statistic=ONE_RUN), PaperNumber(56, 6.97, statistic=ONE_RUN),
    PaperNumber(110, 6.43, mean=6.61, std=0.16, statistic="best of 5 runs"),
    PaperNumber(1202, 7.93, statistic=ONE_RUN)))
# He et al. 2016b (Identity Mappings, ECCV), Tables 2-4, full pre-activation units: medians of 5 runs (mean ± std
# where Table 4 gives them); the 1001-layer net also at mini-batch 64, from the authors' Torch re-implementation
# (resnet-1k-layers: fb.resnet.torch, 200 epochs, lr /10 at epochs 81 and 122), not the paper's 64k iterations.
AUTHORS_TORCH_CODE = "the authors' Torch code: 200 epochs, lr /10 at epochs 81 and 122, no warm-up"
IDENTITY_MAPPINGS = "He et al. 2016b (Identity Mappings), Tables 2-4, pre-activation units (median of 5 runs)"
MEDIAN_OF_5 = "median of 5 runs"
PREACT_TABLE = PaperReference("2016b", IDENTITY_MAPPINGS + "; basic units: 110 layers, 6.37", (
    PaperNumber(110, 6.37, statistic=MEDIAN_OF_5),))
PREACT_BOTTLENECK_TABLE = PaperReference("2016b", IDENTITY_MAPPINGS + "; bottleneck units: 164 layers, 5.46; 1001 "
                                                  "layers, 4.92 (4.89±0.14), 4.62 (4.69±0.20) at mini-batch 64", (
    PaperNumber(164, 5.46, statistic=MEDIAN_OF_5), PaperNumber(1001, 4.92, mean=4.89, std=0.14, statistic=MEDIAN_OF_5),
    PaperNumber(1001, 4.62, mean=4.69, std=0.20, batch_size=64, statistic=MEDIAN_OF_5, trained=AUTHORS_TORCH_CODE),
    PaperNumber(164, 24.33, dataset="cifar100", statistic=MEDIAN_OF_5),
    PaperNumber(1001, 22.71, mean=22.68, std=0.22, dataset="cifar100", statistic=MEDIAN_OF_5)))


@register_family("plain", depths=SIX_N_PLUS_TWO, stages=3, protocol=PLAIN_PROTOCOL,
                 no_reference="the paper gives plain nets only as curves (Figure 6), in no table",
                 summary="§4.2's plain net: 3x3 convs with BN and ReLU, no shortcuts")
def plain(depth: int, num_classes: int = 10, width: int = 1) -> nn.Module:
    return CifarNet("plain", depth, num_classes, width=width)


@register_family("residual", depths=SIX_N_PLUS_TWO, stages=3, shortcuts=("A", "B"), twin="plain", reference=TABLE6,
                 protocol=SECTION_4_2, summary="§4.2's ResNet: the plain net with a shortcut around every two convs")
def residual(depth: int, num_classes: int = 10, shortcut: str = "A", width: int = 1) -> nn.Module:
    return CifarNet("residual", depth, num_classes, shortcut, width)  # type: ignore[arg-type]


# The paper says of its basic pre-activation ResNet-110 only that it follows [1] (option A there); the authors' code
# (resnet-1k-layers) holds bottleneck nets only, which project. resdepth's default is the projection of the common
# PyTorch port, one reading among two, so the table does not count the shortcut as a difference.
# version 2: the first unit's identity shortcut takes the activated stem output, as 2016b and the authors' code
# (version 1 added the raw stem output; same parameters, another function)
@register_family("preact", depths=SIX_N_PLUS_TWO, stages=3, shortcuts=("B", "A"), twin="plain",
                 reference=PREACT_TABLE,
                 protocol=PREACT_PROTOCOL, version=2, summary="2016b's full pre-activation ResNet, basic units "
                 "(BN-ReLU-conv x2), projection shortcuts")
def preact(depth: int, num_classes: int = 10, shortcut: str = "B", width: int = 1) -> nn.Module:
    return PreActNet(depth, num_classes, bottleneck=False, shortcut=shortcut, width=width)  # type: ignore[arg-type]


@register_family("preact-bottleneck", depths=NINE_N_PLUS_TWO, stages=3, shortcuts=("B",),
                 reference=PREACT_BOTTLENECK_TABLE,
                 protocol=dataclasses.replace(PREACT_PROTOCOL, shortcut="B"),
                 summary="2016b's ResNet-164/1001: pre-activation bottleneck units (1x1, 3x3, 1x1 to 4x), "
                         "projection shortcuts")
def preact_bottleneck(depth: int, num_classes: int = 10, shortcut: str = "B", width: int = 1) -> nn.Module:
    return PreActNet(depth, num_classes, bottleneck=True, shortcut=shortcut, width=width)  # type: ignore[arg-type]


def builtin_families() -> list[Family]:
    return list(_BUILTIN.values())


def known_family(kind: str) -> Family:
    """A built-in family by name, else a bare one of that name: for labels drawn from results, which never import
    a user's family."""
    return _BUILTIN.get(kind) or _LOADED.get(kind) or Family(kind)


def is_plain_twin(kind: str) -> bool:
    """Whether kind is another built-in family's plain twin (figures draw it dashed beside its twin)."""
    return any(family.twin == kind for family in _BUILTIN.values())


def family_order(kind: str) -> int:
    """Tables and legends list the built-in families in their order (plain first), then the others."""
    names = list(_BUILTIN)
    return names.index(kind) if kind in names else len(names)


# ---------------------------------------------------------------------------------------------- finding a family
_LOADED: dict[str, Family] = {}


def get_family(kind: str) -> Family:
    """The family a --kind names: a built-in one, module.path:attribute, or an installed entry point. Loading a
    user's family runs its module (that is what training it does); reading results never calls this for them."""
    if kind in _BUILTIN:
        return _BUILTIN[kind]
    if kind not in _LOADED:
        _LOADED[kind] = load_by_path(kind) if ":" in kind else load_entry_point(kind)
    return _LOADED[kind]


def family_named_by_folder(kind: Any, where: str) -> Family:
    """The family a results folder's file names (config.json, a checkpoint, sweep.json), to build or train its nets:
    a built-in one, one an installed package registers (entry point), or one the user named on this command line
    (already loaded by `--kind`). A module path the folder names is never imported: whoever can write the folder
    would choose the code."""
    if not isinstance(kind, str) or not kind:
        raise UserError(f"{where}: kind must be a family name, got {kind!r}")
    if kind in _BUILTIN or kind in _LOADED or ":" not in kind:
        return get_family(kind)
    raise UserError(f"{where} names the family {kind} by import path; resdepth never imports code that a results "
                    f"folder names: if you trust that module, name it yourself with --kind {kind}")


def load_named_families(kinds: list[str]) -> None:
    """Load the families the user named on the command line, so that a folder naming the same ones may use them."""
    for kind in kinds:
        get_family(kind)


def forget_loaded() -> None:
    """Drop the user families loaded so far (tests, and a long-lived process whose packages changed)."""
    _LOADED.clear()
    _CHECKED.clear()


def load_by_path(spec: str) -> Family:
    if not PATH_SPEC.match(spec):
        raise UserError(f"--kind {spec!r} is not a family path: write module.path:function, e.g. mylab.nets:gated")
    module_name, attribute = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever a user's module raises on import, said in one line
        raise UserError(f"cannot import family {spec}: {last_line(exc)}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(f"cannot load family {spec}: module {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    source = FamilySource(module_name, attribute, *distribution_of(module_name), file=getattr(module, "__file__", None))
    return as_family(spec, target, source)


def load_entry_point(name: str) -> Family:
    found = [ep for ep in installed_entry_points() if ep.name == name]
    if not found:
        raise UserError(unknown_kind_message(name))
    if len(found) > 1:
        owners = ", ".join(f"{ep.value} ({dist_label(ep)})" for ep in found)
        raise UserError(f"family {name!r} is registered by several installed packages: {owners}; use one by path")
    entry = found[0]
    try:
        target = entry.load()
    except Exception as exc:  # noqa: BLE001 - whatever an installed package raises on import, said in one line
        raise UserError(f"cannot load family {name} ({entry.value}, {dist_label(entry)}): {last_line(exc)}") from None
    module_name, _, attribute = entry.value.partition(":")
    dist = getattr(entry, "dist", None)
    source = FamilySource(module_name.strip(), attribute.strip(), dist.name if dist else None,
                          dist.version if dist else None)
    return as_family(name, target, source)


def as_family(kind: str, target: Any, source: FamilySource) -> Family:
    """A loaded object as a family named `kind`: a Family as declared, or a bare builder (any depth >= 1)."""
    if isinstance(target, Family):
        if target.protocol.warmup not in ("deep", "all", "none"):
            raise UserError(f"family {kind}: Protocol(warmup={target.protocol.warmup!r}) must be deep, all or none")
        if target.build is None:
            raise UserError(f"family {kind} ({source}) has no builder: give Family(..., build=your_function)")
        summary = target.summary or first_doc_line(target.build)
        return dataclasses.replace(target, name=kind, builtin=False, source=source, summary=summary)
    if callable(target) and not isinstance(target, type):
        return Family(kind, target, summary=first_doc_line(target), source=source)
    where = "" if kind == f"{source.module}:{source.attribute}" else f" ({source})"
    raise UserError(f"family {kind}{where} is a {type(target).__name__}, not a network builder: point it at a "
                    "function (depth, num_classes, **options) -> nn.Module or a resdepth.families.Family")


def first_doc_line(builder: Any) -> str:
    lines = (getattr(builder, "__doc__", None) or "").strip().splitlines()
    return lines[0] if lines else ""


def file_name(name: str) -> str:
    """A family or variant name as folder and file names use it: mylab.nets:gated -> mylab.nets.gated."""
    return re.sub(r"[^A-Za-z0-9._-]+", ".", name)


def installed_entry_points() -> list[Any]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def dist_label(entry: Any) -> str:
    dist = getattr(entry, "dist", None)
    return f"{dist.name} {dist.version}" if dist else "an installed package"


def distribution_of(module_name: str) -> tuple[str | None, str | None]:
    """The installed distribution holding a module and its version, or (None, None) for a module on the path."""
    top = module_name.split(".")[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist_name, importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def last_line(exc: BaseException) -> str:
    """An exception as the last line of its traceback: 'ModuleNotFoundError: No module named mylab'."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def known_names() -> list[str]:
    return list(_BUILTIN) + sorted({ep.name for ep in installed_entry_points()} - set(_BUILTIN))


# The named networks' prefixes (resnet56 is the residual family at depth 56), and the family and depth of each
# named network `resdepth models` lists (models.register_model fills it): a network's name is not a --kind.
NAME_PREFIXES = {"resnet": "residual", "plain": "plain", "preact": "preact"}
NAMED_NETWORKS: dict[str, tuple[str, int]] = {}


def network_meant(name: str) -> tuple[str, int] | None:
    """(family, depth) of a network name such as resnet20 or preact1001, or None when name is not one."""
    if name in NAMED_NETWORKS:
        return NAMED_NETWORKS[name]
    prefix = name.rstrip("0123456789")
    if prefix in NAME_PREFIXES and name != prefix:
        return NAME_PREFIXES[prefix], int(name[len(prefix):])
    return None


def unknown_kind_message(kind: str) -> str:
    names = known_names()
    meant = network_meant(kind)
    if meant:
        family, depth = meant
        return (f"--kind {kind} names a network, not a family: it is the {family} family at depth {depth}; give "
                f"--kind {family} --depth {depth} (a sweep: --kinds {family} --depths {depth})")
    alias = NAME_PREFIXES.get(kind.lower())
    close = [alias] if alias else difflib.get_close_matches(kind, names, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (f"unknown kind {kind!r}: {hint}the families are {', '.join(names)} (see `resdepth models`), or a "
            "builder by path, module.path:function")


# ---------------------------------------------------------------------------------------------- checking and building
# Over 3x the paper's deepest net (ResNet-1202): a deeper one named by a folder's file or a typo is refused before
# anything is allocated (a 6,000,002-layer net would fill the memory while it is built).
MAX_DEPTH = 4_000


def check_network(kind: str, depth: int, shortcut: str | None = None,
                  net_options: dict[str, Any] | None = None) -> Family:
    """Refuse what the family cannot build, without building it (a 1001-layer net has 10M parameters)."""
    if depth > MAX_DEPTH:
        raise UserError(f"depth {depth:,} is deeper than resdepth builds (at most {MAX_DEPTH:,} layers; the paper's "
                        "deepest is 1202): choose a smaller depth")
    family = get_family(kind)
    family.depths.blocks(depth, family.name)
    family.options(shortcut, net_options)
    return family


_CHECKED: set[tuple[str, int, str, int]] = set()


def build_network(kind: str, depth: int, num_classes: int = 10, shortcut: str | None = None,
                  net_options: dict[str, Any] | None = None) -> nn.Module:
    """The family's network; a user family's is checked the first time each (depth, classes, options) is built.
    net_options: the family's declared options (width, ...) where not their defaults."""
    family = check_network(kind, depth, shortcut, net_options)
    assert family.build is not None
    options = family.options(shortcut, net_options)
    try:
        model = family.build(depth, num_classes, **options)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's builder may raise anything: one line naming the family
        raise UserError(f"family {family.name} could not build its {depth}-layer net: {last_line(exc)}") from None
    key = (family.name, depth, json.dumps(options, sort_keys=True), num_classes)
    if not family.builtin and key not in _CHECKED:
        check_output(family, depth, num_classes, model)
        _CHECKED.add(key)
    return model


def check_builds(kind: str, depth: int, shortcut: str | None, num_classes: int,
                 net_options: dict[str, Any] | None = None) -> None:
    """Build and check a user family's net once per process before anything runs (a sweep's planning); built-in
    families are tested, not built again here."""
    family = check_network(kind, depth, shortcut, net_options)
    options = json.dumps(family.options(shortcut, net_options), sort_keys=True)
    if not family.builtin and (family.name, depth, options, num_classes) not in _CHECKED:
        build_network(kind, depth, num_classes, shortcut, net_options)


def check_output(family: Family, depth: int, num_classes: int, model: Any) -> None:
    """One 32x32 image through the net in eval mode (no statistics change, no random numbers drawn) must give
    num_classes logits, and the net must have something to train."""
    where = f"family {family.name} at depth {depth}"
    if not isinstance(model, nn.Module):
        raise UserError(f"{where}: the builder returned a {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"{where}: the network has no trainable parameters")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    except Exception as exc:  # noqa: BLE001 - a user's network may fail in any way: one line naming it
        raise UserError(f"{where}: a forward pass on one 32x32 image failed: {last_line(exc)}") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (1, num_classes):
        raise UserError(f"{where}: one 32x32 image gives {shape}, not {num_classes} logits (shape (1, {num_classes})): "
                        "the builder must use its num_classes argument for the last layer")


class NoResponseLayers(UserError):
    """A network that does not say which layers' outputs are its responses: Figure 7 cannot be drawn for it."""


def response_layers(model: nn.Module) -> list[ResponseLayer]:
    """The network's layers whose outputs are their responses (Figure 7), in forward order: the model's own
    `response_layers()` (every built-in network has one; see nets.py for what each returns)."""
    if not hasattr(model, "response_layers"):
        raise NoResponseLayers(f"{type(model).__name__} has no response_layers() method: add one returning, in forward "
                        "order, models.ResponseLayer(name, stage, module) for each module whose output is a layer's "
                        "response (e.g. the BN after each conv)")
    return list(model.response_layers())


def lesion_blocks(model: nn.Module, kind: str) -> list[LesionBlock]:
    """The network's blocks for a lesion study (Veit et al. 2016), in forward order: what each is and what is left
    when it is deleted (the model's own `lesion_blocks()`; see nets.py). A network that cannot say is refused."""
    if not hasattr(model, "lesion_blocks"):
        raise UserError(f"{kind} nets cannot be lesioned: their network ({type(model).__name__}) has no "
                        "lesion_blocks() method saying what a block is and what is left without it")
    return list(model.lesion_blocks())


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the network's weighted layers in forward order: its own `weight_layers()`, else every
    conv and linear layer it holds (a user family's network need not say)."""
    if hasattr(model, "weight_layers"):
        return list(model.weight_layers())
    return [(name, module) for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


# ---------------------------------------------------------------------------------------------- records in config.json
def family_record(kind: str) -> dict[str, Any]:
    """What config.json keeps of a run's family (resolved.family): its source, and all that tables and figures
    need of it, so that reading results never imports the family's module."""
    family = get_family(kind)
    record = dataclasses.asdict(dataclasses.replace(family, build=None))
    record.pop("build")
    record["depths"] = {"step": family.depths.step, "offset": family.depths.offset, "rule": str(family.depths)}
    return record


def family_of_run(config: dict[str, Any]) -> Family:
    """A run's family as its config.json says, without importing anything: a built-in one by name, else the
    recorded one (older runs and hand-made configs without a record: a bare family of that name)."""
    kind = str(config.get("kind", "unknown"))
    if kind in _BUILTIN:
        return _BUILTIN[kind]
    record = config.get("resolved", {}).get("family") if isinstance(config.get("resolved"), dict) else None
    try:
        return from_record(kind, record) if isinstance(record, dict) else Family(kind)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        return Family(kind)  # a hand-edited record: the name is still the family


def network_version(record: Any) -> int:
    """The network version a config.json's family record names; 1 for records written before versions were."""
    version = record.get("version", 1) if isinstance(record, dict) else 1
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


def recorded_version(config: dict[str, Any]) -> int:
    """The version of the networks a run trained, as its config.json says (resolved.family.version; 1 if none)."""
    resolved = config.get("resolved")
    return network_version(resolved.get("family") if isinstance(resolved, dict) else None)


def from_record(kind: str, record: dict[str, Any]) -> Family:
    depths = record.get("depths") or {}
    reference = record.get("reference")
    if reference:
        numbers = tuple(PaperNumber(**number) for number in reference["numbers"])
        reference = PaperReference(reference["label"], reference["citation"], numbers)
    source = FamilySource(**record["source"]) if record.get("source") else None
    return Family(kind, None, DepthRule(int(depths.get("step", 1)), int(depths.get("offset", 0))),
                  tuple(record.get("shortcuts") or ()), record.get("twin"), reference,
                  record.get("no_reference") or "",
                  Protocol(**record["protocol"]) if record.get("protocol") else USER_PROTOCOL,
                  record.get("summary") or "", False, source, network_version(record),
                  int(record.get("stages") or 0),
                  tuple(NetOption(**option) for option in record.get("net_options") or ()))


# ---------------------------------------------------------------------------------------------- listing
def list_families(pattern: str = "*") -> list[Family | str]:
    """The built-in and installed families whose names match; an installed one that fails to load is given as the
    line saying why (listing never stops at one broken package)."""
    if ":" in pattern and not any(c in pattern for c in "*?["):
        return [get_family(pattern)]  # a family path: loaded, and its errors are the command's
    found: list[Family | str] = [f for f in _BUILTIN.values() if fnmatch.fnmatch(f.name, pattern)]
    for name in sorted({ep.name for ep in installed_entry_points()} - set(_BUILTIN)):
        if fnmatch.fnmatch(name, pattern):
            try:
                found.append(get_family(name))
            except UserError as exc:
                found.append(f"{name}: {exc}")
    return found


def describe_family(family: Family) -> dict[str, str]:
    """One row of `resdepth models`' family table."""
    shortcuts = ", ".join(s + (" (default)" if i == 0 and len(family.shortcuts) > 1 else "")
                          for i, s in enumerate(family.shortcuts)) or "-"
    is_twin = any(other.twin == family.name for other in _BUILTIN.values())
    twin = family.twin or ("(is one)" if is_twin else "none")
    if family.reference:
        paper = f"{family.reference.label}: {', '.join(map(str, family.reference.depths()))}"
    else:
        paper = "-"
    source = f"resdepth {__version__}" if family.builtin else str(family.source or "-")
    options = ", ".join(f"{o.name} (default {o.default})" for o in family.net_options) or "-"
    return {"family": family.name, "depths": str(family.depths), "shortcuts": shortcuts, "options": options,
            "plain twin": twin, "paper numbers": paper, "protocol": family.protocol.summary, "source": source,
            "summary": family.summary}


def example_depths(family: Family) -> list[int]:
    """Depths `resdepth models` builds a family at when no named network shows it: its paper's, else 20 and 56 (or
    the nearest depths its rule allows)."""
    if family.reference:
        return family.reference.depths()
    return list(dict.fromkeys(depth for wanted in (20, 56) for depth in family.depths.nearest(wanted)[-1:]))
