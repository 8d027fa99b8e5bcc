"""Parallel paths (concat, add), conditionals, includes, the standard library of blocks,
d2l's modern CNNs and torchvision's classics, each checked against torch itself."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import archdsl
import seeds
from archdsl import ArchError, ShapeError
from archdsl.api import plan
from archdsl.modules import Add, Concat

SPECS = Path(__file__).resolve().parent.parent / "specs"


def top_level(summary):
    return [(r.module.split("(")[0], r.output_shape) for r in summary if r.depth == 0]


def copy_by_order(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter and buffer of src into dst, pairing them in definition order."""
    a, b = src.state_dict(), dst.state_dict()
    assert len(a) == len(b)
    with torch.no_grad():
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            assert va.shape == vb.shape, (ka, kb)
            vb.copy_(va)


# The d2l networks ----------------------------------------------------------------

@pytest.mark.parametrize("name, golden", [
    ("nin", seeds.NIN), ("googlenet", seeds.GOOGLENET), ("resnet18", seeds.RESNET18),
    ("densenet", seeds.DENSENET), ("lenet-bn", seeds.LENET_BN),
])
def test_modern_cnns_print_d2l_shapes(name, golden):
    assert top_level(archdsl.trace(SPECS / f"{name}.arch")) == golden


@pytest.mark.parametrize("name", sorted(seeds.MODERN_RECIPES))
def test_modern_cnns_carry_d2l_recipes(name):
    resize, batch, lr, epochs = seeds.MODERN_RECIPES[name]
    recipe = plan(SPECS / f"{name}.arch").recipe
    assert (recipe.dataset, recipe.resize, recipe.batch_size, recipe.lr, recipe.epochs) == (
        "fashion-mnist", resize, batch, lr, epochs)


# Blocks of the standard library against d2l's own modules -------------------------

class D2LInception(nn.Module):
    def __init__(self, in_channels, c1, c2, c3, c4):
        super().__init__()
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


class D2LResidual(nn.Module):
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(num_channels)
        self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


def d2l_conv_block(input_channels, num_channels):
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class D2LDenseBlock(nn.Module):
    def __init__(self, num_convs, input_channels, num_channels):
        super().__init__()
        self.net = nn.Sequential(*[d2l_conv_block(num_channels * i + input_channels, num_channels)
                                   for i in range(num_convs)])

    def forward(self, X):
        for blk in self.net:
            X = torch.cat((X, blk(X)), dim=1)
        return X


@pytest.mark.parametrize("spec, d2l, shape, out", [
    ("include inception; inception(64, 96, 128, 16, 32, 32)", lambda: D2LInception(192, 64, (96, 128), (16, 32), 32),
     (2, 192, 12, 12), (2, 256, 12, 12)),
    ("include resnet; residual(3)", lambda: D2LResidual(3, 3), (4, 3, 6, 6), (4, 3, 6, 6)),
    ("include resnet; residual(6, 2, true)", lambda: D2LResidual(3, 6, use_1x1conv=True, strides=2),
     (4, 3, 6, 6), (4, 6, 3, 3)),
    ("include densenet; dense_block(2, 10)", lambda: D2LDenseBlock(2, 3, 10), (4, 3, 8, 8), (4, 23, 8, 8)),
    ("include densenet; transition(10)", lambda: nn.Sequential(
        nn.BatchNorm2d(23), nn.ReLU(), nn.Conv2d(23, 10, kernel_size=1), nn.AvgPool2d(kernel_size=2, stride=2)),
     (4, 23, 8, 8), (4, 10, 4, 4)),
])
def test_library_blocks_compute_what_d2l_computes(spec, d2l, shape, out):
    ours = archdsl.build(spec, input_shape=shape[1:])
    theirs = d2l()
    copy_by_order(theirs, ours)
    x = torch.randn(shape)
    for mode in (True, False):  # batch norm in training and in eval mode
        ours.train(mode), theirs.train(mode)
        y = ours(x)
        assert y.shape == out
        torch.testing.assert_close(y, theirs(x))


# torchvision, exactly ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18"])
def test_torchvision_parity(name):
    torchvision = pytest.importorskip("torchvision")
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    ours = archdsl.build(SPECS / "torchvision" / f"{name}.arch").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    copy_by_order(theirs, ours)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


# The join modules ----------------------------------------------------------------

def test_joins_are_small_plain_modules_with_readable_keys():
    net = archdsl.build("input 3x8x8; concat([identity], [conv(5, k1)]) add([conv(8, k3, p1)], [identity])")
    concat, add = net
    assert type(concat) is Concat and type(add) is Add
    assert list(net.state_dict()) == ["0.paths.1.0.weight", "0.paths.1.0.bias", "1.paths.0.0.weight",
                                      "1.paths.0.0.bias"]
    x = torch.randn(2, 3, 8, 8)
    y = concat(x)
    assert torch.equal(y[:, :3], x)
    torch.testing.assert_close(add(y), add.paths[0](y) + y)


def test_joins_nest_and_work_in_blocks_and_repeats():
    spec = """
    input 4x8x8
    block unit(c) { add([concat([conv(c / 2, k1)], [conv(c / 2, k3, p1)])], [identity]) }
    [unit(4)] * 3
    """
    summary = archdsl.trace(spec)
    assert [r.kind for r in summary if r.depth == 0] == ["block"] * 3
    assert [r.kind for r in summary][:4] == ["block", "join", "path", "join"]
    assert summary.output_shape == (1, 4, 8, 8)


def test_concat_on_another_axis():
    assert archdsl.trace("input 5; concat([linear(3)], [linear(4)], dim=-1)").output_shape == (1, 7)


def test_if_chooses_a_path():
    spec = "input 2x8x8\nparam down = false\nif down [maxpool(2)] else [identity]\nif down [relu]"
    assert archdsl.trace(spec).output_shape == (1, 2, 8, 8) and len(archdsl.trace(spec)) == 1
    assert archdsl.trace(spec, down=True).output_shape == (1, 2, 4, 4)
    assert archdsl.trace("input 4; param n = 3; if n >= 2 [linear(1)] else [linear(2)]").output_shape == (1, 1)


def test_json_marks_blocks_joins_paths_and_layers():
    rows = archdsl.trace(SPECS / "resnet18.arch").to_dict()["layers"]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"block", "join", "path", "layer"}
    first_join = next(r for r in rows if r["kind"] == "join")
    assert first_join["name"] == "1.0.0" and first_join["layer"] == "add([…], […])"
    assert first_join["file"].endswith("stdlib/resnet.arch")


# Errors at joins and includes -----------------------------------------------------

def error_of(spec, **kw):
    with pytest.raises(ArchError) as info:
        archdsl.trace(spec, **kw)
    return info.value


def test_concat_shape_error_at_the_join_with_each_path():
    e = error_of("input 3x8x8\nconcat([conv(4, k1)],\n       [conv(4, k3)])")
    assert isinstance(e, ShapeError) and (e.span.line, e.span.column) == (2, 1)
    assert e.message == ("concat gets (1, 3, 8, 8): concat needs paths that agree on every axis but 1: "
                         "path 1 gives (1, 4, 8, 8), path 2 gives (1, 4, 6, 6)")
    assert [r.kind for r in e.summary] == ["path", "layer", "path", "layer"]


def test_add_shape_error_at_the_join():
    e = error_of("input 3x8x8\nrelu add([conv(4, k1)], [identity])")
    assert (e.span.line, e.span.column) == (2, 6)
    assert "add needs paths that agree in shape: path 1 gives (1, 4, 8, 8), path 2 gives (1, 3, 8, 8)" in e.message


def test_residual_without_projection_needs_matching_channels():
    e = error_of("include resnet\ninput 3x8x8\nresidual(6)")
    assert e.span.source.name == "stdlib/resnet.arch" and "add needs paths that agree in shape" in e.message
    assert e.notes == ("in block residual, called at 3:1: residual(6)",)


@pytest.mark.parametrize("text, line, column, words", [
    ("input 4\nconcat([relu])", 2, 1, "concat joins two or more paths"),
    ("input 4\nrelu([relu], [relu])", 2, 6, "relu takes no [ ... ] path arguments"),
    ("input 4\nblock b { relu }\nb([relu])", 3, 3, "block b takes no [ ... ] path arguments"),
    ("input 4\nif 1 [relu]", 2, 4, "an if condition must be true or false, not 1"),
    ("input 4\ninclude resnt", 2, 1, "no block library 'resnt'; did you mean 'resnet'?"),
    ('input 4\ninclude "nowhere.arch"', 2, 1, "cannot find nowhere.arch to include"),
    ("include resnet\nblock residual { relu }\ninput 4\nrelu", 2, 7, "'residual' is defined twice"),
])
def test_branch_and_include_errors(text, line, column, words):
    e = error_of(text)
    assert words in e.message and (e.span.line, e.span.column) == (line, column)


def test_include_files_relative_to_the_spec_and_cycles(tmp_path, monkeypatch):
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "mine.arch").write_text('include "more.arch"\nblock mine(c) { conv(c, k1) twice }\n')
    (tmp_path / "blocks" / "more.arch").write_text("include resnet\nblock twice { relu relu }\n")
    spec = tmp_path / "net.arch"
    spec.write_text('include "blocks/mine.arch"\ninput 3x4x4\nmine(8) residual(8)\n')
    assert archdsl.trace(spec).output_shape == (1, 8, 4, 4)

    (tmp_path / "blocks" / "more.arch").write_text('include "mine.arch"\nblock twice { relu relu }\n')
    e = error_of(spec)
    assert e.message == "include cycle: mine.arch -> more.arch -> mine.arch"
    assert e.span.source.name.endswith("more.arch") and e.span.line == 1

    (tmp_path / "blocks" / "more.arch").write_text("block twice { relu relu }\nrelu\n")
    e = error_of(spec)
    assert "an included file may only define blocks" in e.message and e.span.line == 2
    assert e.notes == (f"included at {tmp_path / 'blocks' / 'mine.arch'}:1:1",)

    monkeypatch.chdir(tmp_path)  # spec text includes relative to the working directory
    (tmp_path / "blocks" / "more.arch").write_text("block twice { relu }\n")
    assert archdsl.trace('include "blocks/mine.arch"; input 2x4x4; mine(3)').output_shape == (1, 3, 4, 4)


def test_included_blocks_see_only_their_arguments():
    """A library block cannot pick up a param of the spec that happens to share a name."""
    e = error_of("include vgg\ninput 1x8x8\nparam channels = 4\nvgg_block(1, c)")
    assert "unknown name 'c'" in e.message
    assert archdsl.trace("include vgg\ninput 1x8x8\nparam channels = 4\nvgg_block(1, channels)").output_shape == (
        1, 4, 4, 4)
