"""Mult-adds, parameters and memory totals against torchinfo, the oracle; FLOPs against torch's counter.

torchinfo runs the meta-built model itself (its hooks, its formulas), so each spec in specs/
is checked in milliseconds, without real weights.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import archdsl
from archdsl.api import plan
from archdsl.measures import count_flops, kernel, mult_adds
from archdsl.tracer import materialize, trace_plan

torchinfo = pytest.importorskip("torchinfo")

SPECS = Path(__file__).resolve().parent.parent / "specs"
ALL_SPECS = sorted(p for p in SPECS.rglob("*.arch"))
# Linear layers on more axes than (B, D) and attention, which torchinfo undercounts (see measures.py): checked
# against torchvision's published GFLOPS for its weights (its `_ops`, which count mult-adds) instead.
TORCHINFO_UNDERCOUNTS = {"vit_b_16.arch": 17.564e9, "convnext_tiny.arch": 4.456e9}


def torchinfo_stats(net: nn.Module, input_shape: tuple[int, ...]):
    return torchinfo.summary(net, input_data=torch.empty(input_shape, device="meta"), device="meta", verbose=0)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: str(p.relative_to(SPECS)))
def test_mult_adds_params_and_memory_equal_torchinfo(spec):
    net, summary = trace_plan(plan(spec))
    stats = torchinfo_stats(net, summary.input_shape)
    assert summary.total_params == stats.total_params
    assert summary.trainable_params == stats.trainable_params
    if spec.name in TORCHINFO_UNDERCOUNTS:
        assert summary.total_mult_adds > 10 * stats.total_mult_adds
        assert summary.total_mult_adds == pytest.approx(TORCHINFO_UNDERCOUNTS[spec.name], rel=0.005)
        return
    assert summary.total_mult_adds == stats.total_mult_adds
    memory = summary.memory
    assert (memory["forward_backward"], memory["params"]) == (stats.total_output_bytes, stats.total_param_bytes)
    assert 0 <= stats.total_input - memory["input"] <= 128  # torchinfo adds the tensor object's own bytes


def test_each_layer_equals_torchinfo_at_a_batch():
    """Row by row, not only the totals: every leaf's mult-adds at batch 3, and the kernel column."""
    net, summary = trace_plan(plan(SPECS / "googlenet.arch"), batch=3)
    stats = torchinfo.summary(net, input_data=torch.empty(summary.input_shape, device="meta"), device="meta",
                              verbose=0)
    by_module = {id(info.module): info for info in stats.summary_list if info.is_leaf_layer}
    leaves = [r for r in summary if r.kind == "layer"]
    assert len(leaves) > 60
    for row in leaves:
        info = by_module[id(net.get_submodule(row.name))]
        assert row.mult_adds == info.macs, row.name
        assert row.kernel == (tuple(info.kernel_size) if isinstance(info.kernel_size, list) else
                              (info.kernel_size,) if info.kernel_size is not None else None), row.name
        assert list(row.output_shape) == info.output_size and list(row.input_shape) == info.input_size


def test_vit_counts_every_position_and_attention():
    summary = archdsl.trace(SPECS / "torchvision" / "vit_b_16.arch")
    attention = next(r for r in summary if r.module.startswith("SelfAttention"))
    b, length, dim = attention.input_shape
    assert attention.mult_adds == b * length * (4 * dim * dim + 4 * dim) + 2 * b * length * length * dim


def test_linear_on_a_sequence_counts_each_position():
    layer = nn.Linear(8, 4)
    assert mult_adds(layer, (2, 5, 8), (2, 5, 4)) == 2 * 5 * (8 * 4 + 4)
    assert mult_adds(layer, (2, 8), (2, 4)) == 2 * (8 * 4 + 4)
    assert mult_adds(nn.Sequential(layer), (2, 8), (2, 4)) == 0  # a container: its children count
    assert kernel(nn.MaxPool2d(3, 2)) == (3,) and kernel(nn.Conv2d(1, 2, (3, 5))) == (3, 5) and kernel(layer) is None


def test_frozen_parameters_are_counted_apart():
    net, summary = trace_plan(plan("input 1x8x8; conv(4, k3) relu flatten linear(10)"))
    assert summary.trainable_params == summary.total_params and summary.frozen_params == 0


@pytest.mark.parametrize("spec", ["lenet.arch", "resnet18.arch"])
def test_flops_equal_torch_flop_counter_on_the_real_model(spec):
    from torch.utils.flop_counter import FlopCounterMode

    net, summary = trace_plan(plan(SPECS / spec))
    flops = count_flops(net, summary.input_shape)
    real = materialize(trace_plan(plan(SPECS / spec))[0])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        real(torch.randn(summary.input_shape))
    assert flops[""] == counter.get_total_flops() > 0
    assert flops[""] == sum(flops[r.name] for r in summary if r.depth == 0)
    for conv in (r for r in summary if r.module.startswith("Conv2d") and "bias=False" in r.module):
        assert flops[conv.name] == 2 * conv.mult_adds  # a product and a sum per mult-add
