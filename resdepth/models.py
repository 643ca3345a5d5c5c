"""Plain and residual CIFAR networks of depth 6n+2, as defined in He et al. 2016, section 4.2.

One general class (`CifarNet`) and thin named builders (`plain20`, `resnet56`, ...) registered by name,
in the manner of torchvision/timm. Module names follow the common option-A CIFAR ResNet layout
(conv1, bn1, layer1..3 with conv1/bn1/conv2/bn2 per block, linear) so published weights load in order.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

Kind = Literal["plain", "residual"]
Shortcut = Literal["A", "B"]
KINDS: tuple[str, ...] = ("plain", "residual")
SHORTCUTS: tuple[str, ...] = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)  # §4.2: 16/32/64 filters on 32/16/8 feature maps
NAMED_DEPTHS = (8, 14, 20, 32, 44, 56, 110, 1202)  # 8/14 are tiny test nets; the rest are the paper's


class ResponseLayer(NamedTuple):
    """One layer whose response Figure 7 measures: the module whose output is that response."""

    name: str  # the module's name in the network, e.g. "layer2.0.bn1"
    stage: int  # 0: the stem; 1-3: the stages on 32x32, 16x16 and 8x8 maps
    module: nn.Module


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
            self.shortcut = ZeroPadShortcut(in_planes, planes) if shortcut == "A" else projection_shortcut(in_planes, planes)

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
        n = blocks_per_stage(depth)
        check_kind(kind)
        if shortcut not in SHORTCUTS:
            raise UserError(f"unknown shortcut {shortcut!r}: use A (zero-padding, the paper's default) or B (projection)")
        if num_classes < 1:
            raise UserError(f"--num-classes must be a positive integer (10 for CIFAR-10), got {num_classes}")
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

    def stages(self) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
        return self.layer1, self.layer2, self.layer3

    def response_layers(self) -> list[ResponseLayer]:
        """§4.2, Figure 7: "the outputs of each 3x3 layer, after BN and before other nonlinearity (ReLU/addition)":
        the BN after each 3x3 conv, in forward order, depth - 1 of them (the FC has none; option-B shortcut BNs
        are not 3x3 layers). Every network family answers this for its own layout."""
        layers = [ResponseLayer("bn1", 0, self.bn1)]
        for stage, blocks in enumerate(self.stages(), start=1):
            for index, block in enumerate(blocks):
                layers += [ResponseLayer(f"layer{stage}.{index}.{bn}", stage, getattr(block, bn)) for bn in ("bn1", "bn2")]
        return layers

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        """The depth weighted layers in forward order: the 3x3 convs, then the FC (named as in the state dict).
        Option-B projections are left out: they are not layers of the depth count."""
        convs = [("conv1", self.conv1)]
        for stage, blocks in enumerate(self.stages(), start=1):
            for index, block in enumerate(blocks):
                convs += [(f"layer{stage}.{index}.{conv}", getattr(block, conv)) for conv in ("conv1", "conv2")]
        return [*convs, ("linear", self.linear)]


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


_REGISTRY: dict[str, Callable[..., CifarNet]] = {}


def _register(name: str, kind: Kind, depth: int) -> None:
    def builder(num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
        return CifarNet(kind, depth, num_classes=num_classes, shortcut=shortcut)

    builder.__name__ = name
    builder.__doc__ = f"{kind} network with {depth} layers (n={(depth - 2) // 6})."
    _REGISTRY[name] = builder


for _depth in NAMED_DEPTHS:
    _register(f"plain{_depth}", "plain", _depth)
    _register(f"resnet{_depth}", "residual", _depth)


def list_models(pattern: str = "*") -> list[str]:
    """Registered builder names matching a shell-style pattern, e.g. list_models("plain*")."""
    return [name for name in _REGISTRY if fnmatch.fnmatch(name, pattern)]


def build_model(name_or_kind: str, depth: int | None = None, *, num_classes: int = 10, shortcut: Shortcut = "A") -> CifarNet:
    """build_model("resnet56") or build_model("residual", 56); any 6n+2 depth works with a kind."""
    if depth is not None:
        return CifarNet(name_or_kind, depth, num_classes=num_classes, shortcut=shortcut)  # type: ignore[arg-type]
    if name_or_kind in _REGISTRY:
        return _REGISTRY[name_or_kind](num_classes=num_classes, shortcut=shortcut)
    for prefix, kind in (("resnet", "residual"), ("plain", "plain")):
        if name_or_kind.startswith(prefix) and name_or_kind[len(prefix):].isdigit():
            return CifarNet(kind, int(name_or_kind[len(prefix):]), num_classes=num_classes, shortcut=shortcut)  # type: ignore[arg-type]
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
