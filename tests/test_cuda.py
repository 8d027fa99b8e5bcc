"""The trainer on a CUDA GPU: its defaults, no host sync per batch, resume, eval, the CLI.

Skipped on a machine without CUDA (CI has none); run them where a GPU is lent:
    python -m pytest -q tests/test_cuda.py
"""

import re
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import archdsl
from archdsl import data as D
from archdsl.cli import app
from archdsl.devices import resolve_device
from archdsl.errors import ArchError
from archdsl.runs import RunDir
from archdsl.trainer import Reporter, evaluate_run, images_to_input, resized_hw

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("offline")]

SPECS = Path(__file__).resolve().parent.parent / "specs"
TINY = "input 1x28x28\nconv(8, k3, p1) relu maxpool(2, 2) flatten dropout(0.5) linear(32) relu linear(10)"
QUICK = dict(dataset="synthetic", limit=256, batch_size=64, lr=0.1, progress=False, device="cuda")
LEARNS = dict(limit=2048, lr=0.3)  # the whole synthetic set: 1.0 test acc after 3 epochs (bf16 on the CPU)


class Info(Reporter):
    """Keeps the RunInfo, and reads the live values at every step as a progress bar would."""

    def __init__(self):
        self.info = None

    def start(self, info):
        self.info = info

    def step(self, batch, batches, live):
        live()


def test_cuda_runs_with_bf16_and_channels_last_by_default():
    r = Info()
    h = archdsl.train(TINY, **{**QUICK, **LEARNS, "progress": r}, epochs=3)
    assert r.info.device.startswith("cuda:") and h.device == r.info.device
    assert r.info.channels_last
    assert r.info.amp == torch.cuda.is_bf16_supported()
    assert r.info.tuning is None  # the CPU's layer tuning stays off on a GPU
    assert next(h.model.parameters()).device.type == "cuda"
    assert h.records[-1].train_loss < h.records[0].train_loss
    assert h.test_acc > 0.9  # chance is 0.1


def test_flags_turn_bf16_and_channels_last_off():
    r = Info()
    archdsl.train(TINY, **{**QUICK, "progress": r}, epochs=1, amp=False, channels_last=False)
    assert not r.info.amp and not r.info.channels_last


def syncs_in_a_run(**kwargs) -> int:
    """How many times a run makes the host wait for the GPU (torch's sync debug mode counts them)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            archdsl.train(TINY, **{**QUICK, "progress": Info(), **kwargs})
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def test_no_host_sync_inside_an_epoch():
    """4 or 16 batches an epoch, the host waits the same number of times: none of them per batch."""
    syncs_in_a_run(epochs=1, limit=1024)  # warm-up: cuDNN's autotuning, the allocator, lazy modules
    few = syncs_in_a_run(epochs=1, limit=256)  # 4 batches of 64
    many = syncs_in_a_run(epochs=1, limit=1024)  # 16 batches of 64
    assert few == many
    two_epochs = syncs_in_a_run(epochs=2, limit=1024)
    assert two_epochs - many <= 3  # the epoch's end: the training phase's timing and one read of the metrics


def test_live_values_come_without_a_sync_and_catch_up():
    seen = []

    class Watch(Reporter):
        def step(self, batch, batches, live):
            torch.cuda.synchronize()  # give the asynchronous copy time to land
            seen.append(live())

    archdsl.train(TINY, **{**QUICK, "progress": Watch()}, epochs=1)
    assert seen[0] is None or seen[0][0] > 0  # the first read only starts a copy
    assert all(v is not None and v[0] > 0 and 0 <= v[1] <= 1 for v in seen[1:])


@pytest.mark.parametrize("size", [224, 96, 20])
def test_resize_on_the_gpu_equals_the_cpu(size):
    x = D.synthetic(n_train=16, n_test=1).train_x  # (16, 1, 28, 28) uint8
    hw = resized_hw(28, 28, size)
    on_gpu = images_to_input(x.cuda(), hw, channels_last=True)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(on_gpu.cpu(), images_to_input(x, hw), atol=1e-5)


def test_resume_on_the_gpu_continues_the_run(tmp_path):
    whole = archdsl.train(TINY, **QUICK, epochs=2, out=tmp_path / "whole")
    first = archdsl.train(TINY, **QUICK, epochs=1, out=tmp_path / "part")
    resumed = archdsl.train(resume=tmp_path / "part", epochs=2, device="cuda", progress=False)
    assert [r.epoch for r in resumed] == [1, 2] and resumed.records[0] == first.records[0]
    state = RunDir(tmp_path / "part").load_checkpoint("last", map_location="cpu")
    assert state["epoch"] == 2 and "cuda" in state["rng"]
    # bf16 and cuDNN's kernel choices are not bit-exact across runs; the curve is the same one
    assert abs(resumed.test_acc - whole.test_acc) < 0.1


def test_checkpoints_from_the_gpu_load_on_the_cpu(tmp_path):
    archdsl.train(TINY, **QUICK, epochs=1, out=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    net = archdsl.build(TINY)
    net.load_state_dict(state["model"])
    weights = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in weights.values())


def test_eval_on_the_gpu_agrees_with_training(tmp_path):
    h = archdsl.train(TINY, **QUICK, epochs=2, out=tmp_path / "run")
    result = evaluate_run(tmp_path / "run", device="cuda")
    assert result.device.startswith("cuda") and result.examples == 512
    assert result.test_acc == pytest.approx(h.best.test_acc, abs=0.01)
    on_cpu = evaluate_run(tmp_path / "run", device="cpu")
    assert on_cpu.test_acc == pytest.approx(result.test_acc, abs=0.05)  # bf16 on the GPU, fp32 on the CPU


def test_compile_trains(tmp_path):
    h = archdsl.train(TINY, **{**QUICK, **LEARNS}, epochs=2, compile=True)
    assert len(h) == 2 and h.records[-1].train_loss < h.records[0].train_loss


def test_a_device_index_past_the_last_gpu_is_a_clear_error():
    n = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ArchError, match=rf"--device cuda:{n}: this machine has {n} CUDA device"):
        resolve_device(f"cuda:{n}")


def test_the_cli_trains_on_cuda(tmp_path):
    r = CliRunner().invoke(app, ["train", str(SPECS / "lenet.arch"), "--device", "cuda", "--dataset", "synthetic",
                                 "--epochs", "1", "--limit", "512", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"training on cuda:\d+: .*lenet\.arch, 61,706 params, input 1x28x28", lines[0])
    assert "channels_last on" in lines[3] and "tune off" in lines[3]
    assert re.fullmatch(r"\d+\.\d examples/sec on cuda:\d+", lines[-1])
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--device", "cuda"])
    assert r.exit_code == 0, r.output
    assert re.search(r"test acc \d\.\d{3} on 512 synthetic test images on cuda:\d+", r.stdout)


# The peak memory of a training step: archdsl.stepmemory's estimate (device="cuda", made on fake CPU
# tensors) against the allocator's peak over a real step on the GPU.

STEP_NETWORKS = {"lenet": ("lenet.arch", {}), "alexnet": ("alexnet.arch", {}), "vgg4": ("vgg.arch", {"ratio": 4}),
                 "resnet18": ("resnet18.arch", {})}


def cuda_step_peak(name: str, batch: int, amp: bool, optimizer: str) -> tuple[int, tuple[int, ...]]:
    """torch.cuda.max_memory_allocated over the second of two training steps run as the trainer runs them
    (cuDNN's benchmark mode, bf16 autocast when `amp`), counted from what was allocated before the model
    was built: the whole step, weights, optimizer state, batch and cuBLAS's workspaces included."""
    import gc

    from archdsl.api import plan
    from archdsl.stepmemory import OPTIMIZERS

    spec, params = STEP_NETWORKS[name]
    gc.collect()
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()  # earlier tests' workspaces: this step makes its own, as a run would
    base = torch.cuda.memory_allocated()
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        model = archdsl.build(SPECS / spec, **params).cuda().train()
        opt = OPTIMIZERS[optimizer].build(list(model.parameters()), None)  # torch's default: foreach on CUDA
        shape = (batch, *plan(SPECS / spec, **params).input_shape)
        x, y = torch.randn(shape, device="cuda"), torch.randint(0, 10, (batch,), device="cuda")

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, shape
    finally:
        torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize("amp", [True, False], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name, batch, optimizer", [
    ("lenet", 64, "sgd"), ("lenet", 128, "sgd"),
    ("alexnet", 8, "sgd"), ("alexnet", 64, "sgd"), ("alexnet", 64, "adamw"),
    ("vgg4", 8, "sgd"), ("vgg4", 64, "sgd"),
    ("resnet18", 16, "sgd"), ("resnet18", 128, "sgd"), ("resnet18", 128, "momentum"),
])
def test_the_step_memory_estimate_is_within_15_percent_of_the_gpus_peak(name, batch, optimizer, amp):
    from archdsl.api import plan
    from archdsl.memory import show_bytes
    from archdsl.stepmemory import estimate_step
    from archdsl.tracer import trace_plan

    real, shape = cuda_step_peak(name, batch, amp, optimizer)
    spec, params = STEP_NETWORKS[name]
    meta, _ = trace_plan(plan(SPECS / spec, **params))
    est = estimate_step(meta, shape, amp=amp, optimizer=optimizer, device="cuda")
    assert est.peak == pytest.approx(real, rel=0.15), f"{est}; measured {show_bytes(real)} ({real:,} bytes)"
