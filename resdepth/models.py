"""Plain and residual CIFAR networks of depth 6n+2, as defined in He et al. 2016, section 4.2.

One general class (`CifarNet`) and thin named builders (`resdepth.models.plain20`, `resnet56`, ...), each
registered with `@register_model` as timm does, so `list_models("res*")` finds them and the tests run over every
one. Module names follow the common option-A CIFAR ResNet layout (conv1, bn1, layer1..3 with conv1/bn1/conv2/bn2
per block, linear) so published weights load in order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

Kind = Literal["plain", "residual"]
Shortcut = Literal["A", "B"]
KINDS: tuple[str, ...] = ("plain", "residual")
SHORTCUTS: tuple[str, ...] = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)  # §4.2: 16/32/64 filters on 32/16/8 feature maps


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels, half on each side (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_front, self.pad_back))


def projection_shortcut(in_planes: int, out_planes: int) -> nn.Module:
    """Option B: a strided 1x1 projection with BN, used only where the shape changes."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; the residual kind adds the shortcut before the last ReLU, the plain kind does not."""

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool, shortcut: Shortcut):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or in_planes != planes):
            self.shortcut = (ZeroPadShortcut(in_planes, planes) if shortcut == "A" else
                             projection_shortcut(in_planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarNet(nn.Module):
    """The §4.2 network: a 3x3 stem conv, 3 stages of n blocks (2n layers each), global average pool, FC."""

    def __init__(self, kind: Kind, depth: int, num_classes: int = 10, shortcut: Shortcut = "A"):
        super().__init__()
        check_network(kind, depth, shortcut)
        if num_classes < 1:
            raise UserError(f"--num-classes must be a positive integer (10 for CIFAR-10), got {num_classes}")
        n = blocks_per_stage(depth)
        self.kind, self.depth, self.shortcut_option = kind, depth, shortcut
        residual = kind == "residual"
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        stages = []
        for index, planes in enumerate(STAGE_WIDTHS):
            blocks = []
            for block in range(n):
                stride = 2 if index > 0 and block == 0 else 1  # §4.2: subsampling by stride-2 convs
                blocks.append(BasicBlock(in_planes, planes, stride, residual, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        self.apply(he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def he_init(module: nn.Module) -> None:
    # He et al. 2015 ("MSRA") init, the paper's [13]; BN starts at weight 1, bias 0 (PyTorch default).
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def blocks_per_stage(depth: int) -> int:
    """n for depth 6n+2; any other depth is refused with the nearest valid depths."""
    if depth >= 8 and (depth - 2) % 6 == 0:
        return (depth - 2) // 6
    below = max(8, depth - (depth - 2) % 6)
    above = below + 6 if below <= depth else below
    nearest = sorted({below, above} if depth >= 8 else {8})
    raise UserError(f"depth {depth} is not of the form 6n+2 (n >= 1): try {' or '.join(map(str, nearest))}")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")


def check_network(kind: str, depth: int, shortcut: str) -> None:
    """Refuse what CifarNet cannot build, without building it (a 1202-layer net has 19M parameters)."""
    check_kind(kind)
    blocks_per_stage(depth)
    if shortcut not in SHORTCUTS:
        raise UserError(f"unknown shortcut {shortcut!r}: use A (zero-padding, the paper's default) or B (projection)")


_REGISTRY: dict[str, Callable[..., CifarNet]] = {}
ModelBuilder = TypeVar("ModelBuilder", bound=Callable[..., CifarNet])


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Make a builder findable by its name: build_model("resnet56"), list_models("res*")."""
    _REGISTRY[builder.__name__] = builder
    return builder


@register_model
def plain8(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 8 layers (n=1): a test-sized twin."""
    return CifarNet("plain", 8, num_classes, shortcut)


@register_model
def resnet8(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Residual net, 8 layers (n=1): a test-sized twin."""
    return CifarNet("residual", 8, num_classes, shortcut)


@register_model
def plain14(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 14 layers (n=2): a test-sized twin."""
    return CifarNet("plain", 14, num_classes, shortcut)


@register_model
def resnet14(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Residual net, 14 layers (n=2): a test-sized twin."""
    return CifarNet("residual", 14, num_classes, shortcut)


@register_model
def plain20(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 20 layers (n=3): Figure 1 and 6."""
    return CifarNet("plain", 20, num_classes, shortcut)


@register_model
def resnet20(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-20 (n=3): Table 6, 8.75% test error."""
    return CifarNet("residual", 20, num_classes, shortcut)


@register_model
def plain32(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 32 layers (n=5): Figure 6."""
    return CifarNet("plain", 32, num_classes, shortcut)


@register_model
def resnet32(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-32 (n=5): Table 6, 7.51% test error."""
    return CifarNet("residual", 32, num_classes, shortcut)


@register_model
def plain44(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 44 layers (n=7): Figure 6."""
    return CifarNet("plain", 44, num_classes, shortcut)


@register_model
def resnet44(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-44 (n=7): Table 6, 7.17% test error."""
    return CifarNet("residual", 44, num_classes, shortcut)


@register_model
def plain56(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 56 layers (n=9): Figure 1 and 6, higher training error than plain-20."""
    return CifarNet("plain", 56, num_classes, shortcut)


@register_model
def resnet56(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-56 (n=9): Table 6, 6.97% test error."""
    return CifarNet("residual", 56, num_classes, shortcut)


@register_model
def plain110(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 110 layers (n=18): Figure 6, above 60% error in the paper."""
    return CifarNet("plain", 110, num_classes, shortcut)


@register_model
def resnet110(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-110 (n=18): Table 6, 6.43% (best of 5 runs; 6.61 +- 0.16)."""
    return CifarNet("residual", 110, num_classes, shortcut)


@register_model
def plain1202(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """Plain net, 1202 layers (n=200): no paper result."""
    return CifarNet("plain", 1202, num_classes, shortcut)


@register_model
def resnet1202(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """ResNet-1202 (n=200): Table 6, 7.93% test error (overfitting)."""
    return CifarNet("residual", 1202, num_classes, shortcut)


def list_models(pattern: str = "*") -> list[str]:
    """Registered builder names matching a shell-style pattern, e.g. list_models("plain*")."""
    return [name for name in _REGISTRY if fnmatch.fnmatch(name, pattern)]


def build_model(name_or_kind: str, depth: int | None = None, *, num_classes: int = 10,
                shortcut: Shortcut = "A") -> CifarNet:
    """build_model("resnet56") or build_model("residual", 56); any 6n+2 depth works with a kind."""
    if depth is not None:
        return CifarNet(name_or_kind, depth, num_classes=num_classes, shortcut=shortcut)  # type: ignore[arg-type]
    if name_or_kind in _REGISTRY:
        return _REGISTRY[name_or_kind](num_classes=num_classes, shortcut=shortcut)
    for prefix, kind in (("resnet", "residual"), ("plain", "plain")):
        if name_or_kind.startswith(prefix) and name_or_kind[len(prefix):].isdigit():
            return CifarNet(kind, int(name_or_kind[len(prefix):]), num_classes=num_classes,
                            shortcut=shortcut)  # type: ignore[arg-type]
    raise UserError(f"unknown model {name_or_kind!r}: see `resdepth models`, e.g. resnet56 or plain20")


def count_parameters(model: nn.Module) -> int:
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
        model = build_model(name, num_classes=num_classes)
        rows.append({
            "name": name, "kind": model.kind, "depth": model.depth,
            "params": count_parameters(model), "mflops": count_multiply_adds(model) / 1e6,
        })
    return rows
