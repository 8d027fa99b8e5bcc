"""Traced shapes and built models against the seeds, and against torch itself."""

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torch import nn

import archdsl
import seeds
from archdsl.api import plan

SPECS = Path(__file__).resolve().parent.parent / "specs"


def top_level(summary):
    return [(r.module.split("(")[0], r.output_shape) for r in summary if r.depth == 0]


@pytest.mark.parametrize("name, golden, params", [
    ("lenet", seeds.LENET, {}),
    ("alexnet", seeds.ALEXNET, {}),
    ("vgg", seeds.VGG11, {}),
    ("vgg", seeds.vgg11_ratio(4), {"ratio": 4}),
])
def test_traced_shapes_equal_the_seeds(name, golden, params):
    summary = archdsl.trace(SPECS / f"{name}.arch", **params)
    assert top_level(summary) == golden


@pytest.mark.parametrize("name, params, count", [
    ("lenet", {}, seeds.PARAMS["lenet"]),
    ("alexnet", {}, seeds.PARAMS["alexnet"]),
    ("vgg", {}, seeds.PARAMS["vgg"]),
    ("vgg", {"ratio": 4}, seeds.PARAMS["vgg-ratio4"]),
])
def test_parameter_counts_equal_the_seeds(name, params, count):
    assert archdsl.trace(SPECS / f"{name}.arch", **params).total_params == count


@pytest.mark.parametrize("name, hand_written", [
    ("lenet", seeds.lenet), ("alexnet", seeds.alexnet), ("vgg", lambda: seeds.vgg(4)),
])
def test_build_equals_the_hand_written_model(name, hand_written):
    """Same printout, same state_dict keys, and with the same seed the same initial weights."""
    torch.manual_seed(0)
    ours = archdsl.build(SPECS / f"{name}.arch", **({"ratio": 4} if name == "vgg" else {}))
    torch.manual_seed(0)
    theirs = hand_written()
    assert type(ours) is nn.Sequential
    assert str(ours) == str(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_seed_loop_prints_the_seed_shapes():
    """d2l's own loop over the built net prints what the AlexNet seed printed."""
    net = archdsl.build(SPECS / "alexnet.arch")
    X = torch.randn(1, 1, 224, 224)
    out = io.StringIO()
    with redirect_stdout(out), torch.no_grad():
        for layer in net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)
    expected = [f"{cls} output shape:\t torch.Size({list(shape)})" for cls, shape in seeds.ALEXNET]
    assert out.getvalue().splitlines() == expected


@pytest.mark.parametrize("spec", sorted(SPECS.rglob("*.arch")),
                         ids=lambda p: str(p.relative_to(SPECS)))
def test_traced_shapes_equal_a_real_forward_pass(spec):
    """The property that makes tracing trustworthy: every row's shape is what torch computes."""
    summary = archdsl.trace(spec, batch=2)
    net = archdsl.build(spec).eval()
    seen = {}
    for name, module in net.named_modules():
        if name:
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
    with torch.no_grad():
        net(torch.randn(summary.input_shape))
    assert {r.name: r.output_shape for r in summary} == seen


def test_rows_carry_the_spec_text_and_place():
    rows = archdsl.trace(SPECS / "alexnet.arch").rows
    first = rows[0]
    assert (first.layer, first.line, first.column, first.kind, first.depth) == ("conv(96, k11, s4, p1)", 13, 1, "layer", 0)
    assert first.module == "Conv2d(1, 96, kernel_size=(11, 11), stride=(4, 4), padding=(1, 1))"
    assert first.params == 96 * 1 * 11 * 11 + 96


def test_block_rows_come_before_their_layers_and_name_the_modules():
    summary = archdsl.trace(SPECS / "vgg.arch", ratio=4)
    rows = summary.rows
    assert [(r.name, r.kind, r.depth) for r in rows[:4]] == [
        ("0", "block", 0), ("0.0", "layer", 1), ("0.1", "layer", 1), ("0.2", "layer", 1)]
    assert rows[0].layer == "vgg(1, 64 / ratio)"
    assert rows[1].layer == "conv(channels, k3, p1)" and rows[1].module.startswith("Conv2d(1, 16,")
    assert rows[0].params == rows[1].params  # a block counts what is inside it
    assert summary.total_params == seeds.PARAMS["vgg-ratio4"]


def test_batch_is_the_first_axis():
    summary = archdsl.trace(SPECS / "lenet.arch", batch=32)
    assert summary.input_shape == (32, 1, 28, 28)
    assert all(r.output_shape[0] == 32 for r in summary)


def test_tracing_allocates_no_real_memory():
    """At 4096x4096 the first VGG activation alone would be 4 GiB; on meta it is nothing."""
    summary = archdsl.trace(SPECS / "vgg.arch", input_shape=(1, 4096, 4096))
    assert summary[1].output_shape == (1, 64, 4096, 4096)
    assert summary.output_shape == (1, 10)
    net_params = archdsl.trace(SPECS / "vgg.arch", input_shape="1x4096x4096").total_params
    assert net_params > 8 * 10**9  # the first linear alone: 512*128*128 x 4096 weights, never allocated


def test_input_shape_replaces_the_spec_input():
    assert archdsl.trace(SPECS / "vgg.arch", input_shape="1x96x96", ratio=4).output_shape == (1, 10)
    assert archdsl.trace(SPECS / "vgg.arch", input_shape="1x96x96", ratio=4)[-1].output_shape == (1, 10)


@pytest.mark.parametrize("text, module", [
    ("input 3x100; conv(8, k3)", "Conv1d"),
    ("input 3x16x16; conv(8, k3)", "Conv2d"),
    ("input 3x8x8x8; conv(8, k3)", "Conv3d"),
    ("input 3x100; maxpool(2)", "MaxPool1d"),
    ("input 3x8x8x8; avgpool(2)", "AvgPool3d"),
    ("input 20; batchnorm", "BatchNorm1d"),
    ("input 3x16x16; batchnorm", "BatchNorm2d"),
    ("input 3x16x16; adaptiveavgpool", "AdaptiveAvgPool2d"),
])
def test_layers_pick_their_dimension_from_the_input_rank(text, module):
    assert archdsl.trace(text)[0].module.startswith(module + "(")


def test_arguments_positional_tagged_and_keyword_mean_the_same():
    a = archdsl.build("input 3x32x32; conv(16, 5, 2, 1)")
    b = archdsl.build("input 3x32x32; conv(16, k5, s2, p1)")
    c = archdsl.build("input 3x32x32; conv(channels=16, kernel_size=5, stride=2, padding=1)")
    assert str(a) == str(b) == str(c)


def test_keyword_arguments_reach_the_module():
    net = archdsl.build("input 4x9x9; conv(8, k3, d2, g2, bias=false) maxpool(3, s1, p1, ceil=true) dropout(p=0.25)")
    conv, pool, drop = net
    assert (conv.in_channels, conv.dilation, conv.groups, conv.bias) == (4, (2, 2), 2, None)
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 1, 1, True)
    assert drop.p == 0.25


def test_maxpool_stride_defaults_to_the_kernel():
    assert archdsl.build("input 1x8x8; maxpool(2)")[0].stride == 2


def test_exact_arithmetic_in_arguments():
    net = archdsl.build("input 3x8x8; param w = 3; conv(w * 32 / 3 + 2 // 3, k1) flatten linear(10 - -2)", w=6)
    assert net[0].out_channels == 64 and net[2].out_features == 12
    assert archdsl.build("input 8; dropout(1 / 4)")[0].p == 0.25


def test_params_default_override_and_chain():
    spec = "input 1x8x8\nparam width = 8\nparam wide = width * 2\nconv(wide, k3)"
    assert archdsl.build(spec)[0].out_channels == 16
    assert archdsl.build(spec, width=4)[0].out_channels == 8
    assert archdsl.build(spec, wide=3)[0].out_channels == 3


def test_block_defaults_and_lexical_scope():
    spec = """
    input 3x8x8
    param c = 4
    block unit(channels, k = 3) { conv(channels, kernel=k, padding=k // 2) relu }
    block pair(c) { unit(c) unit(c, k=1) }   # this c is the block's own
    pair(c * 2)
    """
    net = archdsl.build(spec)
    pair = net[0]
    assert [m.out_channels for m in pair.modules() if isinstance(m, nn.Conv2d)] == [8, 8]
    assert [m.kernel_size for m in pair.modules() if isinstance(m, nn.Conv2d)] == [(3, 3), (1, 1)]


def test_repeat_unrolls_inline_and_nests():
    net = archdsl.build("input 4; [[linear(4) relu] * 2 dropout] * 3")
    assert len(net) == 15 and all(type(m) is not nn.Sequential for m in net)


def test_blocks_without_parameters_and_in_repeats():
    net = archdsl.build("input 2x8x8; block stem { conv(4, k3, p1) relu }; [stem] * 2 flatten linear(3)")
    assert [type(m).__name__ for m in net] == ["Sequential", "Sequential", "Flatten", "Linear"]
    assert net[1][0].in_channels == 4


def test_spec_from_path_object_and_text_agree():
    text = (SPECS / "lenet.arch").read_text()
    assert [r.output_shape for r in archdsl.trace(text)] == [r.output_shape for r in archdsl.trace(SPECS / "lenet.arch")]
    assert archdsl.trace(str(SPECS / "lenet.arch")).spec.endswith("lenet.arch")


def test_recipe_statement_is_parsed_and_checked():
    resolved = plan(SPECS / "vgg.arch")
    assert resolved.recipe.to_dict() == {"dataset": "fashion-mnist", "resize": 224, "batch_size": 128, "lr": 0.05,
                                     "epochs": 10}
    assert plan(SPECS / "lenet.arch").recipe.resize is None
    assert plan("input 4; linear(2)").recipe is None


def test_summary_json_and_table():
    summary = archdsl.trace(SPECS / "alexnet.arch")
    data = summary.to_dict()
    assert data["input_shape"] == [1, 1, 224, 224] and data["total_params"] == 46_764_746
    first = data["layers"][0]
    assert first["input_shape"] == [1, 1, 224, 224] and first["trainable"] == 11712
    assert {k: first[k] for k in ("index", "name", "depth", "kind", "layer", "module", "output_shape", "params",
                                  "file", "line", "column")} == {
        "index": 1, "name": "0", "depth": 0, "kind": "layer", "layer": "conv(96, k11, s4, p1)",
        "module": "Conv2d(1, 96, kernel_size=(11, 11), stride=(4, 4), padding=(1, 1))",
        "output_shape": [1, 96, 54, 54], "params": 11712, "file": str(SPECS / "alexnet.arch"), "line": 13, "column": 1}
    table = str(summary)
    assert "Total params: 46,764,746" in table and "Total mult-adds: 938.75 M" in table
    assert "MaxPool2d(kernel_size=3, stride=2)" in summary.table(columns="default,module")


def test_notebooks_display_the_table():
    summary = archdsl.trace(SPECS / "lenet.arch")
    page = summary._repr_html_()
    assert page.count("<tr>") == 1 + len(summary) and "Total params: 61,706" in page
    assert "Linear(in_features=400, out_features=120)" in summary.to_html(columns="default,module")
