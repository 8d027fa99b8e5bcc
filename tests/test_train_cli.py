"""`archdsl train` and `archdsl eval`: output, exit codes, errors, Ctrl-C and resume, as a user sees them."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from archdsl import data as D
from archdsl.cli import app

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "specs" / "lenet.arch"
TINY = "input 1x28x28\nconv(8, k3, p1) relu maxpool(2, 2) flatten dropout(0.5) linear(32) relu linear(10)"
QUICK = ["--dataset", "synthetic", "--limit", "256", "--batch-size", "64", "--lr", "0.1"]
runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated(offline, monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_DIRS", {})  # no Debian package either: data is only what a test makes


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def metrics(run_dir):
    """Each epoch's numbers from metrics.jsonl, timings left out."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["train_loss"], r["train_acc"], r["test_acc"]) for r in rows]


def test_train_prints_one_line_per_epoch_and_ends_with_the_seed_summary(tmp_path):
    r = run("train", LENET, *QUICK, "--epochs", "2", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"training on cpu: {LENET}, 61,706 params, input 1x28x28"
    assert lines[2].startswith("recipe: batch 64 (--batch-size), lr 0.1 (--lr), epochs 2 (--epochs), seed 0")
    assert lines[3].startswith("options: ") and lines[3].endswith("tune on")
    assert lines[4].startswith("tuning: 4 layers timed") or re.fullmatch(
        r"tuning: \d of 4 layers run faster formulations \((avgpool gemm|conv [a-z -]+)( x2)?(, .*)?\)", lines[4])
    assert lines[5] == f"run directory: {tmp_path / 'run'}"
    assert [x.split("  ")[0] for x in lines if x.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    assert re.fullmatch(r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", lines[-2])
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", lines[-1])
    assert r.stderr == ""
    last = metrics(tmp_path / "run")[-1]
    assert lines[-2] == f"loss {last[1]:.3f}, train acc {last[2]:.3f}, test acc {last[3]:.3f}"


def test_the_spec_recipe_is_used_and_flags_override_it(tmp_path):
    r = run("train", LENET, "--dataset", "synthetic", "--limit", "128", "--epochs", "1", "--seed", "7",
            "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["lr"] == 0.9 and config["recipe"]["batch_size"] == 256  # from the spec's train line
    assert config["recipe"]["epochs"] == 1 and config["recipe"]["seed"] == 7  # from the flags
    assert config["sources"] == {"dataset": "--dataset", "batch_size": "spec", "lr": "spec", "epochs": "--epochs",
                                 "resize": "default", "seed": "--seed", "limit": "--limit", "init": "default"}


def test_set_params_and_input_reach_the_spec(tmp_path):
    r = run("train", ROOT / "specs" / "vgg.arch", "--set", "ratio=16", "--resize", "32", "--input", "1x32x32",
            *QUICK[:2], "--limit", "64", "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["spec"]["params"] == {"ratio": "16"} and config["spec"]["input_shape"] == [1, 32, 32]
    assert config["recipe"]["resize"] == 32 and config["recipe"]["lr"] == 0.05


def test_eval_reports_the_best_checkpoint(tmp_path):
    assert run("train", TINY, *QUICK, "--epochs", "3", "--out", tmp_path / "run").exit_code == 0
    rows = metrics(tmp_path / "run")
    best = max(rows, key=lambda x: x[3])
    r = run("eval", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"{tmp_path / 'run' / 'checkpoints' / 'best.pt'}: epoch {best[0]} of 3",
        f"test acc {best[3]:.3f} on 512 synthetic test images on cpu (measured during training: {best[3]:.3f})"]
    r = run("eval", tmp_path / "run", "--checkpoint", "last", "--device", "cpu")
    assert r.exit_code == 0 and f"test acc {rows[-1][3]:.3f}" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], "error: epochs must be a whole number from 1 to 1,000,000, such as --epochs 10, not 0"),
    (["--epochs", "99999999999999999999"], "error: epochs must be a whole number from 1 to 1,000,000"),
    (["--seed", "99999999999999999999"], "error: seed must be a whole number from 0 to 18,446,744,073,709,551,615"),
    (["--lr", "-1"], "error: lr must be a number above 0 and at most 1,000, such as --lr 0.1, not -1.0"),
    (["--lr", "1e400"], "error: lr must be a number above 0 and at most 1,000, such as --lr 0.1, not inf"),
    (["--batch-size", "0"], "error: batch size must be a whole number from 1 to 1,000,000"),
    (["--batch-size", "99999999999999999999"], "error: batch size must be a whole number from 1 to 1,000,000"),
    (["--limit", "0"], "error: limit must be a whole number from 1 to 1,000,000,000"),
    (["--resize", "99999999999999999999"], "error: resize must be a whole number from 1 to 1,000,000"),
    (["--device", "tpu"], "error: unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
    (["--dataset", "fashion"], "error: unknown dataset 'fashion'; did you mean 'fashion-mnist'?"),
    (["--init", "he"], "error: init must be one of xavier, keep"),
    (["--set", "bogus=1"], "no param 'bogus' in this spec"),
    (["--set", "ratio"], "error: --set expects NAME=VALUE"),
    (["--resize", "32"], "error: the spec's input is 1x28x28 but synthetic images resized to 32 are 1x32x32"),
    (["--epochs", "ten"], "Invalid value for '--epochs'"),
])
def test_bad_flags_exit_2_with_one_clear_error(args, words, tmp_path):
    r = run("train", LENET, "--dataset", "synthetic", *args, "--out", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert words in " ".join(r.stderr.replace("│", " ").split()) and "Traceback" not in r.output
    assert r.stdout == "" and not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_on_a_machine_without_cuda(tmp_path):
    r = run("train", LENET, *QUICK, "--device", "cuda", "--out", tmp_path / "run")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: --device cuda: CUDA is not available on this machine")
    assert "use --device cpu" in r.stderr and "Traceback" not in r.output
    assert run("eval", tmp_path, "--device", "cuda").exit_code == 2


def test_missing_data_lists_where_it_looked_and_how_to_get_it(tmp_path):
    r = run("train", LENET, "--data-root", tmp_path / "data", "--no-download", "--out", tmp_path / "run")
    assert r.exit_code == 2, r.output
    err = r.stderr
    assert err.startswith("error: cannot find the fashion-mnist data set; looked in:")
    assert f"--data-root {tmp_path / 'data'}: no such directory" in err and "per-user cache" in err
    assert "note: to get it: on Debian/Ubuntu: sudo apt install dataset-fashion-mnist" in err
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()


def test_missing_spec_run_dir_and_checkpoint_are_clear_errors(tmp_path):
    r = run("train", tmp_path / "nope.arch", *QUICK)
    assert r.exit_code == 2 and f"{tmp_path / 'nope.arch'}: error: no such spec file" in r.stderr
    r = run("train", "--resume", tmp_path / "nope")
    assert r.exit_code == 2 and "no such run directory" in r.stderr
    r = run("eval", tmp_path / "nope")
    assert r.exit_code == 2 and f"{tmp_path / 'nope'}: error: no such run directory" in r.stderr
    r = run("train", *QUICK)
    assert r.exit_code == 2 and "train needs a spec" in r.stderr
    # a run stopped before its first epoch ended has no best checkpoint yet
    import archdsl
    from archdsl.trainer import Interrupted, Reporter

    class CtrlC(Reporter):
        def step(self, batch, batches, live):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        archdsl.train(TINY, dataset="synthetic", limit=256, batch_size=64, out=tmp_path / "run", progress=CtrlC())
    r = run("eval", tmp_path / "run")
    assert r.exit_code == 2 and "no best checkpoint in this run" in r.stderr


def test_out_never_overwrites_a_run(tmp_path):
    assert run("train", TINY, *QUICK, "--epochs", "1", "--out", tmp_path / "run").exit_code == 0
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    r = run("train", TINY, *QUICK, "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 2
    assert f"error: --out {tmp_path / 'run'} already holds a run; continue it with --resume" in r.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_refuses_another_spec(tmp_path):
    assert run("train", TINY, *QUICK, "--epochs", "1", "--out", tmp_path / "run").exit_code == 0
    r = run("train", LENET, "--resume", tmp_path / "run", "--epochs", "2")
    assert r.exit_code == 2
    assert f"{tmp_path / 'run'}: error: the checkpoint was trained from a different network than {LENET}" in r.stderr
    assert f"note: resume with the run's own spec: archdsl train --resume {tmp_path / 'run'}" in r.stderr
    assert len(metrics(tmp_path / "run")) == 1  # untouched


def test_ctrl_c_saves_prints_the_resume_command_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    """A real SIGINT to a real process, then `--resume`: the same numbers as a run never stopped."""
    out = tmp_path / "cut"
    (tmp_path / "spec.arch").write_text(TINY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "archdsl", "train", "spec.arch", *QUICK, "--epochs", "1000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait for two finished epochs
            if line.startswith("epoch    2/1000") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    done = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert done >= 2
    assert f"interrupted during epoch {done + 1}; {out}/checkpoints/last.pt holds the state after epoch {done}" in err
    assert f"resume with: archdsl train spec.arch --resume {out}" in err
    assert "Traceback" not in err
    assert len(metrics(out)) == done

    r = run("train", "spec.arch", "--resume", out, "--epochs", done + 1)
    assert r.exit_code == 0, r.output
    assert f"run directory: {out} (resuming after epoch {done})" in r.stdout
    assert run("train", "spec.arch", *QUICK, "--epochs", done + 1, "--out", tmp_path / "whole").exit_code == 0
    assert metrics(out) == metrics(tmp_path / "whole")
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_terminal_gets_a_live_progress_bar(tmp_path):
    from rich.console import Console

    import archdsl
    from archdsl.progress import RichReporter

    buf = io.StringIO()
    reporter = RichReporter(Console(file=buf, force_terminal=True, width=120))
    reporter.REFRESH = 0  # draw every step
    h = archdsl.train(TINY, dataset="synthetic", limit=256, batch_size=64, lr=0.1, epochs=2, progress=reporter)
    text = buf.getvalue()
    assert "━" in text and "4/4" in text and re.search(r"loss \d\.\d{3}  train acc \d\.\d{3}", text)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert f"loss {h.train_loss:.3f}, train acc {h.train_acc:.3f}, test acc {h.test_acc:.3f}" in plain
    assert "epoch 2/2  loss" in plain


def test_train_and_eval_help_import_no_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom archdsl.cli import app\n"
            "for cmd in ('train', 'eval'):\n"
            "    r = CliRunner().invoke(app, [cmd, '--help'])\n"
            "    assert r.exit_code == 0, r.output\n"
            "print('torch' in sys.modules, 'torchvision' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]
