"""A training step's estimated peak memory against the peak of a real step, measured by the allocator.

The oracle is independent of the estimator's mechanism (fake tensors counted by a dispatch mode):
`measured_peak` runs a real CPU step and reads the allocator's own events from torch's profiler
(`profile_memory=True`): every allocation and free of the step, with its size, in time order;
their running sum's maximum, plus the bytes already allocated when the step starts (the storages
of the weights, buffers, optimizer state and batch), is the step's peak.
"""

import copy
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

import archdsl
from archdsl import stepmemory
from archdsl.api import plan
from archdsl.errors import ArchError
from archdsl.memory import show_bytes
from archdsl.memory import parse_size
from archdsl.stepmemory import MAX_BATCH, OPTIMIZERS, estimate_step, largest_batch
from archdsl.tracer import trace_plan

SPECS = Path(__file__).resolve().parent.parent / "specs"
NETWORKS = {  # spec, params, one example's shape
    "lenet": ("lenet.arch", {}, (1, 28, 28)),
    "alexnet": ("alexnet.arch", {}, (1, 224, 224)),
    "vgg4": ("vgg.arch", {"ratio": 4}, (1, 224, 224)),
    "resnet18": ("resnet18.arch", {}, (1, 96, 96)),
}
_built: dict[str, nn.Module] = {}


def network(name: str) -> nn.Module:
    """The network with real weights on the CPU, built once for the file (a measured step changes only its values)."""
    if name not in _built:
        spec, params, _ = NETWORKS[name]
        torch.manual_seed(0)
        _built[name] = archdsl.build(SPECS / spec, **params)
    return _built[name]


def storage_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def measured_peak(model: nn.Module, shape: tuple[int, ...], optimizer: str = "sgd", amp: bool = False) -> int:
    """The allocator's peak bytes during the second of two real training steps on the CPU.

    The first step only has to make the optimizer's state, which depends on the weights alone: it is
    an optimizer step on zero gradients, without the forward and backward passes (which make nothing
    that outlives a step: with or without them, LeNet's, VGG's and ResNet's SGD peaks were the same to
    the byte).
    """
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = OPTIMIZERS[optimizer].build(trainable, False)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # the trainer's
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for p in trainable:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    state = [t for entries in opt.state.values() for t in entries.values() if isinstance(t, torch.Tensor)]
    before = storage_bytes([*model.parameters(), *model.buffers(), *state, x, y])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x, y)
    events = sorted((e.start_time_ns, e.typed[1].alloc_size) for e in _allocations(prof))
    running = top = 0
    for _, size in events:
        running += size
        top = max(top, running)
    opt.zero_grad(set_to_none=True)
    return before + top


def _allocations(prof):
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.typed[1].device.type == "cpu":
            yield event
        stack.extend(event.children)


@pytest.mark.parametrize("name, batch, optimizer, amp", [
    ("lenet", 64, "sgd", False),
    ("lenet", 256, "sgd", False),
    ("lenet", 128, "sgd", True),  # bf16 convolutions without oneDNN: im2col
    ("lenet", 256, "momentum", False),
    ("alexnet", 2, "sgd", False),
    ("alexnet", 4, "sgd", False),
    ("alexnet", 1, "adamw", False),  # the peak is in AdamW's step: the weights and three copies
    ("vgg4", 2, "sgd", False),
    ("vgg4", 4, "sgd", False),
    ("resnet18", 2, "sgd", False),
    ("resnet18", 4, "sgd", False),
])
def test_the_estimate_is_within_15_percent_of_a_measured_cpu_step(name, batch, optimizer, amp):
    model = network(name)
    shape = (batch, *NETWORKS[name][2])
    est = estimate_step(model, shape, optimizer=optimizer, amp=amp)
    real = measured_peak(model, shape, optimizer, amp)
    assert est.peak == pytest.approx(real, rel=0.15), f"{est}; measured {show_bytes(real)} ({real:,} bytes)"


def test_weights_gradients_and_optimizer_state_are_the_real_ones():
    """Byte for byte, against the real model and a real optimizer after a real step; a frozen layer has neither."""
    model = copy.deepcopy(network("lenet"))
    model[0].requires_grad_(False)  # the first convolution
    trainable = [p for p in model.parameters() if p.requires_grad]
    for name, kind in OPTIMIZERS.items():
        opt = kind.build(trainable, False)
        loss = model(torch.randn(4, 1, 28, 28)).sum()
        loss.backward()
        opt.step()
        state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        est = estimate_step(model, (4, 1, 28, 28), optimizer=name)
        assert est.params == storage_bytes([*model.parameters(), *model.buffers()])
        assert est.grads == storage_bytes(p.grad for p in trainable) == sum(p.nbytes for p in trainable)
        assert est.optimizer_state == storage_bytes(state) if state else est.optimizer_state == 0
        assert est.batch == 4 * 28 * 28 * 4 + 4 * 8
        assert est.workspaces == 0
        assert est.standing < est.peak
    assert sum(p.numel() for p in trainable) < sum(p.numel() for p in model.parameters())


def test_on_cuda_blocks_are_512_bytes_and_adamw_keeps_its_step_counts_on_the_host():
    model = network("lenet")
    est = estimate_step(model, (8, 1, 28, 28), optimizer="adamw", device="cuda")
    blocks = [math.ceil(p.nbytes / 512) * 512 for p in model.parameters()]
    assert est.params == sum(blocks)
    assert est.optimizer_state == 2 * sum(blocks)  # exp_avg and exp_avg_sq; `step` is a CPU tensor
    assert est.batch == 512 * math.ceil(8 * 28 * 28 * 4 / 512) + 512
    assert all(n % 512 == 0 for n in (est.grads, est.activations, est.peak))
    cpu = estimate_step(model, (8, 1, 28, 28), optimizer="adamw")
    assert cpu.optimizer_state == 2 * sum(p.nbytes for p in model.parameters()) + 4 * len(blocks)


def test_cublas_workspaces_on_cuda(monkeypatch):
    """Two threads run matrix products (the forward pass's and autograd's), and a linear layer's bias uses cuBLASLt."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lenet = network("lenet")
    assert estimate_step(lenet, (8, 1, 28, 28), device="cuda").workspaces == 65 * 2 ** 20
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    est = estimate_step(lenet, (8, 1, 28, 28), device="cuda:0")
    assert est.workspaces == 2 * 32 * 2 ** 20 + 2 ** 20 and est.device == "cuda"
    assert est.peak - est.workspaces == estimate_step(lenet, (8, 1, 28, 28), device="cuda").peak - 65 * 2 ** 20
    convs_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 10, 26), nn.Flatten())
    assert estimate_step(convs_only, (8, 1, 28, 28), device="cuda").workspaces == 0


@pytest.mark.parametrize("name, options", [
    ("lenet", {}),
    ("lenet", {"amp": True, "optimizer": "momentum"}),
    ("lenet", {"device": "cuda", "optimizer": "adamw"}),
    ("resnet18", {"amp": True}),
])
def test_a_meta_model_from_the_tracer_gives_the_same_estimate(name, options):
    spec, params, sample = NETWORKS[name]
    meta, _ = trace_plan(plan(SPECS / spec, **params))
    assert next(meta.parameters()).is_meta
    shape = (8, *sample)
    assert estimate_step(meta, shape, **options) == estimate_step(network(name), shape, **options)
    assert all(p.is_meta and p.grad is None for p in meta.parameters())


def test_the_model_is_untouched():
    model = copy.deepcopy(network("resnet18"))
    model.eval()
    model[1].requires_grad_(False)
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
    frozen = [p.requires_grad for p in model.parameters()]
    estimate_step(model, (4, 1, 96, 96), amp=True)
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    for k, (ptr, value) in before.items():
        assert after[k].data_ptr() == ptr and torch.equal(after[k], value) and after[k].device.type == "cpu", k
    assert [p.requires_grad for p in model.parameters()] == frozen
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_nothing_of_the_models_size_is_allocated():
    """AlexNet at batch 100,000 needs 400 GiB; estimating it allocates (the allocator's count) under a MiB."""
    model = network("alexnet")
    estimate_step(model, (2, 1, 224, 224))  # warm: first calls build caches
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        est = estimate_step(model, (100_000, 1, 224, 224))
    seconds = time.perf_counter() - t
    running = top = 0
    for _, size in sorted((e.start_time_ns, e.typed[1].alloc_size) for e in _allocations(prof)):
        running += size
        top = max(top, running)
    assert est.peak > 300 * 2 ** 30 and est.activations > 300 * 2 ** 30  # over 300 GiB
    assert top < 2 ** 20
    assert seconds < 10  # about 0.1 s on an idle core; the profiler and a busy machine slow it


def test_the_summary_line():
    est = estimate_step(network("lenet"), (128, 1, 28, 28), amp=True, optimizer="momentum")
    text = str(est)
    assert text.startswith("training step at batch 128 (bf16 autocast, momentum, cpu): peak ")
    assert show_bytes(est.peak) in text and f"weights {show_bytes(est.params)}" in text
    assert est.peak_in in ("forward", "backward", "optimizer step") and est.peak_in in text
    assert "float32, sgd, cuda" in str(estimate_step(network("lenet"), (1, 1, 28, 28), device="cuda"))


def recorded_estimates(monkeypatch) -> dict[int, int]:
    """The peak of each batch largest_batch estimates, in the order it asks."""
    peaks: dict[int, int] = {}
    real = stepmemory.estimate_step

    def recorded(model, shape, **options):
        est = real(model, shape, **options)
        peaks[shape[0]] = est.peak
        return est

    monkeypatch.setattr(stepmemory, "estimate_step", recorded)
    return peaks


@pytest.mark.parametrize("name, budget, options", [
    ("lenet", 24 * 2 ** 20, {}),
    ("lenet", 3 * 2 ** 30, {"amp": True}),
    ("lenet", 100 * 2 ** 20, {"device": "cuda", "optimizer": "adamw"}),  # 65 MiB of it for cuBLAS
    ("alexnet", 2 * 2 ** 30, {"optimizer": "momentum"}),
])
def test_the_largest_batch_fits_and_the_next_does_not(monkeypatch, name, budget, options):
    peaks = recorded_estimates(monkeypatch)
    b = largest_batch(network(name), NETWORKS[name][2], budget, **options)
    assert 1 < b < MAX_BATCH
    assert len(peaks) <= 8, list(peaks)  # a few estimates, not a search over every batch
    assert peaks[b] <= budget < peaks[b + 1]  # as estimate_step gives them
    assert peaks[b] == estimate_step(network(name), (b, *NETWORKS[name][2]), **options).peak


def test_the_largest_batch_is_0_when_one_example_does_not_fit_and_stops_at_the_cap():
    model = network("lenet")
    one = estimate_step(model, (1, 1, 28, 28)).peak
    assert largest_batch(model, (1, 28, 28), one - 1) == 0
    assert largest_batch(model, (1, 28, 28), one) >= 1
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    assert largest_batch(tiny, (4,), 2 ** 60) == MAX_BATCH


def test_the_largest_batch_measured():
    """The real step at the answer fits the budget, and a real step a few examples larger does not."""
    model, budget = network("lenet"), 24 * 2 ** 20
    b = largest_batch(model, (1, 28, 28), budget)
    assert measured_peak(model, (b, 1, 28, 28)) <= budget * 1.15
    assert measured_peak(model, (math.ceil(b * 1.2), 1, 28, 28)) > budget


@pytest.mark.parametrize("text, expected", [
    ("16GiB", 16 * 2 ** 30), ("16 GiB", 16 * 2 ** 30), ("16GB", 16 * 2 ** 30), ("16g", 16 * 2 ** 30),
    ("512MB", 512 * 2 ** 20), ("1.5G", 3 * 2 ** 29), ("800M", 800 * 2 ** 20), ("1e9", 10 ** 9),
    ("2TiB", 2 * 2 ** 40), ("1024", 1024), ("64KiB", 65536), ("100B", 100), (" 2 gib ", 2 * 2 ** 30),
    ("0.5k", 512), (".5M", 2 ** 19), ("1.5e3MiB", 1500 * 2 ** 20),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["10XB", "", "-1GiB", "0", "1e400", "nan", "inf", "GiB", "16 Gi", "1,000",
                                  "1.5.2G", "0.1", "16 GiB GiB", "1e-3"])
def test_parse_size_refuses(text):
    with pytest.raises(ArchError) as e:
        parse_size(text)
    assert str(e.value) == f"--fit takes a memory size such as 16GiB or 512MB; got {text!r}"
    with pytest.raises(ArchError, match="^--budget takes"):
        parse_size(text, "--budget")


def test_mistakes_are_arch_errors():
    lenet = network("lenet")
    with pytest.raises(ArchError, match="unknown optimizer 'adam'; choose sgd, momentum, adamw"):
        estimate_step(lenet, (1, 1, 28, 28), optimizer="adam")
    with pytest.raises(ArchError, match="cpu or cuda; got device 'mps'"):
        estimate_step(lenet, (1, 1, 28, 28), device="mps")
    for shape in ((), (0, 1, 28, 28), (2, -1, 28, 28), (2.0, 1, 28, 28)):
        with pytest.raises(ArchError, match="batch first"):
            estimate_step(lenet, shape)
    with pytest.raises(ArchError, match=r"cannot take a batch of shape \(2, 3, 28, 28\): .*channels"):
        estimate_step(lenet, (2, 3, 28, 28))
    with pytest.raises(ArchError, match="no trainable parameters"):
        estimate_step(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).requires_grad_(False), (2, 4))
