"""torchvision's modern networks written as specs with the standard library's blocks, each
the very network torchvision builds; and each of those blocks alone, against the torchvision
module it stands for. "The same" is tests/parity.py's: same parameter count, same eval-mode
output once torchvision's parameters and buffers (norm statistics randomized) are copied in."""

from functools import cache, partial
from pathlib import Path

import pytest
import torch
from torch import nn

import archdsl
import parity

TORCHVISION_SPECS = Path(__file__).resolve().parent.parent / "specs" / "torchvision"

torchvision = pytest.importorskip("torchvision")
models = torchvision.models


def redraw_weights(model: nn.Module) -> None:
    """Kaiming-normal weights (fan in, groups counted) for every conv and linear layer.

    With torchvision's own draws (by fan out) and randomized norm statistics, the MobileNets,
    EfficientNet and ShuffleNet give two inputs outputs less than 1e-5 of their scale apart, so
    the comparison would test little; Inception v3's (std 0.1) outputs reach 1e13. Drawn by fan
    in, the input reaches the output at a sensible scale."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5, generator=generator)


def redraw_head(model: nn.Module) -> None:
    """torchvision starts ViT's classifier at zero, so its output would not depend on the input."""
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))


def scale_layers(model: nn.Module) -> None:
    """ConvNeXt's layer scale starts at 1e-6: each block would add almost nothing to its input,
    and a wrong block would still give torchvision's output. Scales near 1 make every block count."""
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(0.5 + torch.rand(p.shape, generator=generator))


# (spec and torchvision name, torchvision keyword arguments, side of the parity input, what
# to change in torchvision's freshly drawn parameters so that the comparison tests them).
# The CNNs run at sizes that keep this file fast yet leave a map of at least 2x2 before the
# global pooling: 64x64, and 107x107 for Inception v3 (which needs 75x75 at least). ViT-B/16
# takes nothing but its image size, 224x224. Parameter counts are checked at full size.
NETWORKS = [
    ("mobilenet_v2", {}, 64, redraw_weights),
    ("mobilenet_v3_small", {}, 64, redraw_weights),
    ("efficientnet_b0", {}, 64, redraw_weights),
    ("convnext_tiny", {}, 64, scale_layers),
    ("shufflenet_v2_x1_0", {}, 64, redraw_weights),
    # aux_logits=False: the auxiliary classifier only runs in training; init_weights=True is
    # the default without weights, stated to silence torchvision's FutureWarning.
    ("inception_v3", {"aux_logits": False, "init_weights": True}, 107, redraw_weights),
    ("vit_b_16", {}, 224, redraw_head),
]
IDS = [n[0] for n in NETWORKS]


def unseen_in_eval(model: nn.Module) -> dict[str, list]:
    """What an eval-mode comparison cannot show, in module order: the dropout rates, attention
    dropout, the stochastic depth of every residual path that applies it, and each norm's eps
    and momentum (batch norm's momentum only acts in training)."""
    found: dict[str, list] = {"dropout": [], "attention dropout": [], "stochastic depth": [], "norms": []}
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            found["dropout"].append(m.p)
        elif isinstance(m, nn.MultiheadAttention):
            found["attention dropout"].append(m.dropout)
        elif isinstance(m, archdsl.modules.DropPath):
            found["stochastic depth"].append(m.p)
        elif isinstance(m, models.convnext.CNBlock) or isinstance(m, models.efficientnet.MBConv) and m.use_res_connect:
            assert m.stochastic_depth.mode == "row"
            found["stochastic depth"].append(m.stochastic_depth.p)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            found["norms"].append((type(m).__name__, m.eps, m.momentum))
        elif isinstance(m, nn.LayerNorm):  # torchvision's LayerNorm2d and archdsl's ChannelLayerNorm too
            found["norms"].append(("LayerNorm", m.eps))
    return found


def assert_same_settings(reference: nn.Module, ours: nn.Module) -> None:
    want, got = unseen_in_eval(reference), unseen_in_eval(ours)
    assert got.pop("norms") == want.pop("norms"), "norms (kind, eps, momentum)"
    for key in want:  # torchvision works stochastic depth out in floats, archdsl exactly
        assert got[key] == pytest.approx(want[key], rel=1e-12), key


@cache
def theirs(name: str) -> nn.Module:
    """torchvision's network, built once for this file's tests."""
    kwargs = next(kw for n, kw, _, _ in NETWORKS if n == name)
    torch.manual_seed(0)
    return getattr(models, name)(weights=None, **kwargs)


@pytest.mark.parametrize("name", IDS)
def test_spec_has_torchvisions_parameter_count(name: str) -> None:
    assert archdsl.trace(TORCHVISION_SPECS / f"{name}.arch").total_params == parity.count_params(theirs(name))


@pytest.mark.parametrize("name, kwargs, size, adjust", NETWORKS, ids=IDS)
def test_spec_is_torchvisions_network(name: str, kwargs: dict, size: int, adjust) -> None:
    reference = theirs(name)
    adjust(reference)
    ours = archdsl.build(TORCHVISION_SPECS / f"{name}.arch", input_shape=(3, size, size))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    diff = parity.assert_same_network(reference, ours, x)
    assert_same_settings(reference, ours)
    print(f"{name}: max |diff| {diff:.3g} at {size}x{size}")


# The standard library's blocks, one by one ----------------------------------------------

def same_block(reference: nn.Module, spec: str, shape: tuple[int, ...]) -> None:
    ours = archdsl.build(spec, input_shape=shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    parity.assert_same_network(reference, ours, x)
    assert_same_settings(reference, ours)


def test_squeeze_excitation_is_torchvisions() -> None:
    reference = torchvision.ops.SqueezeExcitation(48, 16, scale_activation=nn.Hardsigmoid)
    same_block(reference, "include mobilenet; squeeze_excitation(16)", (48, 6, 6))
    efficientnet = torchvision.ops.SqueezeExcitation(48, 12, activation=nn.SiLU)
    same_block(efficientnet, "include mobilenet; squeeze_excitation(12, silu, sigmoid)", (48, 6, 6))


@pytest.mark.parametrize("inp, oup, stride, expand", [(16, 16, 1, 6), (16, 24, 2, 6), (32, 32, 1, 1), (24, 32, 1, 6)])
def test_inverted_residual_is_mobilenet_v2s(inp: int, oup: int, stride: int, expand: int) -> None:
    reference = models.mobilenetv2.InvertedResidual(inp, oup, stride, expand)
    same_block(reference, f"include mobilenet; inverted_residual({oup}, stride={stride}, expand={expand})", (inp, 8, 8))


@pytest.mark.parametrize("row", [
    (16, 3, 16, 16, True, "RE", 2),       # no expansion
    (24, 3, 88, 24, False, "RE", 1),      # residual, no SE
    (40, 5, 240, 40, True, "HS", 1),      # residual, SE, hard swish
    (48, 5, 288, 96, True, "HS", 2),
])
def test_inverted_residual_is_mobilenet_v3s(row: tuple) -> None:
    inp, kernel, expanded, out, se, act, stride = row
    config = models.mobilenetv3.InvertedResidualConfig(inp, kernel, expanded, out, se, act, stride, 1, 1.0)
    reference = models.mobilenetv3.InvertedResidual(config, partial(nn.BatchNorm2d, eps=0.001, momentum=0.01))
    act = {"RE": "relu", "HS": "hardswish"}[act]
    spec = (f"include mobilenet; inverted_residual({out}, {kernel}, {stride}, expanded={expanded}, act={act}, "
            f"se={str(se).lower()}, eps=0.001, momentum=0.01)")
    same_block(reference, spec, (inp, 8, 8))


@pytest.mark.parametrize("expand, kernel, stride, inp, out", [(6, 5, 1, 40, 40), (6, 3, 2, 16, 24), (1, 3, 1, 32, 16)])
def test_inverted_residual_is_efficientnets_mbconv(expand: int, kernel: int, stride: int, inp: int, out: int) -> None:
    config = models.efficientnet.MBConvConfig(expand, kernel, stride, inp, out, 1)
    reference = models.efficientnet.MBConv(config, 0.1, nn.BatchNorm2d)
    spec = (f"include mobilenet; inverted_residual({out}, {kernel}, {stride}, {expand}, act=silu, se=true, "
            f"squeeze={inp // 4}, se_act=silu, se_gate=sigmoid, sd=0.1)")
    same_block(reference, spec, (inp, 8, 8))


def test_convnext_block_is_torchvisions_cnblock() -> None:
    reference = models.convnext.CNBlock(96, 1e-6, 0.1)
    scale_layers(reference)
    same_block(reference, "include convnext; convnext_block(0.1)", (96, 7, 7))


@pytest.mark.parametrize("inp, oup, stride", [(24, 116, 2), (116, 116, 1)])
def test_shuffle_unit_is_torchvisions(inp: int, oup: int, stride: int) -> None:
    reference = models.shufflenetv2.InvertedResidual(inp, oup, stride)
    same_block(reference, f"include shufflenet; shuffle_unit({oup}, {stride})", (inp, 8, 8))


def test_encoder_block_is_torchvisions() -> None:
    reference = models.vision_transformer.EncoderBlock(4, 64, 128, dropout=0.1, attention_dropout=0.1)
    same_block(reference, "include transformer; encoder_block(4, 128, 0.1, 0.1)", (10, 64))


def test_patch_embedding_and_encoder_make_a_small_vit() -> None:
    reference = models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                         mlp_dim=128, num_classes=10)
    redraw_head(reference)
    same_block(reference, "include transformer; patch_embedding(64, 8) classtoken posembedding dropout(0) "
                          "[encoder_block(4, 128)] * 2 layernorm(eps=1e-6) token(0) linear(10)", (3, 32, 32))
