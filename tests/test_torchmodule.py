"""The shape table of any nn.Module: against torchinfo (the oracle) on torchvision's models, and torch itself.

torchvision's models are built on meta (no weights), so each is traced and summarised in about a second.
"""

import json
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import archdsl
from archdsl.cli import app
from archdsl.errors import ArchError, ShapeError

torchinfo = pytest.importorskip("torchinfo")
models = pytest.importorskip("torchvision.models")

# torchvision's published mult-adds (its GFLOPS) where torchinfo undercounts: a linear layer on a sequence, attention
PUBLISHED = {"vit_b_16": 17.564e9}


def on_meta(name: str) -> nn.Module:
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet's "the default initialisation will change"
        return models.get_model(name, weights=None)


def torchinfo_stats(net: nn.Module, input_shape: tuple[int, ...]):
    return torchinfo.summary(net, input_data=torch.empty(input_shape, device="meta"), device="meta", verbose=0,
                             mode="eval")


def leaves(summary):
    return [(r.module.split("(")[0], list(r.input_shape), list(r.output_shape)) for r in summary if r.kind == "layer"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "googlenet", "vit_b_16"])
def test_torchvision_models_equal_torchinfo(name):
    """Totals and every leaf call's shapes; googlenet's aux heads run only in training: no rows, params counted."""
    summary = archdsl.trace(f"torchvision:{name}", "3x224x224")
    stats = torchinfo_stats(on_meta(name), (1, 3, 224, 224))
    assert summary.spec == f"torchvision:{name}" and summary.input_shape == (1, 3, 224, 224)
    assert summary.output_shape == (1, 1000)
    assert (summary.total_params, summary.trainable_params) == (stats.total_params, stats.trainable_params)
    assert leaves(summary) == [(i.class_name, i.input_size, i.output_size) for i in stats.summary_list
                               if i.is_leaf_layer and i.executed]
    assert summary.memory["forward_backward"] == stats.total_output_bytes
    if name in PUBLISHED:
        assert summary.total_mult_adds == pytest.approx(PUBLISHED[name], rel=0.005)
        assert summary.total_mult_adds > 10 * stats.total_mult_adds
    else:
        assert summary.total_mult_adds == stats.total_mult_adds
    if name == "googlenet":
        assert not any(r.name.startswith("aux") for r in summary)
        assert summary[0].params > sum(r.params for r in summary if r.depth == 1)  # the aux heads' weights


def test_rows_nest_as_the_calls_do():
    summary = archdsl.trace("torchvision:resnet18", (3, 64, 64), batch=2)
    root, conv1 = summary[0], summary[1]
    assert (root.name, root.depth, root.kind, root.layer, root.module) == ("", 0, "block", "ResNet", "ResNet()")
    assert (conv1.name, conv1.depth, conv1.kind, conv1.layer, conv1.span) == ("conv1", 1, "layer", "conv1", None)
    assert conv1.module == "Conv2d(3, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)"
    assert conv1.kernel == (7, 7) and conv1.output_bytes == 2 * 64 * 32 * 32 * 4
    assert conv1.input_shape == (2, 3, 64, 64) and root.output_shape == (2, 1000)
    # BasicBlock calls self.relu twice: two rows, in call order, each nested in the block's row
    block = [r for r in summary if r.name.startswith("layer1.0.")]
    assert [r.layer for r in block] == ["conv1", "bn1", "relu", "conv2", "bn2", "relu"]
    assert all(r.depth == 3 for r in block) and summary.rows[block[0].index - 2].name == "layer1.0"
    for row in summary:  # a container counts what ran inside it
        if row.kind == "block" and row.depth:
            inner = [r for r in summary.rows[row.index:] if r.depth > row.depth]
            inner = inner[: next((i for i, r in enumerate(summary.rows[row.index:]) if r.depth <= row.depth),
                                 len(inner))]
            assert row.params == sum(r.params for r in inner if r.depth == row.depth + 1), row.name
            assert row.mult_adds == sum(r.mult_adds for r in inner if r.depth == row.depth + 1), row.name


class Shared(nn.Module):
    """One Linear called twice, a weight tied to another Linear, a module never called, a functional op,
    a buffer, and a dict of tuple outputs."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(8)
        self.proj = nn.Linear(8, 8)
        self.tied = nn.Linear(8, 8, bias=False)
        self.tied.weight = self.proj.weight
        self.unused = nn.Linear(8, 100)
        self.register_buffer("scale", torch.ones(8))

    def forward(self, x):  # (B, 8)
        x = self.proj(self.proj(self.norm(x))) * self.scale
        return {"out": self.tied(x)[:, :4], "both": (x, x)}


def test_shared_and_repeated_modules_count_once_and_compute_twice():
    net = Shared()
    summary = archdsl.trace(net, "8", batch=3)
    assert [(r.name, r.depth, r.params) for r in summary] == [
        ("", 0, 16 + 72 + 900), ("norm", 1, 16), ("proj", 1, 72), ("proj", 1, 0), ("tied", 1, 0)]
    assert summary.total_params == sum(p.numel() for p in net.parameters())  # torch counts a tied weight once
    assert summary.spec == "Shared" and summary.output_shape == (3, 4)  # the first tensor of the dict: "out"
    stats = torchinfo.summary(Shared(), input_data=torch.zeros(3, 8), verbose=0)
    assert summary.total_mult_adds == stats.total_mult_adds  # both calls of proj count


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, x):  # (B, 3, H, W) -> a tuple
        y = self.inner(x)
        return y.flatten(1), y


def test_a_functional_op_shows_in_its_container_and_a_tuple_shows_its_first_tensor():
    summary = archdsl.trace(Wrapper(), "3x6x6")
    assert [(r.name, r.output_shape) for r in summary] == [
        ("", (1, 64)), ("inner", (1, 4, 4, 4)), ("inner.0", (1, 4, 4, 4)), ("inner.1", (1, 4, 4, 4))]


def test_the_module_is_untouched_and_no_tensor_is_copied(monkeypatch):
    net = Shared()
    net.norm.eval()
    calls = []
    net.proj.register_forward_hook(lambda m, args, out: calls.append(out.device.type))
    before = {name: p.clone() for name, p in net.state_dict().items()}
    params = [(id(p), p.device, p.requires_grad) for p in net.parameters()]
    modes = [m.training for m in net.modules()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()]

    def refuse(self, memo):
        raise AssertionError("a tensor's data was copied")

    with monkeypatch.context() as patch:  # every tensor reaches the copy through the memo, as a meta tensor
        patch.setattr(torch.Tensor, "__deepcopy__", refuse)
        patch.setattr(nn.Parameter, "__deepcopy__", refuse)
        archdsl.trace(net, "8")
    assert [(id(p), p.device, p.requires_grad) for p in net.parameters()] == params
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()] == hooks
    assert calls == ["meta", "meta"]  # the user's own hook runs on the copy, as part of its forward


def test_frozen_parameters_and_the_models_dtype():
    net = on_meta("resnet18")
    net.requires_grad_(False)
    net.fc.requires_grad_(True)
    summary = archdsl.trace(net, "3x64x64")
    stats = torchinfo_stats(net, (1, 3, 64, 64))
    assert (summary.trainable_params, summary.frozen_params) == (stats.trainable_params,
                                                                  stats.total_params - stats.trainable_params)
    assert summary.trainable_params == 512 * 1000 + 1000
    half = archdsl.trace(nn.Sequential(nn.Linear(4, 2)).half(), "4")
    assert half[1].output_bytes == 2 * 2  # float16 outputs: 2 bytes an element


def test_a_lazy_module_gets_its_sizes_from_the_forward_and_stays_lazy():
    net = nn.Sequential(nn.LazyConv2d(8, 3), nn.LazyBatchNorm2d(), nn.Flatten(), nn.LazyLinear(3))
    summary = archdsl.trace(net, "3x10x10", batch=2)
    assert all(isinstance(p, nn.parameter.UninitializedParameter) for p in net.parameters())
    net(torch.zeros(2, 3, 10, 10))  # torch sizes them on a real batch: the oracle
    assert summary.total_params == sum(p.numel() for p in net.parameters())
    assert [r.module for r in summary][1:] == [repr(m) for m in net]


def test_a_reference_imports_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        from torch import nn
        net = nn.Sequential(nn.Linear(4, 3))
        class Net(nn.Sequential):
            def __init__(self):
                super().__init__(nn.Linear(4, 5))
        def make():
            return nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        def broken():
            raise ValueError("width must be even\\nsecond line")
        def needs(width, depth=2):
            return nn.Linear(4, width)
        def nothing():
            return {"a": 1}
        WIDTH = 3
    """))
    path = list(sys.path)
    assert archdsl.trace("mymodels:net", "4").output_shape == (1, 3)
    assert archdsl.trace("mymodels:Net", "4").output_shape == (1, 5)
    assert archdsl.trace("mymodels:make", "4").spec == "mymodels:make"
    assert sys.path == path
    for ref, message in [
        ("mymodels:mak", "mymodels has no attribute 'mak'; did you mean 'make'?"),
        ("mymodels:broken", "mymodels:broken raised ValueError: width must be even"),
        ("mymodels:nothing", "mymodels:nothing returned a value of type dict, not an nn.Module"),
        ("mymodels:WIDTH", "mymodels:WIDTH is a value of type int, not an nn.Module nor a class or function that "
                           "makes one"),
        ("nosuchpkg.models:make", "cannot import 'nosuchpkg.models': No module named 'nosuchpkg'"),
    ]:
        with pytest.raises(ArchError) as e:
            archdsl.trace(ref, "4")
        assert e.value.message == message
    with pytest.raises(ArchError) as e:
        archdsl.trace("mymodels:needs", "4")
    assert e.value.message.startswith("mymodels:needs raised TypeError: needs() missing 1 required")
    assert e.value.notes == ("archdsl calls it with no arguments; it needs width: give them defaults, or write a "
                             "function that makes the model",)
    # a file of that name is a spec; spec text, colons in its comments and all, is never a reference
    (tmp_path / "mymodels:make").write_text("input 4\nlinear(7)\n")
    assert archdsl.trace("mymodels:make").output_shape == (1, 7)
    assert archdsl.trace("input 4 # see: mymodels:make\nlinear(2)").output_shape == (1, 2)
    with pytest.raises(ArchError) as e:
        archdsl.trace("mymodels:small.arch")
    assert e.value.message.startswith("no such spec file")


def test_torchvision_names_and_no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(ArchError, match=r"^torchvision has no model 'resnet5'; close names: resnet50, "):
        archdsl.trace("torchvision:resnet5", "3x64x64")
    with pytest.raises(ArchError, match=r"^torchvision has no model 'nosuch'; torchvision.models.list_models\(\) "
                                        r"has \d+$"):
        archdsl.trace("torchvision:nosuch", "3x64x64")
    # a detection model's pretrained backbone is not fetched (its forward on meta is another matter)
    with pytest.raises(ShapeError):
        archdsl.trace("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "3x64x64")


def test_a_module_needs_an_input_shape_and_has_no_params_nor_build():
    with pytest.raises(ArchError, match=r"^torchvision:resnet18 is a module.*pass --input CxHxW \(input_shape= in "
                                        r"Python\)"):
        archdsl.trace("torchvision:resnet18")
    with pytest.raises(ArchError, match=r"^Linear is a module, which has no params to set; ratio= \(--set\)"):
        archdsl.trace(nn.Linear(2, 2), "2", ratio=4)
    with pytest.raises(ArchError, match=r"^torchvision:resnet18 is a module already: build compiles a spec"):
        archdsl.build("torchvision:resnet18")
    with pytest.raises(ArchError, match=r"^Linear is a module already"):
        archdsl.build(nn.Linear(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.jit.script is deprecated"
        scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(ArchError, match=r"^RecursiveScriptModule is a TorchScript module"):
        archdsl.trace(scripted, "2")


def test_a_failing_forward_names_the_innermost_module_with_the_rows_so_far():
    net = on_meta("resnet18")
    with torch.device("meta"):
        net.layer1[0].conv1 = nn.Conv2d(5, 64, 3, padding=1, bias=False)
    with pytest.raises(ShapeError) as e:
        archdsl.trace(net, "3x224x224")
    assert e.value.message.startswith("layer1.0.conv1 (Conv2d) gets (1, 64, 56, 56): expected input[1, 64, 56, 56] "
                                      "to have 5 channels")
    partial = e.value.summary
    assert partial.complete is False
    # the calls still running keep their rows, without an output, so that the nesting reads as it did
    assert [(r.name, r.depth) for r in partial] == [("", 0), ("conv1", 1), ("bn1", 1), ("relu", 1), ("maxpool", 1),
                                                    ("layer1", 1), ("layer1.0", 2), ("layer1.0.conv1", 3)]
    assert [r.index for r in partial if r.output_shape == ()] == [1, 6, 7, 8]
    assert partial.total_params == 64 * 3 * 7 * 7 + 128  # up to the failing layer


class Mismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 5)

    def forward(self, x):
        return self.a(x) + self.b(x)  # a functional op fails: the container that holds it is named


class ReadsValues(nn.Module):
    def forward(self, x):
        return x * x.sum().item()


def test_a_functional_op_or_a_value_read_that_fails():
    with pytest.raises(ShapeError, match=r"^Mismatch gets \(1, 4\): Attempting to broadcast a dimension of length 5"):
        archdsl.trace(Mismatch(), "4")
    with pytest.raises(ShapeError) as e:
        archdsl.trace(ReadsValues(), "4")
    assert "meta" in e.value.message and "cannot be traced" in e.value.notes[0]


def test_a_forward_that_calls_modules_without_end_is_stopped(monkeypatch):
    monkeypatch.setenv("ARCHDSL_MAX_LAYERS", "50")
    with pytest.raises(ShapeError, match=r"called modules more than 50 times") as e:
        archdsl.trace("torchvision:resnet18", "3x64x64")
    assert len(e.value.summary) == 50


runner = CliRunner()


def test_the_shapes_command_takes_a_reference():
    r = runner.invoke(app, ["shapes", "torchvision:resnet18", "--input", "3x64x64", "--depth", "1"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "torchvision:resnet18: input (1, 3, 64, 64)" and "Total params: 11,689,512" in r.stdout
    assert lines[4].split()[:2] == ["1", "ResNet"] and lines[5].split()[:2] == ["2", "conv1"]
    r = runner.invoke(app, ["shapes", "torchvision:resnet18", "--input", "3x64x64", "-f", "json"])
    data = json.loads(r.stdout)
    assert data["output_shape"] == [1, 1000] and data["layers"][1]["name"] == "conv1"
    r = runner.invoke(app, ["shapes", "torchvision:resnet18", "--input", "5x64x64"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: conv1 (Conv2d) gets (1, 5, 64, 64): expected input[1, 5, 64, 64] to have 3 channels" in r.stderr
    assert "Params up to the failing layer: 0" in r.stdout
    r = runner.invoke(app, ["shapes", "torchvision:resnet18"])
    assert r.exit_code == 2 and "pass --input CxHxW" in r.stderr
