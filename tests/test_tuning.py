"""archdsl.tuning: faster CPU formulations compute what torch's layers compute, and are chosen reproducibly."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

import archdsl
from archdsl import tuning as T
from archdsl.runs import load_checkpoint

LAYOUTS = ("nchw", "cl")

pytestmark = pytest.mark.usefixtures("offline")  # each test remembers its own choices, never the user's


def layout(t: torch.Tensor) -> tuple[int, ...]:
    """The strides that matter: a dimension of size 1 may have any stride."""
    return tuple(s for s, n in zip(t.stride(), t.shape) if n > 1)


def same_function(module: nn.Module, x: torch.Tensor, forward) -> None:
    """forward(x) equals module(x) in value and memory layout, and so do the gradients of x and the weights."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = module(x1)
    g = torch.randn_like(y1)
    y1.backward(g)
    expected = [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    y2 = forward(x2)
    y2.backward(g)
    got = [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    assert y2.shape == y1.shape and layout(y2) == layout(y1)
    torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    assert layout(x2.grad) == layout(x1.grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert layout(a) == layout(b)


CONVS = [  # in, out, kernel, stride, padding, dilation, groups, bias
    (1, 6, 5, 1, 2, 1, 1, True),  # LeNet's first
    (6, 16, 5, 1, 0, 1, 1, True),  # LeNet's second
    (4, 8, 3, 2, 1, 1, 2, False),
    (3, 6, (3, 5), (2, 1), (1, 2), 2, 3, True),
]


@pytest.mark.parametrize("config", CONVS, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_conv_layout_mix_is_the_same_conv(config, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(*config)
    x = torch.randn(3, config[0], 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for layouts in itertools.product(LAYOUTS, repeat=3):
        same_function(conv, x, T.conv2d_forward(conv, *layouts))
    same_function(conv, x[0], T.conv2d_forward(conv, "cl", "cl", "cl"))  # unbatched (C, H, W)


@pytest.mark.parametrize("kernel", [2, 3, (2, 3)])
@pytest.mark.parametrize("shape", [(4, 3, 12, 12), (2, 3, 13, 11), (3, 7, 9)], ids=str)
def test_avgpool_as_a_matrix_product_is_the_same_pooling(kernel, shape):
    torch.manual_seed(0)
    pool = nn.AvgPool2d(kernel)
    same_function(pool, torch.randn(shape), T.avgpool_gemm_forward(pool))


def test_only_layers_with_a_known_formulation_are_tunable():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2), nn.AvgPool2d(2, padding=1),
                        nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(4, 4, 3, padding="same"),
                        nn.Conv2d(4, 4, 3, padding_mode="reflect"), nn.MaxPool2d(2))
    assert list(T.tunable(net)) == ["0", "1"]


def lenet_bn() -> nn.Module:
    torch.manual_seed(0)
    return archdsl.build("input 1x28x28\nconv(6, k5, p2) batchnorm sigmoid avgpool(2, 2) conv(16, k5) sigmoid "
                         "avgpool(2, 2) flatten linear(10)")


def test_tune_leaves_weights_buffers_gradients_and_random_numbers_alone():
    net = lenet_bn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(64, 1, 28, 28)
    rng = torch.get_rng_state()
    tuned = T.tune(net, x)
    assert set(tuned.choices) == {"0", "3", "4", "6"}
    assert all(c == T.NATIVE or T.forward_for(dict(net.named_modules())[k], c) for k, c in tuned.choices.items())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # batch norm's stats included
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert net.training


def test_applied_swaps_forward_for_the_block_only():
    net = lenet_bn()
    text, keys = repr(net), list(net.state_dict())
    tuned = T.Tuning({"3": "avgpool gemm", "4": "conv grad-weight cl", "0": T.NATIVE})
    x = torch.rand(8, 1, 28, 28)
    with T.applied(net, tuned):
        assert "forward" in vars(net[3]) and "forward" in vars(net[4]) and "forward" not in vars(net[0])
        assert repr(net) == text and list(net.state_dict()) == keys
        net(x).sum().backward()
    assert not any("forward" in vars(m) for m in net.modules())
    with pytest.raises(RuntimeError, match="boom"), T.applied(net, tuned):
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in net.modules())


def test_a_choice_a_layer_cannot_take_is_ignored():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2))
    with T.applied(net, T.Tuning({"0": "avgpool gemm", "1": "conv forward cl", "9": "avgpool gemm"})):
        assert not any("forward" in vars(m) for m in net.modules())


def test_choices_are_remembered_per_machine_so_runs_repeat(tmp_path):
    net = lenet_bn()
    x = torch.rand(64, 1, 28, 28)
    first = T.tune(net, x)
    assert first.remembered == 0 and set(first.timings) == set(first.choices)
    saved = json.loads((tmp_path / "cache" / "archdsl" / "tuning.json").read_text())
    assert list(saved) == [T.machine_key()] and len(saved[T.machine_key()]) == 4
    again = T.tune(net, x)
    assert again.choices == first.choices and again.remembered == 4 and not again.timings
    assert "remembered from an earlier run" in again.describe()
    T.tune(net, torch.rand(32, 1, 28, 28))  # another batch size is another shape: timed
    assert len(json.loads((tmp_path / "cache" / "archdsl" / "tuning.json").read_text())[T.machine_key()]) == 8


def test_a_damaged_or_unwritable_memory_is_not_an_error(tmp_path):
    net = lenet_bn()
    memory = tmp_path / "cache" / "archdsl" / "tuning.json"
    memory.parent.mkdir(parents=True)
    memory.write_text("{not json")
    assert T.tune(net, torch.rand(16, 1, 28, 28)).remembered == 0
    assert json.loads(memory.read_text())  # rewritten whole
    memory.unlink()
    memory.mkdir()  # a directory where the file should be: cannot be read or written
    assert set(T.tune(net, torch.rand(16, 1, 28, 28)).choices) == {"0", "3", "4", "6"}


QUICK = dict(dataset="synthetic", limit=256, batch_size=64, lr=0.5, progress=False)
POOLED = "input 1x28x28\nconv(6, k5, p2) sigmoid avgpool(2, 2) conv(16, k5) sigmoid avgpool(2, 2) flatten linear(10)"


def numbers(h):
    return [(r.train_loss, r.train_acc, r.test_acc) for r in h]


def test_a_tuned_run_learns_what_an_untuned_run_learns():
    tuned = archdsl.train(POOLED, **QUICK, epochs=2)
    plain = archdsl.train(POOLED, **QUICK, epochs=2, tune=False)
    for a, b in zip(numbers(tuned), numbers(plain)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)


def test_a_run_records_its_choices_and_a_resume_keeps_them(tmp_path):
    archdsl.train(POOLED, **QUICK, epochs=1, out=tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    choices = config["runtime"]["tuning"]
    assert set(choices) == {"0", "2", "3", "5"}
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["tuning"] == choices
    # Time differently on purpose: the resumed run must still compute as the first did.
    memory = tmp_path / "cache" / "archdsl" / "tuning.json"
    data = json.loads(memory.read_text())
    data[T.machine_key()] = {k: ("avgpool gemm" if v == T.NATIVE and "AvgPool" in k else T.NATIVE)
                             for k, v in data[T.machine_key()].items()}
    memory.write_text(json.dumps(data))
    assert len(archdsl.train(resume=tmp_path / "run", epochs=2, progress=False)) == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["tuning"] == choices


def test_no_tune_runs_torchs_kernels_and_says_so(tmp_path):
    archdsl.train(POOLED, **QUICK, epochs=1, out=tmp_path / "run", tune=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]["tuning"] is None
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["tuning"] is None
    assert not (tmp_path / "cache" / "archdsl" / "tuning.json").exists()


def test_layers_inside_branches_are_tuned_and_put_back():
    torch.manual_seed(0)
    net = archdsl.build("input 3x16x16\nconv(8, k3, p1) relu add([conv(8, k3, p1) avgpool(2, 2) flatten linear(8)], "
                        "[avgpool(2, 2) conv(8, k1) flatten linear(8)]) relu linear(10)")
    x = torch.rand(16, 3, 16, 16)
    tuned = T.tune(net, x)
    nested = [name for name in tuned.choices if "paths" in name]
    assert len(nested) == 4 and len(tuned.choices) == 5
    forced = T.Tuning({name: ("avgpool gemm" if isinstance(m, nn.AvgPool2d) else "conv forward cl grad-weight cl")
                       for name, m in T.tunable(net).items()})
    expected = net(x)
    with T.applied(net, forced):
        assert all("forward" in vars(m) for m in T.tunable(net).values())
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
    assert not any("forward" in vars(m) for m in net.modules())
