"""The shared trainer: d2l's semantics, run directories, checkpoints and resume, on the CPU."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import archdsl
from archdsl import data as D
from archdsl import runs
from archdsl.errors import ArchError
from archdsl.runs import RunDir, atomic_save, load_checkpoint
from archdsl.devices import resolve_device
from archdsl.history import EpochRecord, History
from archdsl.trainer import Interrupted, Reporter, evaluate_run, images_to_input, init_weights

SPECS = Path(__file__).resolve().parent.parent / "specs"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
HAVE_DEBIAN = (DEBIAN / "train-images-idx3-ubyte.gz").is_file()

TINY = "input 1x28x28\nconv(8, k3, p1) relu maxpool(2, 2) flatten linear(32) relu linear(10)"
# With dropout, so resuming must restore the RNG to give the same numbers.
DROPPY = "input 1x28x28\nconv(8, k3, p1) relu maxpool(2, 2) flatten dropout(0.5) linear(32) relu linear(10)"
QUICK = dict(dataset="synthetic", limit=256, batch_size=64, lr=0.1, progress=False)

pytestmark = pytest.mark.usefixtures("offline")  # off the user's cache and the network; the real-data test brings its own


def numbers(history):
    """The metrics of each epoch, without the timings."""
    return [(r.epoch, r.train_loss, r.train_acc, r.test_acc, r.examples) for r in history]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class StopAt(Reporter):
    """Presses Ctrl-C at a given step of a given epoch."""

    def __init__(self, epoch, batch):
        self.at, self.epoch = (epoch, batch), None

    def epoch_start(self, epoch, epochs, batches):
        self.epoch = epoch

    def step(self, batch, batches, live):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


# d2l's semantics -------------------------------------------------------------

def test_overfits_a_tiny_synthetic_set():
    h = archdsl.train(TINY, dataset="synthetic", limit=64, batch_size=8, lr=0.1, epochs=30, progress=False)
    assert h.train_acc == 1.0 and h.train_loss < 0.02
    assert h.records[0].train_loss > 2.0  # it started from chance
    assert [r.examples for r in h] == [64] * 30


def test_starts_from_d2l_init_with_plain_sgd(tmp_path):
    """The epoch-0 checkpoint holds exactly what d2l's code makes: seeded build, then Xavier weights."""
    with pytest.raises(Interrupted):
        archdsl.train(SPECS / "lenet.arch", **{**QUICK, "progress": StopAt(1, 1)}, seed=3, out=tmp_path / "r")
    state = RunDir(tmp_path / "r").load_checkpoint("last")
    assert state["epoch"] == 0
    torch.manual_seed(3)
    net = archdsl.build(SPECS / "lenet.arch")
    net.apply(init_weights)
    assert all(torch.equal(v, state["model"][k]) for k, v in net.state_dict().items())
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0, 0, False)
    # Xavier for Linear and Conv weights only; biases keep torch's own init
    torch.manual_seed(3)
    plain = archdsl.build(SPECS / "lenet.arch")
    assert torch.equal(plain[0].bias, net[0].bias) and not torch.equal(plain[0].weight, net[0].weight)


def test_init_keep_leaves_the_weights_alone():
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(Interrupted):
        archdsl.train(net, **{**QUICK, "progress": StopAt(1, 1)}, init="keep")
    # the first step ran, with the weights net came with: the update is one SGD step away
    assert not torch.equal(before["1.weight"], net[1].weight.detach())
    assert (before["1.weight"] - net[1].weight.detach()).abs().max() < 0.05


def test_test_accuracy_is_over_the_whole_test_set_in_eval_mode():
    h = archdsl.train(DROPPY, **QUICK, epochs=2)
    data = D.synthetic()
    net = h.model.eval()
    with torch.no_grad():
        correct = (net(images_to_input(data.test_x)).argmax(1) == data.test_y).sum().item()
    assert h.test_acc == correct / len(data.test_y) and len(data.test_y) == 512
    assert not net.training


def test_train_loss_is_the_mean_cross_entropy_over_the_epoch():
    """One epoch, one batch covering all examples: the recorded loss is CE on that batch before the step."""
    torch.manual_seed(0)
    net = archdsl.build(TINY)
    net.apply(init_weights)
    data = D.synthetic().limit(32)
    with torch.no_grad():
        out = net(images_to_input(data.train_x))
    expected_loss = nn.functional.cross_entropy(out, data.train_y).item()
    expected_acc = (out.argmax(1) == data.train_y).float().mean().item()
    h = archdsl.train(TINY, dataset="synthetic", limit=32, batch_size=32, lr=0.1, epochs=1, progress=False)
    assert h.train_loss == pytest.approx(expected_loss, rel=1e-5)
    assert h.train_acc == pytest.approx(expected_acc)


def test_same_seed_same_numbers_other_seed_other_numbers():
    a = archdsl.train(DROPPY, **QUICK, epochs=2, seed=1)
    b = archdsl.train(DROPPY, **QUICK, epochs=2, seed=1)
    c = archdsl.train(DROPPY, **QUICK, epochs=2, seed=2)
    assert numbers(a) == numbers(b) and numbers(a) != numbers(c)


@pytest.mark.skipif(not HAVE_DEBIAN, reason="real Fashion-MNIST is absent: install Debian's dataset-fashion-mnist")
def test_a_short_real_fashion_mnist_run(tmp_path, monkeypatch):
    """A few thousand real images, one epoch: learns, and tests on all 10,000 test images."""
    spec = ("input 1x28x28\nconv(6, k5, p2) relu maxpool(2, 2) conv(16, k5) relu maxpool(2, 2)\n"
            "flatten linear(120) relu linear(84) relu linear(10)")  # LeNet with ReLU: learns within an epoch
    h = archdsl.train(spec, dataset="fashion-mnist", limit=4000, batch_size=32, lr=0.1, epochs=1, progress=False,
                      out=tmp_path / "run")
    assert h.records[0].examples == 4000
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["test"] == 10000 and config["data"]["train"] == 4000
    assert config["data"]["source"].endswith("FashionMNIST/raw")
    assert 0.5 < h.test_acc < 1.0 and h.train_loss < 1.8  # chance is 0.1 and 2.3


# The run directory -----------------------------------------------------------

def test_a_run_directory_has_everything(tmp_path):
    out = tmp_path / "run"
    h = archdsl.train(SPECS / "lenet.arch", **QUICK, epochs=2, out=out)
    assert h.run_dir == out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "curves.png", "metrics.jsonl",
                                                    "model.pt", "spec.arch"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert (out / "spec.arch").read_text() == (SPECS / "lenet.arch").read_text()

    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == {"dataset": "synthetic", "batch_size": 64, "lr": 0.1, "epochs": 2, "resize": None,
                                "seed": 0, "limit": 256, "init": "xavier"}
    assert config["sources"]["lr"] == "--lr" and config["sources"]["init"] == "default"
    assert config["runtime"]["device"] == "cpu" and config["spec"]["input_shape"] == [1, 28, 28]
    assert config["versions"]["torch"] == torch.__version__ and config["model"]["params"] == 61706

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["test_acc"] == h.test_acc and rows[1]["train_loss"] == h.train_loss
    assert {"step_examples_per_sec", "wall_examples_per_sec", "train_time", "epoch_time"} <= set(rows[0])

    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(v, weights[k]) for k, v in h.model.state_dict().items())
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and [r["epoch"] for r in last["history"]] == [1, 2]


def test_default_run_directory_is_runs_spec_timestamp(tmp_path):
    a = archdsl.train(TINY, **QUICK, epochs=1, out=True)
    b = archdsl.train(SPECS / "lenet.arch", **QUICK, epochs=1, out=True)
    c = archdsl.train(SPECS / "lenet.arch", **QUICK, epochs=1, out=True)
    assert a.run_dir.parent == Path("runs/spec") and b.run_dir.parent == Path("runs/lenet")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(-\d+)?", b.run_dir.name)
    assert b.run_dir != c.run_dir  # the same second gets its own directory


def test_no_run_directory_unless_asked(tmp_path):
    h = archdsl.train(TINY, **QUICK, epochs=1)
    assert h.run_dir is None and not (tmp_path / "runs").exists()


def test_out_refuses_a_directory_that_holds_a_run(tmp_path):
    archdsl.train(TINY, **QUICK, epochs=1, out=tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ArchError, match=r"already holds a run; continue it with --resume"):
        archdsl.train(TINY, **QUICK, epochs=1, out=tmp_path / "run")
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_best_checkpoint_is_the_best_test_accuracy(tmp_path):
    h = archdsl.train(DROPPY, **QUICK, epochs=4, out=tmp_path / "run")
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    first_best = max(h.records, key=lambda r: r.test_acc)
    assert best["epoch"] == first_best.epoch == h.best.epoch
    result = evaluate_run(tmp_path / "run")
    assert result.epoch == first_best.epoch and result.test_acc == first_best.test_acc
    assert result.recorded_test_acc == first_best.test_acc and result.examples == 512
    assert evaluate_run(tmp_path / "run", "last").test_acc == h.test_acc


def test_eval_measures_in_the_precision_the_run_trained_in(tmp_path):
    """A run trained with bf16 autocast is evaluated with it (fp32 gives 0.197 here, not 0.199)."""
    h = archdsl.train(TINY, **{**QUICK, "lr": 0.01}, epochs=1, amp=True, out=tmp_path / "run")
    assert evaluate_run(tmp_path / "run").test_acc == h.test_acc


# Checkpoints -------------------------------------------------------------------

def test_checkpoints_load_with_weights_only_and_hold_no_objects(tmp_path):
    archdsl.train(DROPPY, **QUICK, epochs=1, out=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert set(state) >= {"format", "epoch", "model", "optimizer", "rng", "history", "arch", "spec", "recipe"}
    assert set(state["rng"]) == {"torch", "shuffle"} and state["spec"] == DROPPY

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (bool, int, float, str, torch.Tensor))

    assert plain(state)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format": 1, "epoch": 1}, path)

    def torn_save(obj, f):  # writes half a file, then the power goes
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(runs.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"format": 1, "epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the old one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    monkeypatch.undo()
    atomic_save({"format": 1, "epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 2


def test_ctrl_c_while_saving_an_epoch_still_saves_it(tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def flaky(obj, f):
        calls.append(obj["epoch"])
        if calls.count(2) == 1 and obj["epoch"] == 2:
            f.write(b"torn")
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing epoch 2
        real_save(obj, f)

    monkeypatch.setattr(runs.torch, "save", flaky)
    with pytest.raises(Interrupted) as info:
        archdsl.train(TINY, **QUICK, epochs=3, out=tmp_path / "run")
    monkeypatch.undo()
    assert calls[:4] == [0, 1, 2, 2]  # epoch 0, 1 (best.pt is a link to last.pt), 2 torn, 2 again by the Ctrl-C handler
    assert info.value.completed == 2 and info.value.epoch == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no temporary files


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ArchError, match=r"cannot load this checkpoint"):
        load_checkpoint(bad)
    torch.save({"model": nn.Linear(2, 2)}, bad)  # a pickled module: weights_only refuses it
    with pytest.raises(ArchError, match=r"cannot load this checkpoint: UnpicklingError"):
        load_checkpoint(bad)


# Resume ----------------------------------------------------------------------------

def test_resume_after_ctrl_c_ends_like_an_uninterrupted_run(tmp_path):
    whole = archdsl.train(DROPPY, **QUICK, epochs=3, seed=5, out=tmp_path / "whole")
    with pytest.raises(Interrupted) as info:
        archdsl.train(DROPPY, **{**QUICK, "progress": StopAt(2, 3)}, epochs=3, seed=5, out=tmp_path / "cut")
    e = info.value
    assert (e.epoch, e.completed, e.run_dir) == (2, 1, tmp_path / "cut")
    assert numbers(e.history) == numbers(whole)[:1]
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = archdsl.train(resume=tmp_path / "cut", progress=False)  # the spec and recipe come from the run
    assert numbers(resumed) == numbers(whole)
    assert same_weights(resumed.model, whole.model)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["resumed"][0]["at_epoch"] == 1


def test_ctrl_c_in_the_first_epoch_resumes_from_the_start(tmp_path):
    whole = archdsl.train(DROPPY, **QUICK, epochs=2)
    with pytest.raises(Interrupted) as info:
        archdsl.train(DROPPY, **{**QUICK, "progress": StopAt(1, 2)}, epochs=2, out=tmp_path / "cut")
    assert info.value.completed == 0
    assert not (tmp_path / "cut" / "checkpoints" / "best.pt").exists()
    resumed = archdsl.train(DROPPY, resume=tmp_path / "cut", progress=False)
    assert numbers(resumed) == numbers(whole) and same_weights(resumed.model, whole.model)


def test_resume_with_more_epochs_continues_a_finished_run(tmp_path):
    whole = archdsl.train(DROPPY, **QUICK, epochs=3)
    archdsl.train(DROPPY, **QUICK, epochs=2, out=tmp_path / "run")
    with pytest.raises(ArchError, match=r"already trained 2 of 2 epochs; to train longer, pass --epochs"):
        archdsl.train(resume=tmp_path / "run", progress=False)
    longer = archdsl.train(resume=tmp_path / "run", epochs=3, lr=0.1, progress=False)  # repeating lr is fine
    assert numbers(longer) == numbers(whole) and same_weights(longer.model, whole.model)


def test_resume_refuses_a_different_spec(tmp_path):
    archdsl.train(TINY, **QUICK, epochs=1, out=tmp_path / "run")
    wider = TINY.replace("conv(8,", "conv(16,")
    with pytest.raises(ArchError) as info:
        archdsl.train(wider, resume=tmp_path / "run", epochs=2, progress=False)
    text = info.value.render()
    assert "the checkpoint was trained from a different network than <spec text>" in text
    assert "Conv2d(1, 8" in text and "Conv2d(1, 16" in text
    assert f"archdsl train --resume {tmp_path / 'run'}" in text


def test_resume_refuses_a_changed_recipe_or_param(tmp_path):
    archdsl.train(SPECS / "vgg.arch", **{**QUICK, "limit": 64}, epochs=1, ratio=16, resize=32, input_shape="1x32x32",
                  out=tmp_path / "run")
    with pytest.raises(ArchError, match=r"--lr 0.5 differs from the run's lr 0.1; a resumed run keeps its recipe"):
        archdsl.train(resume=tmp_path / "run", lr=0.5, epochs=2, progress=False)
    with pytest.raises(ArchError, match=r"--set ratio=8 differs from the run's ratio=16"):
        archdsl.train(resume=tmp_path / "run", ratio=8, epochs=2, progress=False)
    h = archdsl.train(SPECS / "vgg.arch", resume=tmp_path / "run", epochs=2, progress=False)  # params are saved
    assert len(h) == 2 and h.model[0][0].out_channels == 4


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(ArchError, match="no such run directory"):
        archdsl.train(TINY, resume=tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchError, match="not a run directory: it has no config.json"):
        archdsl.train(TINY, resume=tmp_path / "empty", progress=False)


# Values, devices and shapes ----------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), r"epochs must be a whole number from 1 to 1,000,000, such as --epochs 10, not 0"),
    (dict(epochs=10**20), r"epochs must be a whole number from 1 to 1,000,000, such as --epochs 10, not 10{20}"),
    (dict(batch_size=0), r"batch size must be a whole number from 1 to 1,000,000"),
    (dict(batch_size=2.5), r"batch size must be a whole number from 1 to 1,000,000"),
    (dict(lr=0), r"lr must be a number above 0 and at most 1,000, such as --lr 0.1, not 0"),
    (dict(lr=-1.0), r"lr must be a number above 0"),
    (dict(lr=float("nan")), r"lr must be a number above 0"),
    (dict(lr=1e9), r"lr must be a number above 0 and at most 1,000, such as --lr 0.1, not 1000000000.0"),
    (dict(limit=0), r"limit must be a whole number from 1 to 1,000,000,000"),
    (dict(resize=0), r"resize must be a whole number from 1 to 1,000,000"),
    (dict(seed=-1), r"seed must be a whole number from 0 to 18,446,744,073,709,551,615, such as --seed 0, not -1"),
    (dict(seed=10**20), r"seed must be a whole number from 0 to 18,446,744,073,709,551,615"),
    (dict(dataset="fashion"), r"unknown dataset 'fashion'; did you mean 'fashion-mnist'"),
    (dict(init="he"), r"init must be one of xavier, keep"),
    (dict(device="tpu"), r"unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
    (dict(device="cuda:x"), r"a CUDA device is cuda or cuda:N"),
    (dict(bogus=1), r"no param 'bogus' in this spec"),
])
def test_bad_values_are_clear_errors(kwargs, message):
    args = {**QUICK, "epochs": 1, **kwargs}
    with pytest.raises(ArchError, match=message):
        archdsl.train(TINY, **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_machine_without_cuda(name):
    with pytest.raises(ArchError, match=rf"--device {name}: CUDA is not available on this machine .* use --device cpu"):
        resolve_device(name)
    with pytest.raises(ArchError, match="CUDA is not available"):
        archdsl.train(TINY, **QUICK, epochs=1, device=name)


def test_auto_device_is_what_there_is():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected and resolve_device("CPU") == torch.device("cpu")


def test_spec_input_must_match_the_data(monkeypatch):
    with pytest.raises(ArchError) as info:  # 28x28 images resized to 32 meet a spec made for 28x28
        archdsl.train(TINY, **QUICK, epochs=1, resize=32)
    assert "the spec's input is 1x28x28 but synthetic images resized to 32 are 1x32x32" in str(info.value)
    assert "pass --input 1x32x32 to train at that size, or --resize 28" in info.value.render()
    monkeypatch.setattr(D, "load", lambda *a, **k: D.synthetic((1, 28, 28)))  # 1-channel data, like Fashion-MNIST
    with pytest.raises(ArchError, match=r"the spec's input 3x28x28 has 3 channels but synthetic images have 1"):
        archdsl.train(TINY.replace("1x28x28", "3x28x28"), **QUICK, epochs=1)


def test_a_spec_without_input_takes_the_data_shape():
    spec = TINY.split("\n", 1)[1]  # no `input` line
    h = archdsl.train(spec, **QUICK, epochs=1, resize=20)
    assert h.model[0].in_channels == 1 and h.model[4].in_features == 8 * 10 * 10


def test_input_flag_trains_at_another_size():
    h = archdsl.train(TINY, **QUICK, epochs=1, resize=32, input_shape="1x32x32")
    assert h.model[4].in_features == 8 * 16 * 16


def test_outputs_must_match_the_classes():
    with pytest.raises(ArchError) as info:
        archdsl.train(TINY.replace("linear(10)", "linear(5)"), **QUICK, epochs=1)
    assert "gives outputs of shape (2, 5), but synthetic has 10 classes" in str(info.value)
    assert "end the network with linear(10)" in info.value.render()


def test_a_module_that_cannot_take_the_data_is_one_sentence():
    with pytest.raises(ArchError, match=r"Sequential cannot take synthetic batches of shape \(2, 1, 28, 28\)"):
        archdsl.train(nn.Sequential(nn.Flatten(), nn.Linear(100, 10)), **QUICK, epochs=1)


# The Python API ---------------------------------------------------------------

def test_train_a_ready_module_in_place():
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    h = archdsl.train(net, **{**QUICK, "limit": 1024}, epochs=3)
    assert isinstance(h, History) and h.model is net and len(h) == 3
    assert h.test_acc > 0.9
    assert h.metrics["epoch"] == [1, 2, 3] and h.metrics["test_acc"][-1] == h.test_acc
    assert "History(3 epochs" in repr(h)


def test_progress_reports_live_values_without_printing(capsys):
    class Record(Reporter):
        def __init__(self):
            self.events, self.live = [], []

        def start(self, info):
            self.events.append(("start", info.n_train, info.n_test, info.input_shape, info.device))

        def epoch_start(self, epoch, epochs, batches):
            self.events.append(("epoch", epoch, epochs, batches))

        def step(self, batch, batches, live):
            self.live.append(live())

        def epoch_end(self, record, epochs, best):
            self.events.append(("end", record.epoch))

        def end(self, history):
            self.events.append(("done", len(history)))

    r = Record()
    archdsl.train(TINY, **{**QUICK, "progress": r}, epochs=2)
    assert r.events == [("start", 256, 512, (1, 28, 28), "cpu"), ("epoch", 1, 2, 4), ("end", 1),
                        ("epoch", 2, 2, 4), ("end", 2), ("done", 2)]
    assert len(r.live) == 8 and all(v is not None and v[0] > 0 and 0 <= v[1] <= 1 for v in r.live)
    assert capsys.readouterr().out == ""


def test_the_notebook_default_prints_lines_and_the_seed_summary(capsys):
    h = archdsl.train(TINY, **{**QUICK, "progress": True}, epochs=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "training on cpu: <spec text>, 50,618 params, input 1x28x28"
    assert lines[1:4] == ["data: synthetic, 256 train / 512 test images (made in memory)",
                          "recipe: batch 64 (--batch-size), lr 0.1 (--lr), epochs 2 (--epochs), seed 0 (default), "
                          "limit 256 (--limit), init xavier (default)",
                          "options: channels_last off, bf16 autocast off, compile off, tune on"]
    assert re.fullmatch(r"tuning: (1 of 1 layers run faster formulations \(conv .*\)|1 layers timed, torch's kernels "
                        r"kept)", lines[4])
    assert re.fullmatch(r"epoch 1/2  loss \d\.\d{3}  train acc \d\.\d{3}  test acc \d\.\d{3}  [\d,]+ ex/s  "
                        r"\d+\.\ds  \*", lines[5])  # * marks a new best test accuracy
    assert lines[6].startswith("epoch 2/2  loss ")
    assert lines[-2] == f"loss {h.train_loss:.3f}, train acc {h.train_acc:.3f}, test acc {h.test_acc:.3f}"
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", lines[-1])
    assert re.match(r"2 epochs, \d+\.\ds: [\d,.]+ examples/sec wall-clock \(training \+ test\)", lines[-3])


def test_the_closing_line_counts_one_epoch_in_the_singular():
    from archdsl.progress import closing_lines

    one = History([EpochRecord(1, 2.0, 0.3, 0.35, 10, 1.0, 1.2)], nn.Identity(), "cpu")
    assert closing_lines(one)[0].startswith("1 epoch, 1.2s: ")


def test_both_speeds_are_measured():
    h = archdsl.train(TINY, **QUICK, epochs=2)
    for r in h:
        assert 0 < r.train_time <= r.epoch_time
        assert r.step_examples_per_sec >= r.wall_examples_per_sec > 0
    assert h.examples_per_sec == pytest.approx(512 / sum(r.train_time for r in h))
    assert math.isfinite(h.wall_examples_per_sec)


def test_history_plot_is_a_figure():
    h = History([EpochRecord(1, 2.0, 0.3, 0.35, 10, 1.0, 1.2), EpochRecord(2, 1.0, 0.6, 0.62, 10, 1.0, 1.2)],
                nn.Identity(), "cpu")
    fig = h.plot()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train loss", "train acc", "test acc"]
    assert h.best.epoch == 2 and h.summary().splitlines()[0] == "loss 1.000, train acc 0.600, test acc 0.620"


def test_training_goes_on_without_matplotlib(tmp_path, monkeypatch):
    """A machine without matplotlib gets no curves.png, but the run and its other files."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    h = archdsl.train(TINY, **QUICK, epochs=1, out=tmp_path / "run")
    run = tmp_path / "run"
    assert len(h) == 1 and not (run / "curves.png").exists()
    assert (run / "metrics.jsonl").is_file() and (run / "checkpoints" / "last.pt").is_file()
