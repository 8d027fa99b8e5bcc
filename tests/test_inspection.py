"""`archdsl shapes` past the table, through the CLI and the API: warnings and --strict, the training
step's memory, --fit, --min-input, FLOPs and receptive-field columns, diff, --version, completion,
and a notebook's view of a shape error."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import archdsl
from archdsl.api import largest_batch, min_input, step_memory
from archdsl.cli import app

SPECS = Path(__file__).resolve().parent.parent / "specs"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_completion():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"archdsl {archdsl.__version__}"
    r = run("--help")
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout


def test_warnings_follow_the_table_and_strict_makes_them_errors():
    spec = "input 1x28x28; conv(6, k5) relu relu maxpool(4) flatten linear(10)"
    r = run("shapes", spec)
    assert r.exit_code == 0 and "<string>:1:33: warning: relu right after relu" in r.stderr
    assert "^^^^" in r.stderr and "Total params" in r.stdout
    r = run("shapes", spec, "--strict")
    assert r.exit_code == 2 and "error: relu right after relu" in r.stderr and "--strict" in r.stderr
    assert r.stdout == ""
    data = json.loads(run("shapes", spec, "--format", "json").stdout)
    assert data["warnings"] == [{"code": "activation-twice", "message": data["warnings"][0]["message"],
                                 "file": "<string>", "line": 1, "column": 33}]
    assert run("shapes", SPECS / "lenet.arch", "--strict").exit_code == 0  # the seed has none


def test_batch_estimates_the_training_step_and_fit_finds_the_largest_batch():
    r = run("shapes", SPECS / "lenet.arch", "--batch", "256", "--optimizer", "adamw", "--device", "cpu",
            "--fit", "64MiB")
    assert r.exit_code == 0, r.output
    step = step_memory(SPECS / "lenet.arch", batch=256, optimizer="adamw")
    assert f"Training step at batch 256 (float32, adamw, cpu): peak {archdsl.memory.show_bytes(step.peak)}" in r.stdout
    largest = largest_batch(SPECS / "lenet.arch", "64MiB", optimizer="adamw")
    assert f"Largest batch whose training step fits in 64 MiB: {largest:,}" in r.stdout
    assert step_memory(SPECS / "lenet.arch", batch=largest, optimizer="adamw").peak <= 64 * 2 ** 20
    assert step_memory(SPECS / "lenet.arch", batch=largest + 1, optimizer="adamw").peak > 64 * 2 ** 20
    data = json.loads(run("shapes", SPECS / "lenet.arch", "--batch", "8", "--amp", "-f", "json").stdout)
    assert data["training_step"]["batch_size"] == 8 and data["training_step"]["amp"] is True
    assert "training_step" not in json.loads(run("shapes", SPECS / "lenet.arch", "-f", "json").stdout)


@pytest.mark.parametrize("flags, message", [
    (["--fit", "10XB"], "--fit takes a memory size such as 16GiB or 512MB; got '10XB'"),
    (["--batch", "0"], "Invalid value for '--batch'"),
    (["--columns", "nosuch"], "unknown column 'nosuch'"),
    (["--optimizer", "adam"], "Invalid value for '--optimizer'"),
])
def test_bad_flags_exit_2_with_one_message(flags, message):
    r = run("shapes", SPECS / "lenet.arch", *flags)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_min_input():
    r = run("shapes", SPECS / "alexnet.arch", "--min-input")
    assert r.exit_code == 0 and "Smallest input it accepts: 1x65x65" in r.stdout
    assert min_input(SPECS / "alexnet.arch") == (1, 65, 65)
    r = run("shapes", SPECS / "alexnet.arch", "--input", "1x28x28", "--min-input")  # asked for where it is needed
    assert r.exit_code == 2 and "note: the smallest input it accepts is 1x65x65" in r.stderr
    with pytest.raises(archdsl.ShapeError):
        archdsl.trace(SPECS / "alexnet.arch", (1, 64, 65))


def test_flops_and_receptive_field_columns_are_filled_on_demand():
    r = run("shapes", SPECS / "lenet.arch", "--columns", "layer,flops,receptive_field,stride")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[2].split() == ["layer", "FLOPs", "receptive", "field", "eff.", "stride"]
    assert lines[4].split() == ["conv(6,", "k5,", "p2)", "235.20", "K", "5x5", "1x1"]
    summary = archdsl.trace(SPECS / "lenet.arch", flops=True, receptive_field=True)
    first = summary[0]
    assert first.flops == 2 * 6 * 25 * 28 * 28 and first.receptive_field == (5, 5) and first.stride == (1, 1)
    pool = next(r for r in summary if r.layer.startswith("avgpool"))
    assert pool.receptive_field == (6, 6) and pool.stride == (2, 2)
    assert archdsl.trace(SPECS / "lenet.arch")[0].flops is None  # not counted unless asked


def test_trace_depth_and_a_spec_param_named_like_an_argument():
    summary = archdsl.trace(SPECS / "resnet18.arch", depth=0)
    assert summary.depth == 0 and "residual" not in str(summary).split("Total params")[0].split("\n", 4)[4]
    assert len(str(summary).splitlines()) < len(str(archdsl.trace(SPECS / "resnet18.arch")).splitlines())
    spec = "param depth = 2; input 4; [linear(8) relu] * depth linear(2)"
    assert len(archdsl.trace(spec, params={"depth": 3}).rows) == 7


def test_diff_cli():
    r = run("diff", SPECS / "vgg.arch", "--set-b", "ratio=4", "--exit-code")
    assert r.exit_code == 1 and "Total params" in r.stdout and "-66.5%" in r.stdout
    r = run("diff", SPECS / "lenet.arch", SPECS / "lenet.arch", "--exit-code")
    assert r.exit_code == 0 and "no differences" in r.stdout
    r = run("diff", SPECS / "vgg.arch")
    assert r.exit_code == 2 and "diff compares two networks" in r.output
    data = json.loads(run("diff", SPECS / "lenet.arch", SPECS / "lenet-bn.arch", "-f", "json", "--changed-only").stdout)
    assert data["counts"]["added"] == 4 and all(p["status"] != "same" for p in data["pairs"])


def test_a_shape_error_in_a_notebook_shows_the_rows_and_the_caret():
    """IPython shows `_render_traceback_()` in place of the traceback through archdsl's code."""
    with pytest.raises(archdsl.ShapeError) as caught:
        archdsl.trace("input 1x28x28; conv(6, k5) flatten conv(3, k3)")
    shown = caught.value._render_traceback_()
    assert shown[0] == "<string>: input (1, 1, 28, 28)" and any(line.startswith("2  flatten") for line in shown)
    assert "<string>:1:36: error: conv(3, k3) gets (1, 3456)" in shown[-3] and shown[-1].strip().startswith("|")
    assert "^" in shown[-1] and not any("Traceback" in line or "tracer.py" in line for line in shown)
    with pytest.raises(archdsl.ArchError) as caught:
        archdsl.trace("input 4; conv(")
    assert caught.value._render_traceback_()[0].startswith("<string>:1:15: error:")


def test_shapes_of_a_torchvision_model_from_the_cli():
    r = run("shapes", "torchvision:resnet18", "--input", "3x64x64", "--depth", "1")
    assert r.exit_code == 0, r.output
    assert "Total params: 11,689,512" in r.stdout and "layer4" in r.stdout
    r = run("shapes", "nosuchpackage.models:net", "--input", "3x8x8")
    assert r.exit_code == 2 and "cannot import 'nosuchpackage.models'" in r.output


def test_every_mistake_is_json_when_json_is_asked_for():
    """--strict, --min-input on a module, and diff's mistakes: one JSON object on stdout, exit 2."""
    for args in (["shapes", SPECS / "alexnet.arch", "--strict"],
                 ["shapes", "torchvision:resnet18", "--input", "3x64x64", "--min-input"],
                 ["diff", SPECS / "lenet.arch"],
                 ["diff", SPECS / "lenet.arch", "input 1x28x28; conv(6, k55)"]):
        r = run(*args, "--format", "json")
        assert r.exit_code == 2, args
        assert json.loads(r.stdout)["error"]["message"], args
    r = run("diff", SPECS / "lenet.arch", "input 1x28x28; conv(6, k55)")
    assert "note: in B: input 1x28x28; conv(6, k55)" in r.stderr
    r = run("shapes", "torchvision:resnet18", "--input", "3x64x64", "--min-input")
    assert "torchvision:resnet18 is a module: the smallest input is searched for a spec" in r.stderr


def test_fit_says_where_its_search_stops_and_lines_fit_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    r = run("shapes", SPECS / "lenet.arch", "--fit", "1TiB", "--device", "cpu")
    assert r.exit_code == 0 and "at least 1,048,576 (the search stops there)" in r.stdout.replace("\n  ", " ")
    assert max(map(len, r.stdout.splitlines())) <= 60
    assert "Training step at batch 1 (float32, sgd, cuda)" in run("shapes", SPECS / "lenet.arch", "--device",
                                                                   "cuda").stdout


def test_the_api_refuses_what_the_cli_refuses():
    for call in (lambda: largest_batch(SPECS / "lenet.arch", 0), lambda: largest_batch(SPECS / "lenet.arch", -5),
                 lambda: archdsl.trace(SPECS / "lenet.arch", depth=-1)):
        with pytest.raises(archdsl.ArchError):
            call()
