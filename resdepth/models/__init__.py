"""Named networks: thin builders over the general classes of nets.py (`resdepth.models.plain20`, `resnet56`,
`preact164`, ...), each registered with `@register_model` as timm does, so `list_models("res*")` finds them and
the tests run over every one; `build_model("resnet56")` or `build_model("residual", 56)` builds any net a family
allows (which family a kind names, its depth rule, shortcut options and protocol live in `families.py`); and
the counts of parameters and multiply-adds. The classes are importable from here too.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import UserError
from .families import NAMED_NETWORKS, build_network, check_network, network_meant
from .nets import (
    NINE_N_PLUS_TWO,
    SHORTCUTS,
    SIX_N_PLUS_TWO,
    STAGE_WIDTHS,
    BasicBlock,
    CifarNet,
    DepthRule,
    PreActBlock,
    PreActBottleneck,
    PreActNet,
    ResponseLayer,
    Shortcut,
    ZeroPadShortcut,
    check_classes,
    check_shortcut,
)

__all__ = [  # the classes, re-exported: `from resdepth.models import CifarNet` is the public path
    "NINE_N_PLUS_TWO", "SHORTCUTS", "SIX_N_PLUS_TWO", "STAGE_WIDTHS", "BasicBlock", "CifarNet", "DepthRule",
    "PreActBlock", "PreActBottleneck", "PreActNet", "ResponseLayer", "Shortcut", "ZeroPadShortcut", "build_model",
    "check_classes", "check_shortcut", "count_multiply_adds", "count_parameters", "describe_models", "list_models",
    "register_model",
]


# ---------------------------------------------------------------------------------------------- named builders
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
ModelBuilder = TypeVar("ModelBuilder", bound=Callable[..., nn.Module])


def register_model(builder: ModelBuilder | None = None, *, kind: str | None = None,
                   depth: int | None = None) -> Any:
    """Make a builder findable by its name: build_model("resnet56"), list_models("res*"). `@register_model(kind=...,
    depth=...)` also says which family's net it builds, so that `describe_models` counts it without building it."""
    def register(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[builder.__name__] = builder
        if kind is not None and depth is not None:
            NAMED_NETWORKS[builder.__name__] = (kind, depth)
        return builder
    return register(builder) if builder is not None else register


@register_model(kind="plain", depth=8)
def plain8(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 8 layers (n=1): a test-sized twin."""
    return CifarNet("plain", 8, num_classes, shortcut)


@register_model(kind="residual", depth=8)
def resnet8(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Residual net, 8 layers (n=1): a test-sized twin."""
    return CifarNet("residual", 8, num_classes, shortcut)


@register_model(kind="plain", depth=14)
def plain14(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 14 layers (n=2): a test-sized twin."""
    return CifarNet("plain", 14, num_classes, shortcut)


@register_model(kind="residual", depth=14)
def resnet14(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Residual net, 14 layers (n=2): a test-sized twin."""
    return CifarNet("residual", 14, num_classes, shortcut)


@register_model(kind="plain", depth=20)
def plain20(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 20 layers (n=3): Figure 1 and 6."""
    return CifarNet("plain", 20, num_classes, shortcut)


@register_model(kind="residual", depth=20)
def resnet20(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-20 (n=3): Table 6, 8.75% test error."""
    return CifarNet("residual", 20, num_classes, shortcut)


@register_model(kind="plain", depth=32)
def plain32(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 32 layers (n=5): Figure 6."""
    return CifarNet("plain", 32, num_classes, shortcut)


@register_model(kind="residual", depth=32)
def resnet32(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-32 (n=5): Table 6, 7.51% test error."""
    return CifarNet("residual", 32, num_classes, shortcut)


@register_model(kind="plain", depth=44)
def plain44(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 44 layers (n=7): Figure 6."""
    return CifarNet("plain", 44, num_classes, shortcut)


@register_model(kind="residual", depth=44)
def resnet44(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-44 (n=7): Table 6, 7.17% test error."""
    return CifarNet("residual", 44, num_classes, shortcut)


@register_model(kind="plain", depth=56)
def plain56(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 56 layers (n=9): Figure 1 and 6, higher training error than plain-20."""
    return CifarNet("plain", 56, num_classes, shortcut)


@register_model(kind="residual", depth=56)
def resnet56(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-56 (n=9): Table 6, 6.97% test error."""
    return CifarNet("residual", 56, num_classes, shortcut)


@register_model(kind="plain", depth=110)
def plain110(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 110 layers (n=18): Figure 6, above 60% error in the paper."""
    return CifarNet("plain", 110, num_classes, shortcut)


@register_model(kind="residual", depth=110)
def resnet110(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-110 (n=18): Table 6, 6.43% (best of 5 runs; 6.61 +- 0.16)."""
    return CifarNet("residual", 110, num_classes, shortcut)


@register_model(kind="plain", depth=1202)
def plain1202(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 1202 layers (n=200): no paper result."""
    return CifarNet("plain", 1202, num_classes, shortcut)


@register_model(kind="residual", depth=1202)
def resnet1202(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-1202 (n=200): Table 6, 7.93% test error (overfitting)."""
    return CifarNet("residual", 1202, num_classes, shortcut)


@register_model(kind="preact", depth=20)
def preact20(num_classes: int = 10, shortcut: Shortcut = "B") -> PreActNet:
    """Pre-activation ResNet-20 (basic units, n=3)."""
    return PreActNet(20, num_classes, shortcut=shortcut)


@register_model(kind="preact", depth=56)
def preact56(num_classes: int = 10, shortcut: Shortcut = "B") -> PreActNet:
    """Pre-activation ResNet-56 (basic units, n=9)."""
    return PreActNet(56, num_classes, shortcut=shortcut)


@register_model(kind="preact", depth=110)
def preact110(num_classes: int = 10, shortcut: Shortcut = "B") -> PreActNet:
    """Pre-activation ResNet-110 (basic units, n=18): 2016b Table 2, 6.37% test error (median of 5 runs)."""
    return PreActNet(110, num_classes, shortcut=shortcut)


@register_model(kind="preact-bottleneck", depth=164)
def preact164(num_classes: int = 10, shortcut: Shortcut = "B") -> PreActNet:
    """Pre-activation ResNet-164 (bottleneck units, n=18): 2016b Table 3, 5.46% test error (median of 5 runs)."""
    return PreActNet(164, num_classes, bottleneck=True, shortcut=shortcut)


@register_model(kind="preact-bottleneck", depth=1001)
def preact1001(num_classes: int = 10, shortcut: Shortcut = "B") -> PreActNet:
    """Pre-activation ResNet-1001 (bottleneck units, n=111): 2016b Table 3, 4.92% test error (4.62% with
    mini-batch 64 and 200 epochs, in the authors' Torch code)."""
    return PreActNet(1001, num_classes, bottleneck=True, shortcut=shortcut)


def list_models(pattern: str = "*") -> list[str]:
    """Registered builder names matching a shell-style pattern, e.g. list_models("plain*")."""
    return [name for name in _REGISTRY if fnmatch.fnmatch(name, pattern)]


def build_model(name_or_kind: str, depth: int | None = None, *, num_classes: int = 10,
                shortcut: str | None = None) -> nn.Module:
    """build_model("resnet56") or build_model("residual", 56): a family (see `families.py`: plain, residual,
    preact, preact-bottleneck, module.path:function, an installed one) at any depth its rule allows; shortcut
    None is the family's default (A for plain and residual, B for preact)."""
    if depth is not None:
        return build_network(name_or_kind, depth, num_classes=num_classes, shortcut=shortcut)
    options = {} if shortcut is None else {"shortcut": shortcut}
    if name_or_kind in _REGISTRY:
        return _REGISTRY[name_or_kind](num_classes=num_classes, **options)
    meant = network_meant(name_or_kind)  # resnet26: the residual family at 26 layers
    if meant:
        return build_network(*meant, num_classes=num_classes, shortcut=shortcut)
    raise UserError(f"unknown model {name_or_kind!r}: see `resdepth models`, e.g. resnet56, plain20 or preact164")


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters alike: the paper's counts (ResNet-56: 0.85M)."""
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-adds of one forward pass on one image (the paper's 'FLOPs' convention), from conv and FC shapes."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * kernel
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return total


def describe_models(pattern: str = "*", num_classes: int = 10) -> list[dict[str, object]]:
    """One row per registered model: name, kind, depth, params and forward multiply-adds (millions)."""
    rows = []
    for name in list_models(pattern):
        if name in NAMED_NETWORKS:
            kind, depth = NAMED_NETWORKS[name]
            params, multiply_adds = count_network(kind, depth, num_classes)
        else:  # registered without saying what it is: built
            model = build_model(name, num_classes=num_classes)
            kind, depth, params, multiply_adds = model.kind, model.depth, *count_model(model)
        rows.append({"name": name, "kind": kind, "depth": depth, "params": params, "mflops": multiply_adds / 1e6})
    return rows


def count_model(model: nn.Module) -> tuple[int, int]:
    return count_parameters(model), count_multiply_adds(model)


def count_network(kind: str, depth: int, num_classes: int = 10, shortcut: str | None = None,
                  net_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """(parameters, forward multiply-adds) of a family's net at a depth (and options: width). A built-in family's
    net grows by the same blocks with each block added per stage (n of its depth rule), so at a given width its
    counts are affine in n: those of a deep net follow from the nets at n = 1 and 2, exactly (tested against
    building it), in milliseconds where building the 1202-layer net takes minutes on a CPU. A user's family is
    built and counted."""
    family = check_network(kind, depth, shortcut, net_options)
    if not family.builtin:
        return count_model(build_network(kind, depth, num_classes, shortcut, net_options))
    n = family.depths.blocks(depth, family.name)
    options = tuple(sorted((net_options or {}).items()))
    first, second = (built_counts(kind, family.depths.smallest + k * family.depths.step, num_classes, shortcut,
                                  options) for k in (0, 1))
    return tuple(a + (n - 1) * (b - a) for a, b in zip(first, second, strict=True))  # type: ignore[return-value]


@functools.cache
def built_counts(kind: str, depth: int, num_classes: int, shortcut: str | None,
                 options: tuple[tuple[str, Any], ...] = ()) -> tuple[int, int]:
    """count_model of a built-in family's net, built once per process (`resdepth models` asks for each family's
    smallest nets once per named net)."""
    return count_model(build_network(kind, depth, num_classes, shortcut, dict(options) or None))
