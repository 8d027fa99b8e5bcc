"""The `archdsl` command, through typer's CliRunner and as a real process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archdsl.cli import app

SPECS = Path(__file__).resolve().parent.parent / "specs"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_shapes_table():
    r = run("shapes", SPECS / "alexnet.arch")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"{SPECS / 'alexnet.arch'}: input (1, 1, 224, 224)"
    assert lines[2].split() == ["#", "layer", "output", "shape", "params", "mult-adds", "at"]
    first = lines[4]
    assert first.split()[:2] == ["1", "conv(96,"] and "(1, 96, 54, 54)" in first
    assert first.endswith("11,712    34.15 M  13:1")
    assert "Total params: 46,764,746" in r.stdout and "Output: (1, 10)" in r.stdout
    assert r.stderr.count(": warning: ") == 4  # d2l's AlexNet leaves rows unread at its first conv and 3 pools


def test_shapes_json_schema():
    r = run("shapes", SPECS / "vgg.arch", "--set", "ratio=4", "--format", "json", "--batch", "8")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["input_shape"] == [8, 1, 224, 224] and data["total_params"] == 43_093_322
    assert data["output_shape"] == [8, 10] and data["complete"] is True
    row = data["layers"][0]
    assert set(row) >= {"index", "layer", "module", "output_shape", "params", "line", "column", "kind", "depth", "name"}
    assert (row["index"], row["layer"], row["kind"], row["output_shape"]) == (1, "vgg(1, 64 / ratio)", "block",
                                                                             [8, 16, 112, 112])
    assert all(isinstance(r["output_shape"], list) and r["output_shape"][0] == 8 for r in data["layers"])


def test_input_override_and_depth():
    r = run("shapes", SPECS / "vgg.arch", "-s", "ratio=4", "--input", "1x96x96", "--depth", "0", "-f", "json")
    data = json.loads(r.stdout)
    assert data["input_shape"] == [1, 1, 96, 96]
    assert [l["depth"] for l in data["layers"]] == [0] * 13
    assert data["layers"][4]["output_shape"] == [1, 128, 3, 3]


def test_depth_collapses_blocks_in_the_table():
    full = run("shapes", SPECS / "vgg.arch").stdout
    collapsed = run("shapes", SPECS / "vgg.arch", "--depth", "0").stdout
    assert "conv(channels, k3, p1)" in full and "conv(channels, k3, p1)" not in collapsed
    assert "Total params: 128,806,154" in collapsed


def test_spec_text_on_the_command_line():
    r = run("shapes", "input 1x28x28; conv(6, k5, p2) sigmoid avgpool(2, 2) flatten linear(10)")
    assert r.exit_code == 0 and "(1, 6, 14, 14)" in r.stdout and "Total params: 11,926" in r.stdout


def test_shape_error_prints_rows_then_the_error():
    r = run("shapes", SPECS / "alexnet.arch", "--input", "1x28x28")
    assert r.exit_code == 2
    assert "(1, 256, 2, 2)" in r.stdout and "Params up to the failing layer: 626,368" in r.stdout
    assert r.stderr.splitlines() == [
        f"{SPECS / 'alexnet.arch'}:14:28: error: maxpool(3, 2) gets (1, 256, 2, 2): kernel 3 is larger than the input 2x2",
        "   14 | conv(256, k5, p2)     relu maxpool(3, 2)",
        "      |                            ^^^^^^^^^^^^^",
    ]
    assert "Traceback" not in r.output


def test_shape_error_in_json_says_where():
    r = run("shapes", SPECS / "alexnet.arch", "--input", "1x28x28", "--format", "json")
    assert r.exit_code == 2
    data = json.loads(r.stdout)
    assert data["complete"] is False and len(data["layers"]) == 5
    assert data["error"]["line"] == 14 and data["error"]["column"] == 28


@pytest.mark.parametrize("args, words", [
    (["shapes", "specs/nope.arch"], "specs/nope.arch: error: no such spec file"),
    (["shapes", SPECS / "vgg.arch", "--set", "ratio"], "error: --set expects NAME=VALUE, such as --set ratio=4; got 'ratio'"),
    (["shapes", SPECS / "vgg.arch", "--set", "width=2"], "error: no param 'width' in this spec; it declares ratio"),
    (["shapes", SPECS / "vgg.arch", "--set", "ratio=3"], "error: conv channels must be a whole number"),
    (["shapes", SPECS / "vgg.arch", "--set", "ratio=four"], "error: param ratio: 'four' is not a number"),
    (["shapes", SPECS / "vgg.arch", "--input", "224x224x"], "error: input shape '224x224x' is not of the form CxHxW"),
    (["shapes", "input 1x8x8; conw(3)"], "<string>:1:14: error: unknown layer 'conw'; did you mean 'conv'?"),
    (["shapes", ""], "error: the spec has no layers"),
])
def test_user_errors_exit_2_without_traceback(args, words):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert words in r.stderr
    assert "Traceback" not in r.output


def test_bad_option_values_are_usage_errors():
    r = run("shapes", SPECS / "lenet.arch", "--batch", "0")
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = run("shapes", SPECS / "lenet.arch", "--format", "xml")
    assert r.exit_code == 2


def test_layers_lists_the_registry():
    r = run("layers")
    assert r.exit_code == 0
    assert "conv(channels, kernel, stride=1, padding=0, dilation=1, groups=1, *, bias=true)" in r.stdout
    assert "maxpool(kernel, stride=kernel, padding=0, ceil=false)" in r.stdout
    assert "batchnorm(*, eps=1e-05, momentum=0.1, affine=true)" in r.stdout
    assert "split([path], [path], ..., dim=1, *, sizes=equal)" in r.stdout


@pytest.mark.parametrize("args, code", [
    (["layers"], 0),
    (["shapes", "input 1x8x8; conv(6 k5)"], 2),  # a syntax error
    (["shapes", "input 1x8x8; conw(6, k5) batchnorm(16)"], 2),  # mistakes found while expanding the spec
])
def test_layers_and_spec_mistakes_need_no_torch(args, code):
    """`import torch` takes seconds: what can be answered without it is."""
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom archdsl.cli import app\n"
             f"r = CliRunner().invoke(app, {args!r})\nprint(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(code), "False"]


def test_help_explains_and_imports_no_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom archdsl.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nprint(r.exit_code, 'torch' in sys.modules)\nprint(r.stdout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("0 False") and "shapes" in out
    for command in ("shapes", "layers"):
        r = run(command, "--help")
        assert r.exit_code == 0 and "Usage" in r.stdout


def test_python_dash_m_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "archdsl", "shapes", str(SPECS / "lenet.arch"), "-f", "json"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["total_params"] == 61_706
    r = subprocess.run([sys.executable, "-m", "archdsl", "shapes", "specs/nope.arch"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "specs/nope.arch: error: no such spec file"


def test_shapes_start_up_stays_light():
    """Tracing imports no more of torch than it needs: torch._dynamo alone costs a second."""
    code = ("import sys, torch\nbase = 'torch._dynamo' in sys.modules\nimport archdsl\n"
            "for s in ('resnet18', 'googlenet', 'densenet', 'alexnet'): archdsl.trace(f'specs/{s}.arch')\n"
            "print(base, 'torch._dynamo' in sys.modules, 'torchvision' in sys.modules)")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    base, dynamo, torchvision = out.split()
    if base == "True":
        pytest.skip("this torch imports torch._dynamo by itself")
    assert (dynamo, torchvision) == ("False", "False")


def test_json_reports_mistakes_found_before_tracing_too():
    r = run("shapes", "input 8; conw relu6(2)", "--format", "json")
    assert r.exit_code == 2
    data = json.loads(r.stdout)
    assert data["complete"] is False and data["layers"] == []
    assert [(e["line"], e["column"]) for e in data["errors"]] == [(1, 10), (1, 21)]
    assert data["error"]["message"] == "unknown layer 'conw'; did you mean 'conv'?"
