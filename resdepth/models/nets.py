"""The CIFAR networks' classes: plain and residual nets of depth 6n+2 (He et al. 2016, §4.2) and the
pre-activation ResNets of the follow-up paper (He et al., *Identity Mappings in Deep Residual Networks*, ECCV 2016):
basic blocks (6n+2) and bottleneck blocks (9n+2: 164, 1001).

One general class per design (`CifarNet`, `PreActNet`) and their blocks, shortcuts and inits; families.py builds
its nets from them, and `resdepth.models` names them (`build_model("resnet56")`). Module names of CifarNet follow the
common option-A CIFAR ResNet layout (conv1, bn1, layer1..3 with conv1/bn1/conv2/bn2 per block, linear) so
published weights load in order.

Every network answers `response_layers()` (the modules whose outputs are its responses, Figure 7, in forward order:
each 3x3 layer after BN for the §4.2 nets, each unit's residual function for the pre-activation ones; the class's
`response_measure` names which) and `weight_layers()` (its depth weighted layers); see each class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

Shortcut = Literal["A", "B"]
SHORTCUTS: tuple[str, ...] = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)  # §4.2: 16/32/64 filters on 32/16/8 feature maps
STEM_WIDTH = 16  # the 3x3 stem conv's filters, at every width (as Wide ResNets keep it)
BOTTLENECK_EXPANSION = 4  # 2016b appendix: a [1x1, 16; 3x3, 16; 1x1, 64] unit replaces a [3x3, 16; 3x3, 16] one


@dataclass(frozen=True)
class DepthRule:
    """Which depths a family builds: step * n + offset for n >= 1 (6n+2, 9n+2); step 1 and offset 0 allow any
    depth from 1 up."""

    step: int = 1
    offset: int = 0

    def __str__(self) -> str:
        return "any depth >= 1" if (self.step, self.offset) == (1, 0) else f"{self.step}n+{self.offset} (n >= 1)"

    @property
    def smallest(self) -> int:
        return self.step + self.offset

    def allows(self, depth: int) -> bool:
        return depth >= self.smallest and (depth - self.offset) % self.step == 0

    def nearest(self, depth: int) -> list[int]:
        """The valid depths just below and above `depth` (only the smallest one below it)."""
        if depth <= self.smallest:
            return [self.smallest]
        below = depth - (depth - self.offset) % self.step
        return [below] if below == depth else [below, below + self.step]

    def blocks(self, depth: int, family: str) -> int:
        """n for a valid depth; any other depth is refused with the nearest valid ones."""
        if not self.allows(depth):
            raise UserError(f"depth {depth} is not of the form {self} for {family} nets: try "
                            f"{' or '.join(map(str, self.nearest(depth)))}")
        return (depth - self.offset) // self.step


SIX_N_PLUS_TWO = DepthRule(6, 2)  # §4.2: a stem conv, 3 stages of n blocks of two 3x3 convs, the FC layer
NINE_N_PLUS_TWO = DepthRule(9, 2)  # 2016b: the same with bottleneck units of three convs


def check_shortcut(shortcut: str) -> None:
    if shortcut not in SHORTCUTS:
        raise UserError(f"unknown shortcut {shortcut!r}: use A (zero-padding, the paper's default) or B (projection)")


class ResponseLayer(NamedTuple):
    """One layer whose response Figure 7 measures: the module whose output is that response."""

    name: str  # the module's name in the network, e.g. "layer2.0.bn1"
    stage: int  # 0: the stem; 1-3: the stages on 32x32, 16x16 and 8x8 maps
    module: nn.Module


class LesionBlock(NamedTuple):
    """One block a lesion study (Veit et al. 2016) may delete or move: where it sits and what is left without it."""

    name: str  # e.g. "layer2.0"
    stage: int  # 1-3
    container: nn.Sequential  # the stage holding it (deleting or swapping replaces container[position])
    position: int
    residual: bool  # a shortcut runs around it
    downsampling: bool  # it changes the shape (stride 2 or more channels)
    without: nn.Module | None  # what computes the net's path without it; None: it cannot be deleted


class ShortcutOnly(nn.Module):
    """A residual block with its residual branch deleted (Veit et al. 2016): only the shortcut's path is left,
    with what the block applies on that path before (a pre-activation unit's BN and ReLU, where its projection
    takes the pre-activated input) and after (the post-activation block's ReLU)."""

    def __init__(self, shortcut: nn.Module, before: nn.Module | None = None, relu_after: bool = False):
        super().__init__()
        self.shortcut, self.before, self.relu_after = shortcut, before, relu_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x if self.before is None else F.relu(self.before(x)))
        return F.relu(out) if self.relu_after else out


class ThreeStages(nn.Module):
    """What the CIFAR nets share beyond their blocks: three stages, layer1-3 on 32/16/8 maps, which the lesion,
    response and construction studies walk in forward order."""

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def stages(self) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
        return self.layer1, self.layer2, self.layer3

    def lesion_blocks(self) -> list[LesionBlock]:
        """Every block (unit) in forward order, as each describes itself (`lesion_view`), for lesion studies (Veit
        et al. 2016)."""
        return [LesionBlock(f"layer{stage}.{position}", stage, blocks, position, *block.lesion_view())
                for stage, blocks in enumerate(self.stages(), start=1) for position, block in enumerate(blocks)]


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by the stride (2 where a stage starts) and zero-pad the new channels, half on each
    side (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad_front, self.pad_back))


def projection_shortcut(in_planes: int, out_planes: int, stride: int = 2) -> nn.Module:
    """Option B: a strided 1x1 projection with BN, used only where the shape changes."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


def stage_widths(width: int) -> tuple[int, ...]:
    """The stages' filters at width multiplier k: 16k/32k/64k (Zagoruyko and Komodakis 2016, *Wide Residual
    Networks*); k = 1 is §4.2's 16/32/64."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise UserError(f"--width must be a positive integer (1: the paper's 16/32/64 filters), got {width!r}")
    return tuple(planes * width for planes in STAGE_WIDTHS)


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
            # stride 1 only where a wide net's first stage widens the stem's 16 filters
            self.shortcut = (ZeroPadShortcut(in_planes, planes, stride) if shortcut == "A" else
                             projection_shortcut(in_planes, planes, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)

    def lesion_view(self) -> tuple[bool, bool, nn.Module | None]:
        """(residual, downsampling, what is left without the block): a residual block leaves relu(shortcut(x));
        a plain block leaves the identity where the shape stays, and cannot be deleted where it changes."""
        downsampling = self.conv1.stride != (1, 1) or self.conv1.in_channels != self.conv1.out_channels
        if self.residual:
            return True, downsampling, ShortcutOnly(self.shortcut, relu_after=True)
        return False, downsampling, None if downsampling else nn.Identity()

    @property
    def identity_needs_statistics(self) -> bool:
        """A plain block becomes the identity through BNs that undo its input's statistics; a residual one does not."""
        return not self.residual

    @torch.no_grad()
    def make_identity(self, mean: torch.Tensor | None, var: torch.Tensor | None) -> str:
        """Make the block compute the identity on its (non-negative: a ReLU's output) input in evaluation mode, for
        the paper's constructed deeper net (§1); returns how. Residual: the last BN's scale and shift at zero give
        F(x) = 0 and relu(x + 0) = x, in training mode too. Plain: Dirac kernels make the convs the identity and
        each BN gets running statistics (mean, var), scale sqrt(var + eps) and shift mean, so its evaluation
        transform is the identity; the ReLUs pass x >= 0 unchanged."""
        if self.residual:
            nn.init.zeros_(self.bn2.weight)
            nn.init.zeros_(self.bn2.bias)
            return "last BN of each added block with scale and shift 0"
        assert mean is not None and var is not None, "a plain block needs its input's statistics"
        for conv in (self.conv1, self.conv2):
            nn.init.dirac_(conv.weight)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var.float() + bn.eps))
            bn.bias.copy_(mean)
        return "Dirac convs, BNs with identity evaluation transform"


class CifarNet(ThreeStages):
    """The §4.2 network: a 3x3 stem conv, 3 stages of n blocks (2n layers each), global average pool, FC.

    kind: plain (no shortcuts) or residual (a shortcut around every block, `shortcut` A or B where the shape
    changes); the two are twins with the same parameters under option A. width: the multiplier k of the stages'
    filters (16k/32k/64k, the stem keeps 16, as in Wide ResNets); 1 is the paper's net."""

    KINDS = ("plain", "residual")
    # what response_layers() measures: analysis/responses.py's MEASURES name and title it
    response_measure = "bn_output"

    def __init__(self, kind: str, depth: int, num_classes: int = 10, shortcut: Shortcut = "A", width: int = 1):
        super().__init__()
        if kind not in self.KINDS:
            raise UserError(f"CifarNet builds plain or residual nets, not {kind!r}")
        check_shortcut(shortcut)
        check_classes(num_classes)
        n = SIX_N_PLUS_TWO.blocks(depth, kind)
        widths = stage_widths(width)
        self.kind, self.depth, self.shortcut_option, self.width = kind, depth, shortcut, width
        residual = kind == "residual"
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        in_planes = STEM_WIDTH
        stages = []
        for index, planes in enumerate(widths):
            blocks = []
            for block in range(n):
                stride = 2 if index > 0 and block == 0 else 1  # §4.2: subsampling by stride-2 convs
                blocks.append(BasicBlock(in_planes, planes, stride, residual, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)
        self.apply(he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)

    def response_layers(self) -> list[ResponseLayer]:
        """§4.2, Figure 7: "the outputs of each 3x3 layer, after BN and before other nonlinearity (ReLU/addition)":
        the BN after each 3x3 conv, in forward order, depth - 1 of them (the FC has none; option-B shortcut BNs
        are not 3x3 layers). Every network family answers this for its own layout."""
        layers = [ResponseLayer("bn1", 0, self.bn1)]
        for stage, blocks in enumerate(self.stages(), start=1):
            for index, block in enumerate(blocks):
                layers += [ResponseLayer(f"layer{stage}.{index}.{bn}", stage, getattr(block, bn))
                           for bn in ("bn1", "bn2")]
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


def check_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise UserError(f"--num-classes must be a positive integer (10 for CIFAR-10), got {num_classes}")


# ---------------------------------------------------------------------------------------------- pre-activation
class PreActBlock(nn.Module):
    """Full pre-activation (2016b, Fig. 4e): BN -> ReLU -> 3x3 conv, twice, added to the shortcut; nothing after
    the addition. Where the shape changes the shortcut takes the pre-activated input ("these projection shortcuts
    are also with pre-activation"): B a strided 1x1 conv (no BN), A the zero-padding of option A. first: the net's
    first unit, whose BN -> ReLU is the activation right after the stem, before the two paths split (2016b, §4.1;
    the authors' code's "both_preact"), so its identity shortcut takes the activated input too."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut, first: bool = False):
        super().__init__()
        self.first = first
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = preact_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = unit_shortcut(self, x, out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut

    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def lesion_view(self) -> tuple[bool, bool, nn.Module | None]:
        """A pre-activation unit without its branch leaves what its shortcut takes: x, or the pre-activated input
        (the net's first unit, whose activation comes before the split), projected where the shape changes."""
        if self.shortcut is None:
            return True, False, ShortcutOnly(nn.Identity(), before=self.bn1) if self.first else nn.Identity()
        return True, True, ShortcutOnly(self.shortcut, before=self.bn1)


class PreActBottleneck(nn.Module):
    """The bottleneck unit of the authors' resnet-1k-layers code: BN -> ReLU -> 1x1 conv (strided, to planes),
    BN -> ReLU -> 3x3 conv, BN -> ReLU -> 1x1 conv (to 4 x planes), added to the shortcut; a 1x1 projection of the
    pre-activated input where the shape changes (every stage's first unit, so the net's first unit's shortcut takes
    the activated stem output: `first` changes nothing here, the projection already does)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut, first: bool = False):
        super().__init__()
        self.first = first
        out_planes = planes * BOTTLENECK_EXPANSION
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.shortcut = preact_shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = unit_shortcut(self, x, out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut

    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    def lesion_view(self) -> tuple[bool, bool, nn.Module | None]:
        """A pre-activation unit without its branch leaves what its shortcut takes: x, or the pre-activated input
        (the net's first unit, whose activation comes before the split), projected where the shape changes."""
        if self.shortcut is None:
            return True, False, ShortcutOnly(nn.Identity(), before=self.bn1) if self.first else nn.Identity()
        return True, True, ShortcutOnly(self.shortcut, before=self.bn1)


def unit_shortcut(unit: PreActBlock | PreActBottleneck, x: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
    """What a pre-activation unit adds its residual to: the unit's input x (identity), except in the net's first
    unit, where the activation comes before the split; a projection or zero-padding of the activated input."""
    if unit.shortcut is not None:
        return unit.shortcut(activated)
    return activated if unit.first else x


def preact_shortcut(in_planes: int, out_planes: int, stride: int, shortcut: Shortcut) -> nn.Module | None:
    """None (identity on the unit's input) where the shape stays; else a projection or zero-padding of the
    pre-activated input."""
    if stride == 1 and in_planes == out_planes:
        return None
    if shortcut == "B":
        return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
    return ZeroPadShortcut(in_planes, out_planes, stride)


class PreActNet(ThreeStages):
    """The pre-activation ResNet of 2016b on CIFAR: a 3x3 stem conv (16), 3 stages of n units on 32/16/8 maps
    (basic: 16/32/64 filters, depth 6n+2; bottleneck: 16/32/64 inside, 64/128/256 out, depth 9n+2), a final
    BN -> ReLU (the last unit's extra activation), global average pool, FC. The first unit's BN -> ReLU is the
    activation right after the stem ("before splitting into two paths"). Init as the authors' code: convs
    normal with std sqrt(2 / (k*k*out channels)), BN 1 and 0, FC bias 0. width k: stages of 16k/32k/64k filters
    after the 16-filter stem, the first unit projecting 16 to 16k: the basic net is then Wide ResNet's own
    (Zagoruyko and Komodakis 2016: pre-activation basic blocks, widened)."""

    response_measure = "residual_function"  # what response_layers() measures: analysis/responses.py's MEASURES

    def __init__(self, depth: int, num_classes: int = 10, bottleneck: bool = False, shortcut: Shortcut = "B",
                 width: int = 1):
        super().__init__()
        check_shortcut(shortcut)
        check_classes(num_classes)
        widths = stage_widths(width)
        self.kind = "preact-bottleneck" if bottleneck else "preact"
        rule, unit = (NINE_N_PLUS_TWO, PreActBottleneck) if bottleneck else (SIX_N_PLUS_TWO, PreActBlock)
        n = rule.blocks(depth, self.kind)
        self.depth, self.shortcut_option, self.width = depth, shortcut, width
        expansion = BOTTLENECK_EXPANSION if bottleneck else 1
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, 3, stride=1, padding=1, bias=False)
        in_planes = STEM_WIDTH
        stages = []
        for index, planes in enumerate(widths):
            units = []
            for position in range(n):
                units.append(unit(in_planes, planes, 2 if index > 0 and position == 0 else 1, shortcut,
                                  first=index == 0 and position == 0))
                in_planes = planes * expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        self.apply(preact_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)

    def response_layers(self) -> list[ResponseLayer]:
        """Each unit's residual function F(x): the output of its last conv, before the addition, one per unit in
        forward order (3n of them). The paper's Figure 7 measures each 3x3 layer after its BN; a pre-activation net
        has no BN there, and every other conv feeds a BN, so its output's scale is its weight norm's, not the
        function's: F(x), what is added to the shortcut, is the comparable quantity (the paper's "residual
        functions ... generally closer to zero")."""
        return [ResponseLayer(f"layer{stage}.{index}.conv{len(unit.branch_convs())}", stage, unit.branch_convs()[-1])
                for stage, units in enumerate(self.stages(), start=1) for index, unit in enumerate(units)]

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        """The depth weighted layers in forward order: the stem and branch convs, then the FC (projections are
        not layers of the depth)."""
        return [(name, module) for name, _, module in self.conv_layers()] + [("linear", self.linear)]

    def conv_layers(self) -> list[tuple[str, int, nn.Conv2d]]:
        layers = [("conv1", 0, self.conv1)]
        for stage, units in enumerate(self.stages(), start=1):
            for index, unit in enumerate(units):
                layers += [(f"layer{stage}.{index}.conv{k}", stage, conv)
                           for k, conv in enumerate(unit.branch_convs(), start=1)]
        return layers


def preact_init(module: nn.Module) -> None:
    # resnet-1k-layers' ConvInit: normal(0, sqrt(2/n)) with n = kW*kH*nOutputPlane (He et al. 2015, fan-out);
    # the FC keeps its default uniform(+-1/sqrt(fan_in)) weights, as Torch's, with a zero bias.
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)
