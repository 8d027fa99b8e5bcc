"""Every user mistake is an ArchError that points at its place in the spec and says why."""

from pathlib import Path

import pytest

import archdsl
from archdsl import ArchError, ShapeError, SpecSyntaxError

SPECS = Path(__file__).resolve().parent.parent / "specs"


def error_of(spec, **kw) -> ArchError:
    with pytest.raises(ArchError) as info:
        archdsl.trace(spec, **kw)
    return info.value


# (spec text, line, column, width of the caret, words the message must contain)
CASES = [
    # syntax
    ("input 1x28x28\nconv(6 k5)", 2, 8, 2, "unexpected name 'k5'; expected ')' or ','"),
    ("input 1x28x28\nconv(6, k5", 2, 11, 1, "unexpected end of the spec; expected ')' or ','"),
    ("input 1x28x28\nconv(6,, k5)", 2, 8, 1, "unexpected ','; expected ')' or an argument"),
    ("input 1x28x28 relu", 1, 15, 4, "unexpected name 'relu'; expected a line break"),
    ("input 1x28x28\nrelu $", 2, 6, 1, "unexpected character '$'"),
    ("input 1x28x28\n[relu] *", 2, 9, 1, "expected a value"),
    ("block { relu }", 1, 7, 1, "unexpected '{'; expected a name"),
    # names
    ("input 1x28x28\nconw(6, k5)", 2, 1, 4, "unknown layer 'conw'; did you mean 'conv'?"),
    ("input 1x28x28\nconv(6, k5) sigmoid avgpol(2)", 2, 21, 6, "did you mean 'avgpool'?"),
    ("input 1x28x28\nparam width = 8\nconv(widht, k5)", 3, 6, 5, "unknown name 'widht'; did you mean 'width'?"),
    ("input 1x28x28\nparam w = 8\nparam w = 4\nrelu", 3, 7, 1, "'w' is defined twice"),
    ("input 1x8\nparam n\nlinear(n)", 2, 1, 7, "param 'n' has no default; set it with --set n=VALUE"),
    # arguments
    ("input 1x28x28\nconv(6)", 2, 1, 7, "conv needs kernel: conv(channels, kernel, stride=1"),
    ("input 1x28x28\nmaxpool(2, 2, 0, false, 1)", 2, 25, 1, "maxpool takes at most 4 positional arguments"),
    ("input 1x28x28\nrelu(1)", 2, 6, 1, "relu takes no arguments"),
    ("input 1x28x28\nconv(6, k5, kernel=3)", 2, 13, 8, "conv: kernel is given twice"),
    ("input 1x28x28\nconv(6, k5, s1, s2)", 2, 17, 2, "stride is given twice"),
    ("input 1x28x28\nconv(6, k5, strde=2)", 2, 13, 7, "conv has no argument 'strde'; did you mean 'stride'?"),
    ("input 1x28x28\nlinear(10, k3)", 2, 12, 2, "linear has no tag 'k' (kernel)"),
    ("input 1x28x28\nconv(0, k5)", 2, 6, 1, "conv channels must be positive, not 0"),
    ("input 1x28x28\nconv(6, k5, p(-1))", 2, 14, 1, "unexpected '('"),
    ("input 1x28x28\nconv(6, k5, padding=-1)", 2, 21, 2, "conv padding must be at least 0, not -1"),
    ("input 1x28x28\nconv(6, 2.5)", 2, 9, 3, "conv kernel must be a whole number, but 2.5 is 2.5"),
    ("input 1x28x28\nconv(6, k5, bias=1)", 2, 18, 1, "conv bias must be true or false, not 1"),
    ("input 1x28x28\ndropout(1)", 2, 9, 1, "dropout p must be in [0, 1), not 1"),
    ("input 1x28x28\ndropout(-0.1)", 2, 9, 4, "dropout p must be in [0, 1), not -0.1"),
    ("input 1x28x28\nconv(64 / 3, k3)", 2, 6, 6, "conv channels must be a whole number, but 64 / 3 is 21.3333"),
    ("input 1x28x28\nparam r = 0\nconv(64 / r, k3)", 3, 6, 6, "division by zero"),
    ("input 1x28x28\nconv(true + 1, k3)", 2, 6, 4, "expected a number, not true"),
    # blocks and repeats
    ("input 1x8x8\nblock b(c) { conv(c, k1) }\nb(1, 2)", 3, 6, 1, "b takes at most 1 positional arguments (c)"),
    ("input 1x8x8\nblock b(c) { conv(c, k1) }\nb", 3, 1, 1, "b needs c: b(c)"),
    ("input 1x8x8\nblock b(c) { conv(c, k1) }\nb(k3)", 3, 3, 2, "block b takes no tags"),
    ("input 1x8x8\nblock a { b }\nblock b { a }\na", 3, 11, 1, "block 'a' calls itself (a -> b -> a)"),
    ("input 1x8x8\nblock a { relu a }\na", 2, 16, 1, "block 'a' calls itself (a -> a)"),
    ("input 1x8x8\nblock relu { identity }\nrelu", 2, 7, 4, "has the name of a built-in layer"),
    ("input 1x8x8\n[relu] * 0", 2, 10, 1, "a repeat count must be positive, not 0"),
    ("input 1x8x8\n[[[relu] * 1000] * 1000] * 1000", 2, 2, 22, "more than 100,000 layers"),
    ("input 1x8x8\nrelu([relu])", 2, 6, 6, "relu takes no [ ... ] path arguments"),
    # statements
    ("input 1x8x8\ninput 1x8x8\nrelu", 2, 1, 11, "one 'input' statement"),
    ("input 0x8x8\nrelu", 1, 1, 11, "input sizes must be positive"),
    ("input 1x8x8\ntrain fashoin-mnist\nrelu", 2, 7, 13, "unknown dataset 'fashoin-mnist'; did you mean 'fashion-mnist'?"),
    ("input 1x8x8\ntrain mnist lr=0\nrelu", 2, 16, 1, "lr must be > 0, not 0"),
    ("input 1x8x8\ntrain mnist epochs=2.5\nrelu", 2, 20, 3, "epochs must be a whole number"),
    ("input 1x8x8\ntrain mnist bacth=2\nrelu", 2, 13, 7, "unknown train option 'bacth'; did you mean 'batch'?"),
    ("input 1x8x8\ntrain mnist lr=1 lr=2\nrelu", 2, 18, 4, "train option 'lr' is given twice"),
    # shapes
    ("input 1x28x28\nconv(6, k5)\nlinear(10)", 3, 1, 10, "linear(10) gets (1, 6, 24, 24): linear needs (features,) or "
                                                         "(sequence, features), but it gets (1, 6, 24, 24); put flatten before it"),
    ("input 1x4x4\nconv(6, k5)", 2, 1, 11, "conv(6, k5) gets (1, 1, 4, 4): kernel 5 is larger than the input 4x4"),
    ("input 1x4x4\nconv(6, k3, d2)", 2, 1, 15, "kernel 3 (dilated to 5) is larger than the input 4x4"),
    ("input 1x4x4\nmaxpool(2, p2)", 2, 1, 14, "padding 2 is more than half the kernel 2"),
    ("input 3x8x8\nconv(4, k3, g2)", 2, 1, 15, "groups=2 must divide the input channels (3)"),
    ("input 1x8x8\nflatten\nmaxpool(2)", 3, 1, 10, "maxpool needs a (C, L), (C, H, W) or (C, D, H, W) input, but it gets (1, 64)"),
    ("input 8\nsoftmax(dim=2)", 2, 1, 14, "softmax dim 2 is out of range for (1, 8)"),
]


@pytest.mark.parametrize("text, line, column, width, words", CASES, ids=[c[4][:40] for c in CASES])
def test_error_points_at_the_mistake(text, line, column, width, words):
    e = error_of(text)
    assert words in e.message
    assert (e.span.line, e.span.column) == (line, column)
    caret = e.render().splitlines()[2]
    assert caret.strip().lstrip("|").strip() == "^" * width


def test_report_format():
    e = error_of("input 1x28x28\n\nconv(6, k5) relu\nconw(6)\n")
    assert e.render() == (
        "<string>:4:1: error: unknown layer 'conw'; did you mean 'conv'?\n"
        "    4 | conw(6)\n"
        "      | ^^^^"
    )
    assert isinstance(e, ValueError)  # Python callers can catch it as a ValueError


def test_syntax_errors_are_their_own_class():
    assert isinstance(error_of("conv(6 k5)"), SpecSyntaxError)


def test_shape_error_keeps_the_rows_before_it():
    e = error_of(SPECS / "alexnet.arch", input_shape=(1, 28, 28))
    assert isinstance(e, ShapeError)
    assert e.message == "maxpool(3, 2) gets (1, 256, 2, 2): kernel 3 is larger than the input 2x2"
    assert (e.span.line, e.span.column) == (14, 28)
    assert [r.layer for r in e.summary] == ["conv(96, k11, s4, p1)", "relu", "maxpool(3, 2)", "conv(256, k5, p2)", "relu"]
    assert e.summary.complete is False


def test_shape_error_inside_a_block_names_the_call():
    e = error_of(SPECS / "vgg.arch", input_shape=(1, 16, 16))
    assert e.span.line == 14 and e.message.startswith("maxpool(2, 2) gets (1, 512, 1, 1)")
    assert e.notes == ("in block vgg, called at 21:1: vgg(2, 512 / ratio)",)
    assert "note: in block vgg, called at 21:1" in e.render()


def test_empty_spec():
    for text in ["", "# only a comment\n", "input 1x8x8\nparam a = 1\n"]:
        assert "the spec has no layers" in error_of(text).message


def test_missing_input_shape():
    assert "no input shape" in error_of("relu").message
    assert archdsl.trace("relu", input_shape=(3,)).output_shape == (1, 3)


def test_missing_file_and_directory():
    e = error_of("specs/nope.arch")
    assert str(e) == "specs/nope.arch: no such spec file" and e.span is None
    assert "is a directory" in error_of(Path(SPECS)).message


def test_unknown_param_override():
    e = error_of(SPECS / "vgg.arch", ratoi=4)
    assert "no param 'ratoi' in this spec; did you mean 'ratio'?; it declares ratio" in e.message
    assert "declares no params" in error_of(SPECS / "alexnet.arch", ratio=4).message


def test_override_values():
    assert "not a number" in error_of(SPECS / "vgg.arch", ratio="four").message
    e = error_of(SPECS / "vgg.arch", ratio=3)
    assert e.message == "conv channels must be a whole number, but channels is 21.3333"
    assert e.notes == ("in block vgg, called at 17:1: vgg(1, 64 / ratio)",)


def test_bad_input_shape_argument():
    assert "not of the form CxHxW" in error_of(SPECS / "lenet.arch", input_shape="1x28xa").message
    assert "positive" in error_of(SPECS / "lenet.arch", input_shape=(1, 0, 28)).message


def test_deep_nesting_is_an_error_not_a_crash():
    e = error_of("input 4\n" + "[" * 5000 + "relu" + "]" * 5000)
    assert "nest" in e.message


@pytest.mark.parametrize("text, words", [
    ("input 3x8x8; conv(99999999999999999999, k3)", "more than any network can use"),
    ("input 3x8x8; conv(1e99999999, k3)", "number 1e99999999 is too large to be meant"),
    ("input 99999999999x3; relu", "input 99999999999x3 is too large to be meant"),
    ("input 3x8x8; conv(2147483647, k3) flatten linear(2147483647)", "linear(2147483647) gets (1, 77309411292)"),
])
def test_absurd_sizes_are_errors_not_hangs_or_crashes(text, words):
    assert words in error_of(text).message
