"""The constructs of today's networks, each checked against torch itself (and torchvision where
it has the piece): activations, norms, windows, plumbing, joins, defaults, input sizes, expressions."""

from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import archdsl
from archdsl.modules import ChannelLayerNorm, DropPath, Mul, SelfAttention, Split


def build(text: str, shape: tuple[int, ...]) -> nn.Sequential:
    return archdsl.build(text, input_shape=shape).eval()


def only(net: nn.Sequential) -> nn.Module:
    (module,) = net
    return module


# Activations -------------------------------------------------------------------------

@pytest.mark.parametrize("spec, torch_module", [
    ("relu6", nn.ReLU6()), ("silu", nn.SiLU()), ("hardswish", nn.Hardswish()), ("hardsigmoid", nn.Hardsigmoid()),
    ("mish", nn.Mish()), ("leakyrelu(0.2)", nn.LeakyReLU(0.2)), ("elu(0.5)", nn.ELU(0.5)),
    ("softplus(2, 10)", nn.Softplus(2.0, 10.0)), ("logsoftmax", nn.LogSoftmax(dim=1)),
    ("gelu(approximate=tanh)", nn.GELU(approximate="tanh")), ("gelu", nn.GELU()),
    ("activation(silu)", nn.SiLU()), ('activation("hardswish")', nn.Hardswish()),
])
def test_activations_are_torchs_own(spec, torch_module):
    net = build(spec, (4, 5))
    assert repr(only(net)) == repr(torch_module)
    x = torch.randn(2, 4, 5) * 4
    torch.testing.assert_close(net(x), torch_module(x))


def test_prelu_learns_one_slope_or_one_per_channel():
    assert only(build("prelu", (6, 3, 3))).weight.shape == (1,)
    per_channel = only(build("prelu(per_channel=true, init=0.1)", (6, 3, 3)))
    assert per_channel.weight.shape == (6,) and torch.all(per_channel.weight == 0.1)


def test_a_block_passes_an_activation_by_name():
    net = build("block cba(c, act = relu) { conv(c, k1) activation(act) }\ncba(4) cba(4, act=hardswish) cba(4, silu)",
                (3, 4, 4))
    assert [type(b[1]) for b in net] == [nn.ReLU, nn.Hardswish, nn.SiLU]


# Windows that are not square ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("spec, torch_kwargs", [
    ("conv(8, k1x7, p0x3)", dict(kernel_size=(1, 7), padding=(0, 3))),
    ("conv(8, kernel=(7, 1), padding=(3, 0), stride=(2, 1))", dict(kernel_size=(7, 1), padding=(3, 0), stride=(2, 1))),
    ("conv(8, k3, s2x1, d1x2, p1x2)", dict(kernel_size=3, stride=(2, 1), dilation=(1, 2), padding=(1, 2))),
    ("conv(8, k4, padding=same)", dict(kernel_size=4, padding="same")),
    ("conv(8, k3x5, padding=\"valid\")", dict(kernel_size=(3, 5), padding=0)),
])
def test_rectangular_windows_give_torchs_shapes_and_outputs(spec, torch_kwargs):
    net = build(spec, (3, 17, 12))
    theirs = nn.Conv2d(3, 8, **torch_kwargs)
    ours = only(net)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight), theirs.bias.copy_(ours.bias)
    x = torch.randn(2, 3, 17, 12)
    torch.testing.assert_close(net(x), theirs(x))
    assert archdsl.trace(spec, (3, 17, 12), batch=2).output_shape == tuple(theirs(x).shape)


def test_rectangular_pooling_and_adaptive_sizes():
    net = build("maxpool(k3x1, s2x1, p1x0) avgpool(kernel=(1, 3)) adaptiveavgpool((2, 3))", (2, 9, 9))
    x = torch.randn(1, 2, 9, 9)
    y = F.adaptive_avg_pool2d(F.avg_pool2d(F.max_pool2d(x, (3, 1), (2, 1), (1, 0)), (1, 3)), (2, 3))
    torch.testing.assert_close(net(x), y)


# Normalisation ------------------------------------------------------------------------------

def test_batchnorm_keywords_and_affine():
    bn = only(build("batchnorm(eps=0.001, momentum=0.01, affine=false)", (5, 3, 3)))
    assert (bn.num_features, bn.eps, bn.momentum, bn.affine) == (5, 0.001, 0.01, False)


def test_layernorm_over_the_last_axes():
    assert only(build("layernorm", (4, 6))).normalized_shape == (6,)
    assert only(build("layernorm(over=2, eps=1e-6)", (4, 6))).normalized_shape == (4, 6)


def test_layernorm_over_channels_equals_torchvisions_layernorm2d():
    torchvision = pytest.importorskip("torchvision")
    net = build("layernorm(over=channels, eps=1e-6)", (8, 5, 5))
    theirs = torchvision.models.convnext.LayerNorm2d(8, eps=1e-6)
    with torch.no_grad():
        theirs.weight.normal_(), theirs.bias.normal_()
    net.load_state_dict({"0.weight": theirs.weight, "0.bias": theirs.bias})
    assert isinstance(only(net), ChannelLayerNorm)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(net(x), theirs(x))


def test_groupnorm_and_instancenorm():
    gn = only(build("groupnorm(4, eps=1e-6)", (8, 3, 3)))
    assert (gn.num_groups, gn.num_channels, gn.eps) == (4, 8, 1e-6)
    inorm = only(build("instancenorm(affine=true)", (8, 3, 3)))
    assert type(inorm) is nn.InstanceNorm2d and inorm.affine and inorm.num_features == 8


# Tensor plumbing ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, shape, reference", [
    ("permute(0, 2, 3, 1)", (3, 4, 5), lambda x: x.permute(0, 2, 3, 1)),
    ("permute(0, -1, 1, 2)", (3, 4, 5), lambda x: x.permute(0, 3, 1, 2)),
    ("transpose(1, 2)", (3, 4), lambda x: x.transpose(1, 2)),
    ("flatten(2)", (3, 4, 5), lambda x: x.flatten(2)),
    ("flatten(1, 2)", (3, 4, 5), lambda x: x.flatten(1, 2)),
    ("unflatten(1, (4, 15))", (60,), lambda x: x.unflatten(1, (4, 15))),
    ("unflatten(1, (4, -1))", (60,), lambda x: x.unflatten(1, (4, 15))),
    ("unflatten(-1, 5)", (3, 5), lambda x: x),
    ("reshape(5, -1)", (3, 4, 5), lambda x: x.reshape(x.shape[0], 5, 12)),
    ("mean(2, 3)", (3, 4, 5), lambda x: x.mean((2, 3))),
    ("mean(1, keepdim=true)", (3, 4), lambda x: x.mean(1, keepdim=True)),
    ("channelshuffle(3)", (6, 2, 2), lambda x: x.view(x.shape[0], 3, 2, 2, 2).transpose(1, 2).reshape(x.shape)),
    ("token(0)", (5, 8), lambda x: x[:, 0]),
    ("token(-1)", (5, 8), lambda x: x[:, -1]),
])
def test_plumbing_is_torchs_arithmetic(spec, shape, reference):
    net = build(spec, shape)
    x = torch.randn(2, *shape)
    expected = reference(x)
    torch.testing.assert_close(net(x), expected)
    assert archdsl.trace(spec, shape, batch=2).output_shape == tuple(expected.shape)


def test_linear_on_an_image_only_when_said_pointwise():
    net = build("permute(0, 2, 3, 1) linear(6, pointwise=true) permute(0, 3, 1, 2)", (4, 3, 3))
    x = torch.randn(2, 4, 3, 3)
    lin = net[1]
    torch.testing.assert_close(net(x), F.conv2d(x, lin.weight[:, :, None, None], lin.bias))


# Joins ----------------------------------------------------------------------------------------

def test_mul_is_squeeze_and_excitation():
    torchvision = pytest.importorskip("torchvision")
    net = build("mul([identity], [adaptiveavgpool(1) conv(4, k1) relu conv(16, k1) hardsigmoid])", (16, 5, 5))
    theirs = torchvision.ops.SqueezeExcitation(16, 4, scale_activation=nn.Hardsigmoid)
    assert isinstance(only(net), Mul)
    theirs.load_state_dict({k: v for k, v in zip(theirs.state_dict(), net.state_dict().values())})
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(net(x), theirs(x))


def test_split_is_chunk_then_cat():
    net = build("split([identity], [conv(3, k1) relu])", (6, 4, 4))
    split = only(net)
    assert isinstance(split, Split) and split.sizes == (3, 3)
    x = torch.randn(2, 6, 4, 4)
    x1, x2 = x.chunk(2, dim=1)
    torch.testing.assert_close(net(x), torch.cat((x1, split.paths[1](x2)), dim=1))
    uneven = only(build("split([relu], [identity], [sigmoid], sizes=(1, 2, 3))", (6, 2)))
    assert uneven.sizes == (1, 2, 3)


# Training-only layers -------------------------------------------------------------------------

def test_droppath_drops_whole_examples_in_training_and_is_the_identity_in_eval():
    drop = DropPath(0.5)
    x = torch.ones(4000, 3, 2, 2)
    torch.manual_seed(0)
    y = drop(x)
    kept = y.flatten(1)
    assert set(kept.unique().tolist()) == {0.0, 2.0}
    assert torch.all(kept.min(1).values == kept.max(1).values)  # per example: all dropped or all kept
    assert abs(y.mean().item() - 1.0) < 0.05  # the expectation is kept
    assert drop.eval()(x) is x and DropPath(0.0)(x) is x


def test_layerscale_scales_each_channel():
    torchvision = pytest.importorskip("torchvision")
    scale = only(build("layerscale(1e-6)", (8, 3, 3)))
    assert scale.scale.shape == (8, 1, 1) and torch.all(scale.scale == 1e-6)
    block = torchvision.models.convnext.CNBlock(8, layer_scale=1e-6, stochastic_depth_prob=0.0)
    assert block.layer_scale.shape == scale.scale.shape
    assert only(build("layerscale(0.1, dim=-1)", (5, 8))).scale.shape == (8,)


# The vision transformer's layers --------------------------------------------------------------------

def test_attention_is_torchs_multihead_attention_with_its_initialisation():
    torch.manual_seed(0)
    ours = only(archdsl.build("attention(4)", input_shape=(5, 8)))
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(8, 4, batch_first=True)
    assert isinstance(ours, SelfAttention)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)  # same init, drawn in the same order as torch's
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x, x, x, need_weights=False)[0])


def test_class_token_and_position_embedding_as_in_vit():
    net = archdsl.build("classtoken posembedding", input_shape=(4, 8))
    cls, pos = net
    assert cls.token.shape == (1, 1, 8) and torch.all(cls.token == 0)
    assert pos.embedding.shape == (1, 5, 8) and 0.01 < pos.embedding.std().item() < 0.04
    x = torch.randn(2, 4, 8)
    expected = torch.cat([cls.token.expand(2, -1, -1), x], dim=1) + pos.embedding
    torch.testing.assert_close(net(x), expected)


# Expressions ---------------------------------------------------------------------------------------

def channels(expr: str, **params) -> int:
    """The channel count a conv gets from an expression."""
    decls = "".join(f"param {k} = {v}\n" for k, v in params.items())
    return archdsl.trace(f"input 1x4x4\n{decls}conv({expr}, k1)").output_shape[1]


@pytest.mark.parametrize("expr, value", [
    ("max(1, 7 // 4)", 1), ("min(8, 3, 5)", 3), ("round(2.5)", 2), ("round(3.5)", 4), ("floor(7 / 2)", 3),
    ("ceil(7 / 2)", 4), ("abs(-3)", 3), ("max(2, 9) - min(1, 4)", 8),
])
def test_functions(expr, value):
    assert channels(expr) == value


def test_make_divisible_is_torchvisions():
    mobilenet = pytest.importorskip("torchvision.models._utils")
    for v in [1, 3, 7, 8, 12, 17, 18, 24, 36, 58, 72, 96, 100, 144, 240, 576, 1000]:
        assert channels(f"make_divisible({v}, 8)") == mobilenet._make_divisible(v, 8), v
        assert channels(f"max(8, floor({v} / 8 + 1 / 2) * 8, ceil(0.9 * {v} / 8) * 8)") == \
            mobilenet._make_divisible(v, 8), v  # the same with min/max/floor/ceil, as docs/language.md says


@pytest.mark.parametrize("cond, taken", [
    ("a and b", False), ("a or b", True), ("not b", True), ("a and not b", True), ("not a or b", False),
    ("s == 1 and c == 8", True), ("s > 1 or c != 8", False), ("mode == \"same\"", True), ("mode != \"same\"", False),
])
def test_boolean_operators(cond, taken):
    text = (f"input 8\nparam a = true\nparam b = false\nparam s = 1\nparam c = 8\n"
            f"block pick(mode = \"same\") {{ if {cond} [relu] else [sigmoid] }}\npick")
    assert archdsl.trace(text)[1].module == ("ReLU()" if taken else "Sigmoid()")


def test_or_and_and_decide_by_their_left_side_as_python_does():
    archdsl.trace("input 8\nparam a = true\nif a or 1 [relu]")  # the right side is not evaluated


def test_repeat_zero_times_and_with_an_index():
    assert len(archdsl.trace("input 8\nrelu [sigmoid] * 0")) == 1
    net = archdsl.trace("input 8\n[linear(4 + i)] * 3 as i")
    assert [r.output_shape for r in net] == [(1, 4), (1, 5), (1, 6)]
    nested = archdsl.trace("input 8\n[[linear(1 + 10 * i + j)] * 2 as j] * 2 as i")
    assert [r.output_shape[1] for r in nested] == [1, 2, 11, 12]


# Blocks that read their input ------------------------------------------------------------------------

RESIDUAL = """
block residual(out, stride = 1) {
    add([conv(out, k3, p1, stride=stride) batchnorm relu conv(out, k3, p1) batchnorm],
        [if stride > 1 or input.channels != out [conv(out, k1, stride=stride) batchnorm] else [identity]])
    relu
}
"""


def test_a_block_decides_its_projection_from_its_input():
    summary = archdsl.trace(f"input 8x8x8\n{RESIDUAL}\nresidual(8) residual(16) residual(16, 2) residual(16)")
    projections = [r for r in summary if r.kind == "path" and r.name.endswith("paths.1")]
    assert len(projections) == 4 and all(p.layer.startswith("[if stride > 1 or input.channels") for p in projections)
    assert [p.params for p in projections] == [0, 8 * 16 + 16 + 32, 16 * 16 + 16 + 32, 0]  # conv and batch norm
    assert summary.output_shape == (1, 16, 4, 4)


def test_input_sizes_and_argument_defaults_that_read_them():
    text = ("input 6x10x12\nblock b(wide = input.channels * 2) { conv(wide, k1) linear(input.height + input.width, "
            "pointwise=true) }\nb")
    assert archdsl.trace(text).output_shape == (1, 12, 10, 22)
    assert archdsl.trace("input 5x7\nlinear(input.features * input.rank)").output_shape == (1, 5, 14)


def test_a_shape_dependent_block_reports_its_mistake_after_the_rows_before_it():
    with pytest.raises(archdsl.ShapeError) as info:
        archdsl.trace("input 8\nrelu sigmoid\nblock b { linear(input.height) }\nb")
    e = info.value
    assert e.message == "input.height needs an input of at least 3 axes without the batch, but it is (8)"
    assert (e.span.line, e.span.column) == (3, 18) and e.notes == ("in block b, called at 4:1: b",)
    assert [r.layer for r in e.summary] == ["relu", "sigmoid"] and not e.summary.complete


def test_recursion_through_a_shape_dependent_block_is_refused():
    with pytest.raises(archdsl.ArchError, match="calls itself"):
        archdsl.trace("input 8\nblock a { linear(input.features) b }\nblock b { a }\na")


# Defaults -----------------------------------------------------------------------------------------------

def test_defaults_apply_where_the_call_gives_nothing():
    text = ("input 3x8x8\ndefault conv(bias=false)\ndefault batchnorm(eps=0.001)\n"
            "block b { default conv(k1) conv(4) }\n"
            "conv(4, k3) conv(4, k3, bias=true) batchnorm b")
    convs = [m for m in archdsl.build(text).modules() if isinstance(m, nn.Conv2d)]
    assert [(c.bias is None, c.kernel_size) for c in convs] == [(True, (3, 3)), (False, (3, 3)), (True, (1, 1))]
    bn = next(m for m in archdsl.build(text).modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.eps == 0.001


def test_blocks_of_included_files_do_not_see_the_specs_defaults(tmp_path):
    (tmp_path / "lib.arch").write_text("default conv(k3)\nblock b { conv(4) }\n")
    spec = tmp_path / "net.arch"
    spec.write_text('include "lib.arch"\ninput 2x8x8\ndefault conv(bias=false)\nb')
    (conv,) = [m for m in archdsl.build(spec).modules() if isinstance(m, nn.Conv2d)]
    assert conv.kernel_size == (3, 3) and conv.bias is not None  # its own file's default, not the spec's


def test_block_arguments_named_like_window_arguments_take_tags():
    net = archdsl.build("input 3x9x9\nblock cbr(c, kernel, stride = 1) { conv(c, kernel, stride) }\ncbr(4, k3x1, s2)")
    conv = net[0][0]
    assert (conv.kernel_size, conv.stride) == ((3, 1), (2, 2))


def test_values_are_exact_fractions_throughout():
    from archdsl.api import plan
    assert plan("input 8\nparam r = make_divisible(35 / 2, 4)\nrelu").params["r"] == Fraction(16)
