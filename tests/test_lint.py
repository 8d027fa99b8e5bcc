"""Warnings for legal specs that are probably wrong: each fires where it should, at the layer it is
about, and not on its close negatives; torch itself confirms what the warnings claim."""

import copy
import random
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from archdsl import ArchError, api, parse
from archdsl.lint import (ACTIVATION_TWICE, BIAS_BEFORE_NORM, DROPOUT_AFTER_OUTPUT, DROPS_EDGE, NO_CHANNEL_AXIS,
                          ONE_LAYER_PARAMS, SOFTMAX_BEFORE_LOSS, lint)
from archdsl.syntax import InputStmt
from archdsl.tracer import materialize, trace_plan

SPECS = Path(__file__).resolve().parent.parent / "specs"


def traced(spec):
    return trace_plan(api.plan(spec))


def warnings_of(spec, **kw):
    return lint(*traced(spec), **kw)


def where(warnings):
    """(code, line, column, the spanned text) of each warning."""
    return [(w.code, w.span.line, w.span.column, w.span.text) for w in warnings]


def real(module: nn.Module) -> nn.Module:
    """A meta-built module with real, initialised weights."""
    torch.manual_seed(0)
    return materialize(copy.deepcopy(module))


# 1. softmax or log-softmax ending the network -----------------------------------------

def test_softmax_at_the_end():
    ws = warnings_of("input 1x28x28\nflatten linear(10)\nsoftmax")
    assert where(ws) == [(SOFTMAX_BEFORE_LOSS, 3, 1, "softmax")]
    assert "softmax before cross-entropy squashes the gradients; drop it, the loss applies it" in ws[0].message


def test_logsoftmax_before_plumbing_still_ends_the_network():
    ws = warnings_of("input 1x28x28\nflatten linear(10) logsoftmax flatten")
    assert where(ws) == [(SOFTMAX_BEFORE_LOSS, 2, 20, "logsoftmax")]
    x = torch.randn(4, 10)  # the claim: log-softmax of log-softmax is log-softmax, so it changes nothing
    assert torch.allclose(torch.log_softmax(torch.log_softmax(x, 1), 1), torch.log_softmax(x, 1), atol=1e-6)


def test_softmax_inside_the_network_or_absent_is_not_warned():
    assert warnings_of("input 1x28x28\nflatten linear(10) softmax linear(10)") == []
    assert warnings_of("input 1x28x28\nflatten linear(10)") == []
    assert warnings_of("input 1x28x28\nconv(10, k3) softmax adaptiveavgpool flatten") == []  # pooled: not the end


# 2. a bias that batch norm cancels --------------------------------------------------------

def test_conv_bias_before_batchnorm():
    ws = warnings_of("input 3x16x16\nconv(8, k3, p1) batchnorm relu")
    assert where(ws) == [(BIAS_BEFORE_NORM, 2, 1, "conv(8, k3, p1)")]
    assert "write conv(8, k3, p1, bias=false)" in ws[0].message


def test_the_bias_is_cancelled_indeed():
    """torch: in training, batch norm's output does not change when the conv's bias does."""
    net, _ = traced("input 3x16x16\nconv(8, k3, p1) batchnorm")
    net = real(net).train()
    x = torch.randn(4, 3, 16, 16)
    before = net(x)
    with torch.no_grad():
        net[0].bias.add_(torch.randn(8) * 10)
    assert torch.allclose(net(x), before, atol=1e-4)


def test_the_fix_the_warning_gives_is_quiet_and_has_no_bias():
    assert warnings_of("input 3x16x16\nconv(8, k3, p1, bias=false) batchnorm relu") == []
    net, _ = traced("input 3x16x16\nconv(8, k3, p1, bias=false) batchnorm relu")
    assert net[0].bias is None
    assert warnings_of("input 3x16x16\ndefault conv(bias=false)\nconv(8, k3, p1) batchnorm relu") == []


def test_bias_not_straight_into_batchnorm_is_not_warned():
    assert warnings_of("input 3x16x16\nconv(8, k3, p1) relu batchnorm") == []
    # the bias also reaches the sum through the identity path: it is not cancelled
    assert warnings_of("input 8x16x16\nconv(8, k3, p1) add([batchnorm], [identity])") == []
    # a path's last conv feeds the join, not the batch norm after it
    assert warnings_of("input 8x16x16\nconcat([conv(8, k1)], [identity]) batchnorm") == []


def test_linear_bias_before_batchnorm_on_features_only():
    ws = warnings_of("input 20\nlinear(8) batchnorm")
    assert where(ws) == [(BIAS_BEFORE_NORM, 2, 1, "linear(8)")]
    assert "each feature's mean" in ws[0].message and "linear(8, bias=false)" in ws[0].message
    # on a sequence, batchnorm1d normalizes axis 1 (the positions), not the linear's features
    assert warnings_of("input 6x20\nlinear(8) batchnorm") == []


def test_a_block_that_ends_in_a_conv_feeds_what_follows_it():
    spec = "input 3x16x16\nblock b(c) {\n    conv(c, k3, p1)\n}\nb(8) batchnorm"
    ws = warnings_of(spec)
    assert where(ws) == [(BIAS_BEFORE_NORM, 3, 5, "conv(c, k3, p1)")]
    assert "in block b, called at 5:1: b(8)" in ws[0].notes


def test_a_warning_in_a_block_called_twice_is_given_once():
    spec = "input 3x16x16\nblock b { conv(8, k3, p1) batchnorm relu }\nb\nb"
    ws = warnings_of(spec)
    assert where(ws) == [(BIAS_BEFORE_NORM, 2, 11, "conv(8, k3, p1)")]
    assert ws[0].notes[-2:] == ("in block b, called at 3:1: b", "the same holds each of the 2 times this layer runs")


# 3. two activations in a row ----------------------------------------------------------------

def test_two_activations_in_a_row():
    ws = warnings_of("input 1x28x28\nrelu relu sigmoid conv(4, k3) relu")
    assert where(ws) == [(ACTIVATION_TWICE, 2, 6, "relu"), (ACTIVATION_TWICE, 2, 11, "sigmoid")]
    assert ws[0].notes == ("relu is at 2:1", "relu of relu is relu: the second does nothing")
    assert ws[1].notes == ("relu is at 2:6",)


def test_a_layer_between_activations_is_not_warned():
    assert warnings_of("input 1x28x28\nrelu conv(4, k3) relu") == []
    assert warnings_of("input 1x28x28\nconv(4, k3) relu avgpool(2) relu flatten linear(10)") == []


def test_activations_across_a_block_and_into_a_path():
    spec = ("input 4x28x28\nblock b { conv(4, k3) relu }\n"
            "b relu\n"
            "concat([relu], [conv(4, k1)])")
    assert where(warnings_of(spec)) == [(ACTIVATION_TWICE, 3, 3, "relu"), (ACTIVATION_TWICE, 4, 9, "relu")]


def test_paths_do_not_run_into_one_another_or_into_what_follows_the_join():
    assert warnings_of("input 4x8x8\nconv(4, k1) concat([conv(4, k1) relu], [relu conv(4, k1)])") == []
    assert warnings_of("input 4x8x8\nconv(4, k1) add([conv(4, k1) relu], [identity]) relu") == []
    # a gate: the sigmoid of a mul's path scales the input, it is not a second activation on it
    assert warnings_of("input 4x8x8\nconv(4, k1) relu mul([identity], [sigmoid])") == []


# 4. dropout after the output layer ------------------------------------------------------------

def test_dropout_after_the_output_layer():
    ws = warnings_of("input 1x28x28\nflatten linear(10)\ndropout(0.5) flatten")
    assert where(ws) == [(DROPOUT_AFTER_OUTPUT, 3, 1, "dropout(0.5)")]
    assert ws[0].notes == ("the output layer is at 2:9",)


def test_dropout_after_a_1x1_conv_that_gives_the_classes():
    ws = warnings_of("input 16x8x8\nconv(10, k1) dropout(0.2) adaptiveavgpool flatten")
    assert where(ws) == [(DROPOUT_AFTER_OUTPUT, 2, 14, "dropout(0.2)")]


def test_dropout_before_the_output_layer_is_the_usual_head():
    assert warnings_of("input 1x8x8\nflatten linear(64) relu dropout(0.5) linear(10)") == []
    assert warnings_of("input 1x28x28\nflatten linear(10) dropout(0)") == []  # does nothing, drops nothing


# 5. windows that never read the last rows ----------------------------------------------------------

def unread(module: nn.Module, shape: tuple[int, ...], axis: int) -> int:
    """How many of the last rows on `axis` the module's output does not depend on: torch's answer."""
    module = real(module).eval()
    x = torch.randn(shape)
    y = module(x)
    n = 0
    while n < shape[axis]:
        bumped = x.clone()
        bumped.narrow(axis, shape[axis] - 1 - n, 1).add_(100.0)
        if not torch.equal(module(bumped), y):
            break
        n += 1
    return n


def test_maxpool_drops_the_last_row_and_column():
    net, summary = traced("input 96x54x54\nmaxpool(3, 2)")
    ws = lint(net, summary)
    assert where(ws) == [(DROPS_EDGE, 2, 1, "maxpool(3, 2)")]
    assert ws[0].message == ("maxpool(3, 2) gets (1, 96, 54, 54) and drops the last row and column; "
                             "with p1 or ceil=true it keeps them")
    assert unread(net[0], (1, 96, 54, 54), 2) == 1 and unread(net[0], (1, 96, 54, 54), 3) == 1


@pytest.mark.parametrize("fixed", ["maxpool(3, 2, p1)", "maxpool(3, 2, ceil=true)"])
def test_the_fix_reads_every_row(fixed):
    net, summary = traced(f"input 96x54x54\n{fixed}")
    assert lint(net, summary) == []
    assert unread(net[0], (1, 96, 54, 54), 2) == 0


def test_an_exact_division_is_quiet():
    assert warnings_of("input 96x55x55\nmaxpool(3, 2)") == []  # (55 - 3) / 2 is whole
    assert warnings_of("input 1x224x224\nconv(64, k11, s4, p2)") == []  # (224 + 4 - 11) % 4 = 1: padding only
    # a 1x1 conv with stride 2 skips every other row by design, the last one among them
    assert warnings_of("input 8x56x56\nconv(16, k1, s2)") == []


def test_alexnets_first_conv_drops_two_real_columns():
    """(224 + 2 - 10 - 1) % 4 = 3 padded columns are left, of which the last is padding: 2 of the image."""
    net, summary = traced(SPECS / "alexnet.arch")
    first = lint(net, summary)[0]
    assert first.message == ("conv(96, k11, s4, p1) gets (1, 1, 224, 224) and drops the last 2 rows and columns; "
                             "with p2 it keeps them")
    assert unread(net[0], (1, 1, 224, 224), 3) == 2
    fixed, fixed_summary = traced("input 1x224x224\nconv(96, k11, s4, p2)")
    assert lint(fixed, fixed_summary) == [] and unread(fixed[0], (1, 1, 224, 224), 3) == 0


def test_one_axis_or_the_other_and_one_dimensional():
    ws = warnings_of("input 4x54x55\nmaxpool(3, 2)")
    assert ws[0].message.endswith("drops the last row; with p1x0 or ceil=true it keeps them")
    net, summary = traced("input 4x8x11\nconv(4, k3, s2x3)")
    assert lint(net, summary)[0].message.endswith("drops the last row and the last 2 columns; "
                                                  "with p1 it keeps them")
    assert unread(net[0], (1, 4, 8, 11), 2) == 1 and unread(net[0], (1, 4, 8, 11), 3) == 2
    assert warnings_of("input 4x8x11\nconv(4, k3, s2x3, p1)") == []
    net, summary = traced("input 2x10\navgpool(4)")
    assert lint(net, summary)[0].message.endswith("drops the last 2 positions; with p1 or ceil=true it keeps them")
    assert unread(net[0], (1, 2, 10), 2) == 2
    assert warnings_of("input 2x10\navgpool(4, p1)") == []


def test_the_rows_said_to_be_dropped_are_those_torch_never_reads():
    """Random 1-d windows (kernel, stride, padding, dilation, ceil mode): the count in the warning, or its
    absence, agrees with perturbing the input's last positions one by one."""
    rng = random.Random(0)
    checked = warned = 0
    for _ in range(160):
        kind = rng.choice(["conv(2, ", "maxpool(", "avgpool("])
        k, d = rng.randint(1, 5), rng.randint(1, 2) if kind == "conv(2, " else 1  # pools take no dilation
        s = rng.randint(1, min(4, d * (k - 1) + 2))  # mostly windows as wide as the stride, sometimes narrower
        p = rng.randint(0, (d * (k - 1) + 1) // 2)
        size = rng.randint(d * (k - 1) + 1, 20)
        call = f"{kind}k{k}, s{s}, p{p}" + (f", d{d}" if kind == "conv(2, " else
                                            f", ceil={rng.choice(['true', 'false'])}") + ")"
        net, summary = traced(f"input 2x{size}\n{call}")
        ws = [w for w in lint(net, summary) if w.code == DROPS_EDGE]  # 2x2 is also a square input
        said = int(re.search(r"the last (\d+ )?position", ws[0].message).group(1) or 1) if ws else 0
        if {j * d % s for j in range(k)} == set(range(s)):  # else it skips positions by design: not warned
            assert said == unread(net[0], (1, 2, size), 2), call
            checked, warned = checked + 1, warned + bool(said)
        else:
            assert said == 0, call
    assert checked >= 100 and warned >= 8  # both answers were put to torch


# 6. a two-axis input read by a conv -------------------------------------------------------------

def test_a_square_input_without_channels():
    tree = parse("input 28x28\nconv(6, k5, p2) relu flatten linear(10)")
    net, summary = traced(tree)
    assert isinstance(net[0], nn.Conv1d) and net[0].in_channels == 28  # what torch built from it
    span = next(st.span for st in tree.statements if isinstance(st, InputStmt))
    ws = lint(net, summary, input_span=span)
    assert where(ws) == [(NO_CHANNEL_AXIS, 2, 1, "conv(6, k5, p2)")]
    assert "did you mean input 1x28x28?" in ws[0].message
    assert ws[0].notes == ("the input is given at 1:1",)
    assert lint(net, summary)[0].notes == ()  # where the input came from is not known


def test_images_and_sequences_are_not_warned():
    assert warnings_of("input 1x28x28\nconv(6, k5, p2) relu") == []
    assert warnings_of("input 80x3000\nconv(16, k3, p1) relu") == []  # 80 features over 3000 steps: a 1-d conv


# 7. one layer with most of the weights ---------------------------------------------------------

def test_one_layer_with_most_parameters():
    net, summary = traced("input 3x64x64\nflatten linear(100) relu linear(10)")
    ws = lint(net, summary)
    assert where(ws) == [(ONE_LAYER_PARAMS, 2, 9, "linear(100)")]
    share = sum(p.numel() for p in net[1].parameters()) / sum(p.numel() for p in net.parameters())
    assert f"holds {share:.1%} of the network's 1,229,910 parameters" in ws[0].message
    assert "it takes 12,288 features" in ws[0].notes[0]


def test_spread_small_or_single_layer_networks_are_not_warned():
    assert warnings_of("input 3x64x64\nadaptiveavgpool(4) flatten linear(100) relu linear(10)") == []
    assert warnings_of("input 1x28x28\nflatten linear(10)") == []  # one layer: all of it, as meant
    assert warnings_of("input 1x8x8\nflatten linear(100) relu linear(2)") == []  # 6,702 parameters


# The report -------------------------------------------------------------------------------------------

def test_a_warning_renders_as_an_error_does():
    w = warnings_of("input 1x28x28\nflatten linear(10)\nsoftmax")[0]
    as_error = ArchError(w.message, w.span, notes=w.notes).render()
    assert w.render() == as_error.replace(": error: ", ": warning: ", 1)
    assert w.render().splitlines()[:3] == [f"<string>:3:1: warning: {w.message}", "    3 | softmax",
                                           "      | ^^^^^^^"]


def test_strict_makes_a_warning_an_error():
    w = warnings_of("input 1x28x28\nflatten linear(10)\nsoftmax")[0]
    e = w.as_error()
    assert isinstance(e, ArchError) and e.span == w.span and e.notes == w.notes
    assert "--strict" in e.message and SOFTMAX_BEFORE_LOSS in e.message
    assert e.render().startswith("<string>:3:1: error: softmax ends the network")


# The specs --------------------------------------------------------------------------------------------

# Each spec's warnings: (code, file, line, column). Every one is true: AlexNet's and NiN's floor-mode pooling
# and first convolutions leave rows unread (d2l's networks, as drawn), SqueezeNet 1.1's first conv leaves one;
# d2l's LeNet-BN, ResNet and DenseNet stems and torchvision's VGG-16-BN give a bias to a conv before batch norm.
EXPECTED = {
    "alexnet.arch": [(DROPS_EDGE, "alexnet.arch", 13, 1), (DROPS_EDGE, "alexnet.arch", 13, 28),
                     (DROPS_EDGE, "alexnet.arch", 14, 28), (DROPS_EDGE, "alexnet.arch", 17, 28)],
    "densenet.arch": [(BIAS_BEFORE_NORM, "densenet.arch", 15, 14)],
    "lenet-bn.arch": [(BIAS_BEFORE_NORM, "lenet-bn.arch", line, 1) for line in (11, 12, 14, 15)],
    "nin.arch": [(DROPS_EDGE, "stdlib/nin.arch", 7, 5), *((DROPS_EDGE, "nin.arch", line, 27) for line in (13, 14, 15))],
    "resnet18.arch": [(BIAS_BEFORE_NORM, "resnet18.arch", 13, 14), (BIAS_BEFORE_NORM, "stdlib/resnet.arch", 9, 10),
                      (BIAS_BEFORE_NORM, "stdlib/resnet.arch", 10, 10)],
    "torchvision/squeezenet1_1.arch": [(DROPS_EDGE, "squeezenet1_1.arch", 19, 5)],
    "torchvision/vgg16_bn.arch": [(BIAS_BEFORE_NORM, "vgg16_bn.arch", 11, 6)],
}
ALL_SPECS = sorted(str(p.relative_to(SPECS)) for p in [*SPECS.glob("*.arch"), *SPECS.glob("torchvision/*.arch")])


@pytest.mark.parametrize("name", ALL_SPECS)
def test_the_specs_warnings(name):
    ws = warnings_of(SPECS / name)
    expected = EXPECTED.get(name, [])
    assert len(ws) == len(expected), "\n".join(w.render() for w in ws)
    for w, (code, file, line, column) in zip(ws, expected):
        assert (w.code, w.span.line, w.span.column) == (code, line, column), w.render()
        assert w.span.source.name.endswith(file), w.render()


def test_the_specs_with_warnings_exist():
    assert set(EXPECTED) <= set(ALL_SPECS)
