import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resdepth.errors import UserError
from resdepth.models import (
    BasicBlock,
    CifarNet,
    ZeroPadShortcut,
    build_model,
    count_multiply_adds,
    count_parameters,
    list_models,
)

PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


@pytest.mark.parametrize("depth", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_option_a_cifar_nets(depth):
    plain, residual = build_model("plain", depth), build_model("residual", depth)
    assert count_parameters(residual) == PAPER_PARAMS[depth]
    assert count_parameters(plain) == PAPER_PARAMS[depth]  # option A adds no parameters


def test_option_b_adds_projections_only_where_the_shape_changes():
    extra = count_parameters(build_model("residual", 20, shortcut="B")) - PAPER_PARAMS[20]
    assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # two 1x1 convs with their BN


@pytest.mark.parametrize("name", [n for n in list_models() if not n.endswith("1202")])
def test_every_registered_model_trains(name):
    model = build_model(name)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_layer_count_is_depth():
    for depth in (8, 20, 56):
        model = build_model("plain", depth)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(convs) + len(linears) == depth
        assert all(m.kernel_size == (3, 3) for m in convs)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(bns) == len(convs)  # BN after every conv


def test_stage_widths_and_map_sizes():
    model = build_model("residual", 20)
    shapes = []
    model.layer1.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    model.layer2.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    model.layer3.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    model(torch.randn(1, 3, 32, 32))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_plain_blocks_have_no_shortcut_and_residual_blocks_add_one():
    torch.manual_seed(0)
    plain = BasicBlock(16, 16, 1, residual=False, shortcut="A")
    residual = BasicBlock(16, 16, 1, residual=True, shortcut="A")
    for block in (plain, residual):
        nn.init.zeros_(block.conv2.weight)  # the block's own branch now outputs BN bias = 0
        block.eval()
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(plain(x), torch.zeros_like(x))
    assert torch.allclose(residual(x), F.relu(x))


def test_option_a_subsamples_and_zero_pads_half_on_each_side():
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    out = ZeroPadShortcut(16, 32)(x)
    assert out.shape == (2, 32, 2, 2)
    assert torch.equal(out[:, :8], torch.zeros(2, 8, 2, 2)) and torch.equal(out[:, 24:], torch.zeros(2, 8, 2, 2))
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])


@pytest.mark.parametrize("depth, hint", [(21, "20 or 26"), (19, "14 or 20"), (5, "8"), (0, "8")])
def test_invalid_depth_names_the_nearest_valid_ones(depth, hint):
    with pytest.raises(UserError, match=f"try {hint}"):
        build_model("residual", depth)


def test_every_registered_builder_is_a_named_attribute_of_the_module():
    import resdepth.models as models

    for name in list_models():
        builder = getattr(models, name)
        model = builder()
        assert builder.__name__ == name and builder.__doc__
        prefix = {"residual": "resnet", "plain": "plain", "preact": "preact", "preact-bottleneck": "preact"}
        assert f"{prefix[model.kind]}{model.depth}" == name


def test_builders_by_name_and_by_kind_agree():
    assert list_models("plain*") == [f"plain{d}" for d in (8, 14, 20, 32, 44, 56, 110, 1202)]
    assert list_models("resnet5*") == ["resnet56"]
    by_name, by_kind = build_model("resnet56"), build_model("residual", 56)
    assert (by_name.kind, by_name.depth) == (by_kind.kind, by_kind.depth) == ("residual", 56)
    assert build_model("plain26").depth == 26  # any 6n+2 depth, registered or not
    with pytest.raises(UserError, match="unknown model"):
        build_model("vgg16")
    with pytest.raises(UserError, match="unknown kind"):
        build_model("dense", 20)


def test_multiply_adds_of_resnet20():
    # 3x3 stem + 3 stages of 6 convs + FC, counted by hand
    stem = 32 * 32 * 16 * 27
    stage1 = 6 * 32 * 32 * 16 * 9 * 16
    stage2 = 16 * 16 * 32 * 9 * 16 + 5 * 16 * 16 * 32 * 9 * 32
    stage3 = 8 * 8 * 64 * 9 * 32 + 5 * 8 * 8 * 64 * 9 * 64
    assert count_multiply_adds(build_model("resnet20")) == stem + stage1 + stage2 + stage3 + 640


class ReferenceBlock(nn.Module):
    """The common published option-A CIFAR ResNet block, written independently of resdepth."""

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class ReferenceResNet(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(ReferenceBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.avg_pool2d(out, out.size(3)).flatten(1))


def test_reference_weights_loaded_in_order_give_the_same_outputs():
    torch.manual_seed(1)
    reference = ReferenceResNet(3)
    for module in reference.modules():  # non-trivial BN statistics so the test can fail
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    ours = build_model("resnet20")
    ref_values, our_keys = list(reference.state_dict().values()), list(ours.state_dict().keys())
    assert [v.shape for v in ref_values] == [ours.state_dict()[k].shape for k in our_keys]
    ours.load_state_dict(dict(zip(our_keys, ref_values, strict=True)))
    reference.eval(), ours.eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(reference(x), ours(x), atol=1e-5)


def test_cifarnet_refuses_bad_shortcut():
    with pytest.raises(UserError, match="shortcut"):
        CifarNet("residual", 20, shortcut="C")
