"""Receptive fields against torch's autograd, and against published figures; the smallest input a spec takes.

The oracle: a copy of the model with real weights set to positive constants, run on a positive
input (so no ReLU or product zeroes anything), backpropagated from one output position; the
extent of the nonzero input gradient along each axis is what that position sees. Max pooling
sends its gradient to one pixel of its window only, so the oracle's copy pools by average over
the same windows (kernel, stride, padding, ceil_mode), which torch defines as max pooling's;
one test checks max pooling itself over many random inputs.
"""

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from archdsl import ArchError, api, receptive
from archdsl.receptive import Field, min_input, receptive_fields, smallest_input
from archdsl.tracer import materialize, trace_plan

SPECS = Path(__file__).resolve().parent.parent / "specs"

torch.set_num_threads(2)


# The oracle --------------------------------------------------------------------------------------

def positive(net: nn.Module) -> nn.Module:
    """A copy with real weights: 1 / fan-in for weights, 1 for scales, 0 for biases; average for max pooling."""
    net = copy.deepcopy(net)
    if any(p.is_meta for p in net.parameters()):
        net = materialize(net)
    for name, module in list(net.named_modules()):
        for child_name, child in module.named_children():
            if isinstance(child, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
                assert child.dilation in (1, (1,), (1, 1), (1, 1, 1))
                twin = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}[type(child)]
                setattr(module, child_name, twin(child.kernel_size, child.stride, child.padding, child.ceil_mode))
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.fill_(1 / p[0].numel() if p.dim() > 1 else 0 if name.endswith("bias") else 1)
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1)
            elif name.endswith("running_mean"):
                b.fill_(0)
    return net.eval()


def gradient_windows(net: nn.Module, input_shape, probes):
    """For each (module name, output position): (first, last) input pixel with a nonzero gradient per axis,
    or None where none has one. The probes share one forward and one backward pass, one example each (eval
    mode keeps them apart)."""
    net = positive(net)
    x = torch.ones((len(probes), *input_shape), requires_grad=True)
    outputs = {}
    wanted = {name for name, _ in probes}
    for name, m in net.named_modules():
        if name in wanted:
            m.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
    net(x)
    loss = sum(outputs[name][(b, slice(None), *position)].sum() for b, (name, position) in enumerate(probes))
    loss.backward()
    windows = []
    for b in range(len(probes)):
        seen = (x.grad[b].abs().sum(0) > 0).nonzero()  # positions, over the channels
        windows.append(tuple((int(seen[:, a].min()), int(seen[:, a].max())) if len(seen) else None
                             for a in range(seen.shape[1])))
    return windows


def predicted(field: Field, position):
    """The window `field` says `position` sees, per axis: (first, last) input pixel, padding counted."""
    return tuple((start + i * stride, start + i * stride + size - 1)
                 for i, size, stride, start in zip(position, field.size, field.stride, field.start))


def check_against_gradients(net, input_shape, names, fields=None, edges=True) -> int:
    """Each named module's field against the gradient, at the first position, at one whose window lies inside
    the input on each axis where one does, and at the next (the stride). A window inside the input must be the
    gradient's exactly; one that the edges cut must hold it (padding hides more than the edges, at places:
    floor-mode pooling drops rows), unless `edges` is false (reflect padding reads pixels inside for its
    padding, which the field counts as zero padding). Returns how many windows were exact."""
    fields = fields or receptive_fields(net, input_shape)
    spatial = input_shape[1:]
    out_shapes = output_shapes(net, input_shape)
    probes = []
    for name in names:
        field, shape = fields[name], out_shapes[name][2:]
        assert field is not None, name
        middle = []
        for axis, n in enumerate(shape):
            fits = [i for i in range(n) if 0 <= field.start[axis] + i * field.stride[axis]
                    and field.start[axis] + i * field.stride[axis] + field.size[axis] <= spatial[axis]]
            middle.append(fits[len(fits) // 2] if fits else n // 2)
        after = tuple(min(i + 1, n - 1) for i, n in zip(middle, shape))
        for position in dict.fromkeys([tuple(0 for _ in shape), tuple(middle), after]):
            probes.append((name, position))
    exact = 0
    for (name, position), window in zip(probes, gradient_windows(net, input_shape, probes)):
        for axis, ((lo, hi), n) in enumerate(zip(predicted(fields[name], position), spatial)):
            got = window[axis]
            if 0 <= lo and hi < n:
                assert got == (lo, hi), (name, position, axis, fields[name])
                exact += 1
            elif edges:
                assert got is None or (max(lo, 0) <= got[0] and got[1] <= min(hi, n - 1)), (name, position, axis)
    return exact


def output_shapes(net, input_shape):
    """Each module's output shape, batch first, from a copy on meta."""
    meta = copy.deepcopy(net).to("meta").eval()
    shapes = {}
    for name, m in meta.named_modules():
        m.register_forward_hook(lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
    with torch.no_grad():
        meta(torch.empty((1, *input_shape), device="meta"))
    return shapes


def traced(spec, input_shape=None, **params):
    plan = api.plan(spec, input_shape, **params)
    net, summary = trace_plan(plan)
    return plan, net, summary


# Small models of every kind ----------------------------------------------------------------------

class Residual(nn.Module):
    """torchvision's basic block, down-sampling: out += identity, in place."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 3, 3, stride=2, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.down = nn.Conv2d(channels, 3, 1, stride=2)

    def forward(self, x):
        out = self.conv2(self.relu(self.conv1(x)))
        out += self.down(x)
        return self.relu(out)


class Concat(nn.Module):
    """Inception-like: paths of different windows side by side, joined on the channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 1, 1)
        self.b = nn.Sequential(nn.Conv2d(2, 1, 1), nn.Conv2d(1, 1, 5, padding=2))
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(2, 1, (3, 7), padding=(1, 3)))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x), self.c(x)], 1)


class Squeeze(nn.Module):
    """Squeeze-and-excitation: a gate from global pooling scales every position."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(2, 2, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.conv(x)
        return x * self.gate(x)


class ChannelsLast(nn.Module):
    """ConvNeXt's pattern: permute, linear layers at each position, permute back. (No layer norm here: with
    the oracle's equal weights it passes no gradient back, as its input is the same on every channel.)"""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 7, padding=3, groups=2)
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))

    def forward(self, x):
        y = self.mlp(self.conv(x).permute(0, 2, 3, 1))
        return x.repeat(1, 2, 1, 1) + y.permute(0, 3, 1, 2)


SMALL = {
    "strides, dilation, padding": (nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(3, 3, 3, dilation=2, padding=2),
        nn.AvgPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(3, 2, (3, 5), stride=(1, 2), padding=(0, 2)),
        nn.MaxPool2d(2, 2, ceil_mode=True)), (2, 41, 57)),
    "residual add": (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Residual(2), Residual(3)), (1, 37, 37)),
    "concat": (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), Concat(), nn.Conv2d(3, 2, 3)), (1, 33, 45)),
    "channels last": (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), ChannelsLast(), nn.Conv2d(4, 2, 3)), (1, 31, 31)),
    "1-d": (nn.Sequential(nn.Conv1d(4, 3, 5, stride=2), nn.MaxPool1d(3, 2, padding=1), nn.Conv1d(3, 3, 3, dilation=3),
                          nn.AvgPool1d(2), nn.BatchNorm1d(3)), (4, 100)),
    "3-d": (nn.Sequential(nn.Conv3d(1, 2, 3, stride=(1, 2, 2), padding=1), nn.MaxPool3d(2),
                          nn.Conv3d(2, 2, (1, 3, 3), padding=(0, 1, 1)), nn.AvgPool3d(2, ceil_mode=True)),
            (1, 9, 17, 19)),
    "padding modes": (nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, padding_mode="reflect"),
                                    nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate"),
                                    nn.ZeroPad2d((1, 0, 2, 0)), nn.Conv2d(2, 1, 2, stride=2)), (1, 25, 25)),
    "adaptive pooling that divides": (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d((7, 4)),
                                                    nn.Conv2d(2, 2, 2)), (1, 23, 18)),
    "pixel unshuffle": (nn.Sequential(nn.Conv2d(1, 8, 3), nn.PixelUnshuffle(2), nn.Conv2d(32, 8, 3)), (1, 30, 30)),
}

RESAMPLING = {
    "adaptive pooling": (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d((5, 4)), nn.Conv2d(2, 2, 2),
                                       nn.AdaptiveMaxPool2d(2)), (1, 23, 18)),
    "nearest upsampling": (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Upsample(scale_factor=2),
                                         nn.Conv2d(2, 2, 3)), (1, 31, 31)),
    "bilinear upsampling": (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Upsample(scale_factor=3, mode="bilinear"),
                                          nn.Conv2d(2, 2, 3)), (1, 31, 31)),
    "pixel shuffle": (nn.Sequential(nn.Conv2d(1, 8, 3), nn.PixelUnshuffle(2), nn.Conv2d(32, 8, 3),
                                    nn.PixelShuffle(2), nn.Conv2d(2, 2, 2, stride=2)), (1, 30, 30)),
    "transposed convolution": (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ConvTranspose2d(2, 2, 3, stride=2),
                                             nn.Conv2d(2, 2, 3)), (1, 31, 31)),
}


@pytest.mark.parametrize("kind", SMALL)
def test_every_layer_of_small_models_against_the_gradient(kind):
    """Every module whose output is (B, C, *sizes), as the oracle reads it: those inside ChannelsLast are not."""
    net, shape = SMALL[kind]
    fields = receptive_fields(net, shape)
    names = [name for name, m in net.named_modules() if name and fields[name] is not None
             and not (kind == "channels last" and name.startswith("1."))]
    assert len(names) >= 3
    assert check_against_gradients(net, shape, names, fields, edges=kind != "padding modes") >= len(names)


@pytest.mark.parametrize("kind", RESAMPLING)
def test_resampling_layers_within_a_stride(kind):
    """Along the first axis, at every position: the largest window the gradient shows is the field's size, or
    less by under a stride; each window starts within a stride of the resampled layer's input (2 pixels in
    each of these models) of where the field says."""
    net, shape = RESAMPLING[kind]
    fields = receptive_fields(net, shape)
    out_shapes = output_shapes(net, shape)
    probes = [(name, (i, out_shapes[name][3] // 2)) for name, m in net.named_modules()
              if name and not any(True for _ in m.children()) for i in range(out_shapes[name][2])]
    seen = {}
    for (name, p), window in zip(probes, gradient_windows(net, shape, probes)):
        (lo, hi), field = predicted(fields[name], p)[0], fields[name]
        assert abs(window[0][0] - max(0, lo)) <= 2, (name, p, field)
        if 0 <= lo and hi < shape[1]:
            seen[name] = max(seen.get(name, 0), window[0][1] - window[0][0] + 1)
    for name, largest in seen.items():
        assert fields[name].size[0] - math.ceil(fields[name].stride[0]) < largest <= fields[name].size[0], name
    assert len(seen) == len({name for name, _ in probes})


def test_a_gate_from_global_pooling_makes_the_field_global():
    """Squeeze-and-excitation scales each position by a gate computed from all of them: every position sees
    the whole input (the gradient says so), while the positions keep their spacing, the stride."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), Squeeze(), nn.Conv2d(2, 2, 3))
    f = receptive_fields(net, (1, 21, 21))
    assert f["0"] == Field((3, 3), (2, 2), (0, 0))
    assert f["1.conv"] == Field((7, 7), (2, 2), (-2, -2))
    assert f["1.gate.0"] == Field((25, 25), (20, 20), (-2, -2))  # hull of the 10 positions: 9 * 2 + 7
    assert f["1"] == f["2"] == Field((25, 25), (2, 2), (-2, -2))
    probes = [(name, (i, i)) for name in ("1", "2") for i in (0, 3, 6)]
    assert set(gradient_windows(net, (1, 21, 21), probes)) == {((0, 20), (0, 20))}


def test_circular_padding_counts_as_zero_padding():
    """The wrapped-around pixels are padding: away from the edges the gradient agrees."""
    circular = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, padding_mode="circular"), nn.Conv2d(2, 1, 3, stride=2))
    zeros = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2), nn.Conv2d(2, 1, 3, stride=2))
    f = receptive_fields(circular, (1, 20, 20))
    assert f == receptive_fields(zeros, (1, 20, 20)) and f["1"] == Field((5, 5), (2, 2), (-2, -2))
    assert gradient_windows(circular, (1, 20, 20), [("1", (4, 5))]) == [predicted(f["1"], (4, 5))] \
        == [((6, 10), (8, 12))]


def test_the_fields_of_a_small_stack_worked_out_by_hand():
    net, shape = SMALL["strides, dilation, padding"]
    f = receptive_fields(net, shape)
    assert f["0"] == Field((3, 3), (2, 2), (-1, -1))
    assert f["2"] == Field((11, 11), (2, 2), (-5, -5))  # 3 + (3 - 1) * 2 * 2, start -1 - 2 * 2
    assert f["3"] == Field((15, 15), (4, 4), (-7, -7))
    assert f["4"] == Field((23, 31), (4, 8), (-7, -15))  # rectangular kernel (3, 5), stride (1, 2)
    assert f["5"] == Field((27, 39), (8, 16), (-7, -15))


def test_max_pooling_itself_over_random_inputs():
    """Max pooling's gradient goes to the largest pixel of each window: over many random inputs, every pixel
    of the field is the largest for some of them."""
    net = nn.Sequential(nn.Conv2d(1, 1, 3, bias=False), nn.MaxPool2d(3, 2, padding=1),
                        nn.MaxPool2d(2, 2, ceil_mode=True))
    f = receptive_fields(net, (1, 24, 24))
    assert f["2"] == Field((7, 7), (4, 4), (-1, -1))
    torch.manual_seed(0)
    with torch.no_grad():
        net[0].weight.fill_(1)
    x = torch.rand(2000, 1, 24, 24, requires_grad=True)
    net(x)[:, :, 2, 3].sum().backward()
    seen = (x.grad.abs().sum((0, 1)) > 0).nonzero()
    assert (int(seen[:, 0].min()), int(seen[:, 0].max())) == predicted(f["2"], (2, 3))[0] == (7, 13)
    assert (int(seen[:, 1].min()), int(seen[:, 1].max())) == predicted(f["2"], (2, 3))[1] == (11, 17)


class Mean(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.mean(self.dims, keepdim=len(self.dims) > 1)


def test_flatten_linear_and_reductions_leave_no_field():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    f = receptive_fields(net, (1, 10, 12))
    assert f["1"] == Field((10, 12), (8, 10), (0, 0))  # global pooling sees the whole input
    assert f["2"] is None and f["3"] is None and f[""] is None
    assert set(f) == {name for name, _ in net.named_modules()}
    f = receptive_fields(nn.Sequential(nn.Conv2d(1, 2, 3), Mean(3), nn.Conv1d(2, 2, 3), Mean(1, 2)), (1, 10, 12))
    assert f["1"] is None and f["2"] is None  # the width is gone: not every axis of the input is there
    assert f["3"] is None


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Conv2d(1, 1, 3)
        self.unused = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.used(x)


def test_a_module_not_called_has_no_field_and_the_input_shape_is_checked():
    net = Unused()
    f = receptive_fields(net, (1, 8, 8))
    assert f["unused"] is None and f["used"] == f[""] == Field((3, 3), (1, 1), (0, 0))
    assert all(v is None for v in receptive_fields(nn.Linear(4, 2), (4,)).values())
    with pytest.raises(ArchError):
        receptive_fields(net, (1, 0, 8))


def test_an_operation_it_does_not_know_is_an_error_not_a_guess():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.diagonal(x, dim1=2, dim2=3).unsqueeze(-1) * x

    with pytest.raises(ArchError, match="diagonal"):
        receptive_fields(Odd(), (1, 5, 5))


def test_real_weights_are_not_touched():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert receptive_fields(net, (1, 9, 9))["1"] == Field((3, 3), (1, 1), (0, 0))
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# The specs ---------------------------------------------------------------------------------------

def test_alexnet_against_the_gradient_and_alexnet_v2():
    """google-research/receptive_field's RECEPTIVE_FIELD_TABLE.md (TF-Slim's alexnet_v2: the same kernels and
    strides as d2l's AlexNet; its first convolution is unpadded, so only sizes and strides compare)."""
    plan, net, summary = traced(SPECS / "alexnet.arch", (1, 256, 80))  # pool5's 195 fits along the first axis
    f = receptive_fields(net, plan.input_shape)
    published = {"0": (11, 4), "2": (19, 8), "3": (51, 8), "6": (99, 16), "8": (131, 16), "10": (163, 16),
                 "12": (195, 32)}
    assert {name: (f[name].size[0], f[name].stride[0]) for name in published} == published
    assert check_against_gradients(net, plan.input_shape, ["2", "5", "12"], f) >= 5


VGG_A = {  # TF-Slim's vgg_a, VGG-11 exactly: RF, effective stride, effective padding (-start)
    "0.0": (3, 1, 1), "0": (4, 2, 1), "1.0": (8, 2, 3), "1": (10, 4, 3), "2.0": (18, 4, 7), "2.2": (26, 4, 11),
    "2": (30, 8, 11), "3.0": (46, 8, 19), "3.2": (62, 8, 27), "3": (70, 16, 27), "4.0": (102, 16, 43),
    "4.2": (134, 16, 59), "4": (150, 32, 59),
}


def test_vgg11_against_the_published_table_and_the_gradient():
    plan, net, _ = traced(SPECS / "vgg.arch", ratio=8)
    f = receptive_fields(net, plan.input_shape)
    assert {name: (f[name].size[0], f[name].stride[0], -f[name].start[0]) for name in VGG_A} == VGG_A
    assert all(f[name].size[0] == f[name].size[1] for name in VGG_A)
    plan, net, _ = traced(SPECS / "vgg.arch", (1, 224, 64), ratio=8)
    assert check_against_gradients(net, plan.input_shape, ["1", "3", "4"]) >= 5


def test_resnet18_against_the_gradient_and_torchvision():
    """The spec's stages against the gradient (on a narrow input: the last stage's 435 fit along the first
    axis), and torchvision's resnet18 run as a plain module (in-place adds and ReLUs) gives the same fields."""
    plan, net, _ = traced(SPECS / "resnet18.arch", (1, 448, 40))
    f = receptive_fields(net, plan.input_shape)
    assert [f[str(i)].size[0] for i in range(5)] == [11, 43, 99, 211, 435]
    assert [f[str(i)].stride[0] for i in range(5)] == [4, 4, 8, 16, 32]
    assert check_against_gradients(net, plan.input_shape, ["1", "2", "4"], f) >= 5
    f = receptive_fields(net, (1, 224, 224))
    theirs = receptive_fields(torchvision.models.resnet18(), (3, 224, 224))
    assert [theirs[f"layer{i}"] for i in range(1, 5)] == [f[str(i)] for i in range(1, 5)]
    assert theirs["avgpool"] == f["5"] and theirs["fc"] is None


def test_googlenet_against_the_gradient():
    plan, net, _ = traced(SPECS / "googlenet.arch", (1, 512, 40))  # b4's 459 fits along the first axis
    f = receptive_fields(net, plan.input_shape)
    # stem 11, then a 3x3 at stride 4, a 3x3 pool; each Inception's widest path a 5x5 (d2l's, as the paper's)
    assert [(f[n].size[0], f[n].stride[0]) for n in ("0", "1", "2", "3")] == [(11, 4), (27, 8), (107, 16), (459, 32)]
    assert f["4"] is None  # b5 ends in flatten
    assert check_against_gradients(net, plan.input_shape, ["2.0", "3"], f) >= 3


def test_densenet_against_the_gradient():
    """Concatenations with the identity: each dense block adds 4 3x3 convolutions' worth at its stride."""
    plan, net, _ = traced(SPECS / "densenet.arch", (1, 544, 40))  # the last block's 519 fits along the first axis
    f = receptive_fields(net, plan.input_shape)
    assert [(f[n].size[0], f[n].stride[0]) for n in ("0", "1", "2", "3", "5", "7")] == \
        [(11, 4), (43, 4), (47, 8), (111, 8), (247, 16), (519, 32)]
    assert f["10"] == Field((1031, 519), (544, 32), (-245, -245))  # global pooling: 16 * 32 + 519 on the first axis
    assert check_against_gradients(net, plan.input_shape, ["1.0", "3", "7"], f) >= 5


INCEPTION_V3 = {  # TF-Slim's inception_v3, which torchvision's is: RF, effective stride, effective padding
    "7": (63, 8, 18), "8": (95, 8, 34), "9": (127, 8, 50), "10": (159, 16, 58), "11": (351, 16, 154),
    "12": (543, 16, 250), "13": (735, 16, 346), "14": (927, 16, 442), "15": (1055, 32, 490), "16": (1183, 32, 554),
    "17": (1311, 32, 618),
}


def test_inception_v3_and_vgg16_against_the_published_table():
    plan, net, _ = traced(SPECS / "torchvision" / "inception_v3.arch")
    f = receptive_fields(net, plan.input_shape)
    assert {n: (f[n].size[0], f[n].stride[0], -f[n].start[0]) for n in INCEPTION_V3} == INCEPTION_V3
    plan, net, _ = traced(SPECS / "torchvision" / "vgg16_bn.arch")
    assert receptive_fields(net, plan.input_shape)["0"] == Field((212, 212), (32, 32), (-90, -90))  # vgg_16/pool5


def test_a_1d_spec_and_a_3d_spec_against_the_gradient():
    plan, net, _ = traced("input 4x100\nconv(8, k5, s2) relu maxpool(3, 2) conv(8, k3, d2, p2) avgpool(2)")
    f = receptive_fields(net, plan.input_shape)
    assert f["4"] == Field((29,), (8,), (-8,))  # 5, pool 3 at 2: 9, 3 dilated 2 at 4: 25, pool 2 at 4: 29
    assert check_against_gradients(net, plan.input_shape, ["2", "3", "4"], f) >= 3
    plan, net, _ = traced("input 1x8x20x20\nconv(2, k3, p1) maxpool((1, 2, 2)) conv(2, k3, s2) avgpool(2, ceil=true)")
    f = receptive_fields(net, plan.input_shape)
    assert f["3"] == Field((7, 12, 12), (4, 8, 8), (-1, -1, -1))
    assert check_against_gradients(net, plan.input_shape, ["1", "2", "3"], f) >= 2


@pytest.mark.parametrize("name, last, field", [
    # permute, layer norm, linear at each position, layer scale: a 4x4 stem at 4, then 7x7 depthwise convolutions,
    # 3, 3, 9 and 3 of them at strides 4, 8, 16 and 32 with 2x2 ones between: 4 + 6 * (3*4 + 3*8 + 9*16 + 3*32)
    # + 4 + 8 + 16
    ("convnext_tiny", "0", Field((1688, 1688), (32, 32), (-828, -828))),
    # split and channel shuffle: 3 at 2, pool 3 at 2, then stride-2 units and 3x3 depthwise ones: 7 + 8 + 3 * 16
    # + 16 + 7 * 32 + 32 + 3 * 64
    ("shufflenet_v2_x1_0", "4", Field((527, 527), (32, 32), (-263, -263))),
    # ceil-mode pooling, concatenated 1x1 and 3x3 expands: 3, 7, two fires 23, 31, 63, 79, four fires 207
    ("squeezenet1_1", "0", Field((207, 207), (16, 16), (-88, -88))),
    ("mobilenet_v3_small", "0", "global"),  # hard swish, and squeeze-and-excitation gates
    ("vit_b_16", "0", None),  # patches become tokens: no spatial axes after the first layer
])
def test_torchvision_specs_of_every_kind_are_followed(name, last, field):
    """Nothing these specs do is unknown, and their last field is what their kernels and strides make."""
    plan, net, summary = traced(SPECS / "torchvision" / f"{name}.arch")
    f = receptive_fields(net, plan.input_shape)
    assert set(f) >= {r.name for r in summary}
    if field == "global":  # every position sees the whole input
        got = f[last]
        assert got.stride == (32, 32) and all(lo <= 0 and lo + size > n for lo, size, n in
                                              zip(got.start, got.size, plan.input_shape[1:]))
    else:
        assert f[last] == field


# The smallest input ------------------------------------------------------------------------------

SMALLEST = {"lenet": 12, "lenet-bn": 16, "alexnet": 65, "vgg": 32, "resnet18": 1, "googlenet": 1, "nin": 67,
            "densenet": 29}


@pytest.mark.parametrize("name", SMALLEST)
def test_the_smallest_input_traces_and_one_pixel_less_does_not(name):
    plan = api.plan(SPECS / f"{name}.arch")
    found = smallest_input(plan)
    assert found.shape == (plan.input_shape[0], SMALLEST[name], SMALLEST[name])
    assert found.minimal
    trace_plan(dataclasses.replace(plan, input_shape=found.shape))
    for axis in (1, 2):
        smaller = tuple(n - (a == axis) for a, n in enumerate(found.shape))
        if smaller[axis] >= 1:
            with pytest.raises(ArchError):
                trace_plan(dataclasses.replace(plan, input_shape=smaller))
    assert found.seconds < 30


def test_joins_that_need_even_sizes(monkeypatch):
    """A stride-2 convolution beside 2x2 pooling agree on even sizes only: bisection alone would stop at 8."""
    spec = "input 1x20x20\nadd([conv(1, k3, s2, p1)], [maxpool(2, 2)])"
    plan = api.plan(spec)
    assert min_input(plan) == (1, 2, 2)
    monkeypatch.setattr(receptive, "SEARCH_BELOW", 0)
    assert min_input(plan) == (1, 8, 8)
    refused = [n for n in range(1, 21) if not _traces(plan, (1, n, n))]
    assert refused == list(range(1, 21, 2))


def test_a_chain_needs_no_search_below():
    """A chain of layers accepts every size above its smallest: bisection, and no sizes tried below it."""
    plan = api.plan("input 3x64x64\nconv(4, k5, s2) maxpool(3, 2) conv(4, k3)")
    found = smallest_input(plan)
    assert found.shape == (3, 17, 17) and found.minimal  # 17 -> 7 -> 3, and a 3x3 needs 3
    assert _traces(plan, found.shape) and not _traces(plan, (3, 16, 17)) and not _traces(plan, (3, 17, 16))
    assert found.traces <= 1 + 6 + 2  # its own shape, bisection of 64, one pixel less on each axis
    assert smallest_input(api.plan("input 3x64x48\nconv(4, k5, s2) maxpool(3, 2) conv(4, k3)")).shape == (3, 17, 17)


def test_axes_and_non_square_inputs():
    plan = api.plan("input 2x40x30\nconv(4, (5, 3)) avgpool(2)")
    assert min_input(plan) == (2, 6, 4)
    assert min_input(plan, axes=(2,)) == (2, 40, 4)
    assert min_input(api.plan("input 4\nlinear(2)")) == (4,)
    assert min_input(api.plan("input 4x100\nconv(8, k5, s2)")) == (4, 5)
    with pytest.raises(ArchError, match="axes"):
        min_input(plan, axes=(3,))


def test_a_spec_that_reads_its_input_size_at_the_top_level_is_expanded_again():
    """`avgpool(input.height // 2)` is a kernel of 16 at 32x32; at 4x4 it must be 2, not 16."""
    plan = api.plan("input 1x32x32\nparam half = input.height // 2\nconv(2, k3, p1) avgpool(half)")
    assert min_input(plan) == (1, 2, 2)
    fixed = api.plan("input 1x32x32\nparam half = input.height // 2\nconv(2, k3, p1) avgpool(half)", half=8)
    assert min_input(fixed) == (1, 8, 8)  # a param set by the caller stays set


def test_a_spec_that_does_not_trace_at_its_own_input_is_the_error():
    with pytest.raises(ArchError, match="kernel"):
        min_input(api.plan("input 1x4x4\nconv(1, k5)"))


def _traces(plan, shape):
    try:
        trace_plan(dataclasses.replace(plan, input_shape=shape))
    except ArchError:
        return False
    return True
