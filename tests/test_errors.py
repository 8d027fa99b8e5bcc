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
    ("input 1x28x28\nconv(6, k5, p(-1))", 2, 13, 5, "p(...) is not a tag: a tag is a letter and whole numbers, such as p1"),
    ("input 1x28x28\nconv(6, k5, padding=-1)", 2, 21, 2, "conv padding must be at least 0, not -1"),
    ("input 1x28x28\nconv(6, 2.5)", 2, 9, 3, "conv kernel must be a whole number, but 2.5 is 2.5"),
    ("input 1x28x28\nconv(6, k5, bias=1)", 2, 18, 1, "conv bias must be true or false, not 1"),
    ("input 1x28x28\ndropout(1)", 2, 9, 1, "dropout p must be in [0, 1), not 1"),
    ("input 1x28x28\ndropout(-0.1)", 2, 9, 4, "dropout p must be in [0, 1), not -0.1"),
    ("input 1x28x28\nconv(64 / 3, k3)", 2, 6, 6, "conv channels must be a whole number, but 64 / 3 is 21.3333"),
    ("input 1x28x28\nparam r = 0\nconv(64 / r, k3)", 3, 6, 6, "division by zero"),
    ("input 1x28x28\nconv(true + 1, k3)", 2, 6, 4, "expected a number, not true"),
    # blocks and repeats
    ("input 1x8x8\nblock b(c) { conv(c, k1) }\nb(1, 2)", 3, 6, 1, "b takes at most 1 positional argument (c)"),
    ("input 1x8x8\nblock b(c) { conv(c, k1) }\nb", 3, 1, 1, "b needs c: b(c)"),
    ("input 1x8x8\nblock b(c) { conv(c, k1) }\nb(k3)", 3, 3, 2, "block b takes no tag kN: it has no argument named kernel"),
    ("input 1x8x8\nblock a { b }\nblock b { a }\na", 3, 11, 1, "block 'a' calls itself (a -> b -> a)"),
    ("input 1x8x8\nblock a { relu a }\na", 2, 16, 1, "block 'a' calls itself (a -> a)"),
    ("input 1x8x8\nblock relu { identity }\nrelu", 2, 7, 4, "has the name of a built-in layer"),
    ("input 1x8x8\n[relu] * -1", 2, 10, 2, "a repeat count must be at least 0, not -1"),
    ("input 1x8x8\n[[[relu] * 1000] * 1000] * 1000", 2, 2, 22, "more than 5,000 layers"),
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
    ("input 1x4x4\nmaxpool(2, p2)", 2, 12, 2, "padding 2 is more than half the kernel 2"),
    ("input 3x8x8\nconv(4, k3, g2)", 2, 1, 15, "groups=2 must divide the input channels (3)"),
    ("input 1x8x8\nflatten\nmaxpool(2)", 3, 1, 10, "maxpool needs a (C, L), (C, H, W) or (C, D, H, W) input, but it gets (1, 64)"),
    ("input 8\nsoftmax(dim=2)", 2, 13, 1, "softmax dim 2 is out of range for (1, 8)"),
    # the constructs of today's networks, each used wrongly
    ("input 1x8x8\nrelu6(2)", 2, 7, 1, "relu6 takes no arguments"),
    ("input 1x8x8\nleakyrelu(-1)", 2, 11, 2, "leakyrelu slope must be >= 0, not -1"),
    ("input 1x8x8\ngelu(approximate=fast)", 2, 18, 4, "unknown name 'fast' (the words this argument takes: none, tanh)"),
    ("input 3x8x8\nmul([identity], [conv(3, k1) flatten])", 2, 1, 38,
     "mul needs paths that agree in rank and, on each axis, in size (or be 1 there): "
     "path 1 gives (1, 3, 8, 8), path 2 gives (1, 192)"),
    ("input 8x4x4\nsplit([identity], [identity], [identity])", 2, 1, 41,
     "axis 1 has 8, which does not split evenly into 3 paths"),
    ("input 8x4x4\nsplit([identity], [identity], sizes=(3, 4))", 2, 37, 6,
     "sizes (3, 4) must give each of the 2 paths its part of the 8 along axis 1"),
    ("input 2x16\nconv(4, k1x7)", 2, 9, 4, "kernel (1, 7) has 2 sizes, but the input has 1 spatial axis"),
    ("input 1x8x8\nconv(4, k3, s2, padding=same)", 2, 25, 4, "padding=same needs stride 1"),
    ("input 1x8x8\nconv(4, kernel=(1, 2.5))", 2, 16, 8, "conv kernel must be a whole number, but (1, 2.5) is 2.5"),
    ("input 1x8x8\nconv(4, 3x3)", 2, 9, 3, "a window of several sizes is a tag, k3x3, or a tuple, kernel=(3, 3)"),
    ("input 1x8x8\nbatchnorm(16)", 2, 11, 2, "batchnorm takes no positional arguments; its channel count comes from "
                                            "its input; give eps, momentum, affine by name"),
    ("input 1x8x8\nlinear(64, 10)", 2, 12, 2, "linear takes at most 1 positional argument (features); in_features "
                                             "come from its input"),
    ("input 8\nlayernorm(over=channels)", 2, 1, 24, "layernorm over=channels needs a (C, L), (C, H, W)"),
    ("input 8\nlayernorm(over=3)", 2, 16, 1, "over=3 needs 3 axes besides the batch"),
    ("input 8x4x4\ngroupnorm(3)", 2, 1, 12, "groups=3 must divide the channels (8)"),
    ("input 1x8x8\npermute(0, 1, 1, 2)", 2, 9, 10, "is not an order of the 4 axes of (1, 1, 8, 8)"),
    ("input 1x8x8\npermute(1, 2, 0)", 2, 9, 7, "axes count as torch counts them, with the batch as axis 0: "
                                              "permute(0, 2, 3, 1)"),
    ("input 1x8x8\npermute(1, 0, 2, 3)", 2, 9, 10, "permute must keep the batch, axis 0, first"),
    ("input 1x8x8\ntranspose(0, 1)", 2, 11, 1, "transpose cannot use axis 0, the batch"),
    ("input 1x8x8\nflatten(0)", 2, 9, 1, "flatten cannot use axis 0, the batch"),
    ("input 1x8x8\nflatten(3, 2)", 2, 9, 1, "flatten start 3 comes after end 2"),
    ("input 1x8x8\nreshape(5, 5)", 2, 9, 4, "(1, 1, 8, 8) has 64 values per example, but shape (5, 5) holds 25"),
    ("input 1x8x8\nreshape(-1, -1)", 2, 9, 6, "with at most one -1"),
    ("input 8\nunflatten(1, (3, 3))", 2, 14, 6, "(1, 8) has 8 values on axis 1, but sizes (3, 3) holds 9"),
    ("input 1x8x8\nmean(0)", 2, 6, 1, "mean cannot use axis 0, the batch"),
    ("input 8x4x4\nchannelshuffle(3)", 2, 16, 1, "C divisible by groups=3"),
    ("input 8\ndroppath(1)", 2, 10, 1, "droppath p must be in [0, 1), not 1"),
    ("input 8x4x4\nlayerscale(1e-6, dim=5)", 2, 22, 1, "layerscale axis 5 is out of range for (1, 8, 4, 4)"),
    ("input 3x8x8\nclasstoken", 2, 1, 10, "classtoken needs a sequence (tokens, features), but it gets (1, 3, 8, 8)"),
    ("input 4x8\nattention(3)", 2, 11, 1, "heads=3 must divide the features (8)"),
    ("input 4x8\ntoken(9)", 2, 7, 1, "token 9 is out of range for 4 tokens"),
    ("input 1x8x8\nconv(8, k1, bias=\"no\")", 2, 18, 4, "conv bias must be true or false, not 'no'"),
    # defaults, input sizes, expressions
    ("input 1x8x8\ndefault conv(64)\nconv(8, k1)", 2, 14, 2, "a default gives arguments by name"),
    ("input 1x8x8\nblock b { relu }\ndefault b(x=1)\nb", 3, 9, 1, "default sets arguments of built-in layers"),
    ("input 1x8x8\ndefault conv(bias=1)\nconv(8, k1)", 2, 19, 1, "conv bias must be true or false, not 1"),
    ("input 1x8x8\ndefault conv(bias=false)\ndefault conv(bias=true)\nconv(8, k1)", 3, 19, 4,
     "default conv: bias is given twice"),
    ("input 8\nblock b { linear(input.height) }\nb", 2, 18, 12, "input.height needs an input of at least 3 axes"),
    ("input 1x8x8\nblock b { conv(input.chanels, k1) }\nb", 2, 22, 7,
     "input has no size 'chanels'; did you mean 'channels'?"),
    ("input 1x8x8\nconv(max(1), k1)", 2, 6, 6, "max takes 2 or more arguments, not 1"),
    ("input 1x8x8\nconv(foo(1), k1)", 2, 6, 3, "unknown function 'foo'"),
    ("input 1x8x8\nif true and 1 [relu]", 2, 13, 1, "expected true or false, not 1"),
    ("input 1x8x8\nif not 3 [relu]", 2, 8, 1, "expected true or false, not 3"),
    ("input 1x8x8\nconv(make_divisible(8, 0), k1)", 2, 6, 20, "make_divisible needs a positive divisor"),
    ("input 1x8x8\n[relu] * 2 as i\nlinear(i)", 3, 8, 1, "unknown name 'i'"),
    # names: what archdsl calls a thing, what it lacks, and no suggestion that could not be meant
    ("input 1x8x8\nConv2d(4, k3)", 2, 1, 6, "unknown layer 'Conv2d'; archdsl calls it 'conv'"),
    ("input 1x8x8\nswish", 2, 1, 5, "unknown layer 'swish'; archdsl calls it 'silu'"),
    ("input 1x8x8\nlstm(4)", 2, 1, 4, "recurrent layers (LSTM, GRU, RNN) are not in the language"),
    ("input 1x8x8\nfor", 2, 1, 3, "there are no loops: repeat a path with [ ... ] * n"),
    ("input 1x8x8\nx = 3", 2, 3, 1, "there are no assignments: declare a value with param NAME = value"),
    ("input 1x8x8\nnn.Conv2d(1, 4, 3)", 2, 3, 1, "names have no dots"),
    ("input 8\nadaptive_avg_pool2d", 2, 1, 19, "archdsl calls it 'adaptiveavgpool'"),
    ("input 8\nLeaky_ReLU", 2, 1, 10, "archdsl calls it 'leakyrelu'"),
    ("input 8\ndropout2d", 2, 1, 9, "there is no channel dropout yet"),
    ("input 8\nlinear(False)", 2, 8, 5, "unknown name 'False'; did you mean 'false'?"),
    ("input 8\nblock b { relu default conv(bias=false) }\nb", 2, 16, 7,
     "'default' starts a statement, which stands at the top level of a spec"),
    # found by trying the new constructs as a new user would
    ("input 8x4x4\nmean(1, 2, 3) linear(3)", 2, 15, 9, "linear needs (features,) or (sequence, features), but it gets "
                                                     "(1): only the batch axis is left"),
    ("input 8x4x4\nmul([mean(1)], [identity])", 2, 1, 26, "mul needs paths that agree in rank"),
    ("input 8x4x4\nmean(3, -1)", 2, 6, 5, "mean(3, -1) names an axis twice"),
    ("input 3x8x8\n[relu] * 2 as input", 2, 1, 19, "'input' already means something"),
    ("param true = 3\ninput 8\nrelu", 1, 7, 4, "'true' already means something"),
    ("input 3x32x32\nconv(3, 64, 3)", 2, 1, 14, "is this torch's Conv2d(in, out, kernel)? Write conv(out, kernel)"),
    ("input 8\n[relu] * 100000000 as i", 2, 10, 9, "a repeat of 100,000,000 is more than the 5,000 layers"),
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
    ("input 3x8x8; conv(1e99999999, k3)", "number 1e99999999 is out of range"),
    ("input 10; linear(10) layernorm(eps=1e-31)", "number 1e-31 is out of range: a number in a spec has at most 30"),
    ("input 99999999999x3; relu", "input 99999999999x3: a size above 999,999,999 is too large to be meant"),
    ("input 3x8x8; conv(2147483647, k3) flatten linear(2147483647)", "linear(2147483647) gets (1, 77309411292)"),
])
def test_absurd_sizes_are_errors_not_hangs_or_crashes(text, words):
    assert words in error_of(text).message


# Several mistakes, one report -------------------------------------------------------

def test_independent_mistakes_are_all_reported_each_at_its_place():
    text = ("input 1x28x28\nconw(6, k5) relu6(2)\nblock b(c) { conv(c, k3, strde=2) }\nb(4) b(5)\n"
            "linear(2, 3) batchnorm(16)\n")
    e = error_of(text)
    found = [(x.span.line, x.span.column, x.message.split(";")[0]) for x in e.errors]
    assert found == [(2, 1, "unknown layer 'conw'"), (2, 19, "relu6 takes no arguments"),
                     (3, 26, "conv has no argument 'strde'"),  # once, though the block is called twice
                     (5, 11, "linear takes at most 1 positional argument (features)"),
                     (5, 24, "batchnorm takes no positional arguments")]
    assert e.errors[2].notes == ("in block b, called at 4:1: b(4)",)
    report = e.render()
    assert report.count(": error: ") == 5 and report.endswith("\n5 errors")


def test_syntax_errors_are_all_reported_after_resynchronising_at_the_next_statement():
    e = error_of("input 1x28x28\nconv(6 k5)\nrelu $\nblock { relu }\nconv(6, k5)\nx = 3\n")
    assert isinstance(e, SpecSyntaxError)
    assert [(x.span.line, x.span.column) for x in e.errors] == [(2, 8), (3, 6), (4, 7), (6, 3)]


def test_an_unclosed_bracket_ends_the_report_instead_of_cascading():
    e = error_of("input 1x8x8\nconv(6, k5\nrelu\nsigmoid $\n")
    assert len(e.errors) == 1 and e.message == "unexpected name 'relu'; expected ')' or ','"


def test_the_report_stops_at_the_limit():
    from archdsl.errors import MAX_ERRORS
    e = error_of("input 1x8x8\n" + "\n".join(f"bad{i}" for i in range(MAX_ERRORS + 5)))
    assert len(e.errors) == MAX_ERRORS and e.truncated
    assert e.render().endswith(f"{MAX_ERRORS} errors; stopped looking there, so there may be more")


def test_a_failing_param_is_not_reported_again_at_each_use():
    e = error_of("input 1x8x8\nparam c = 8 / 0\nconv(c, k1) conv(c, k1)")
    assert len(e.errors) == 1 and e.message == "division by zero"


@pytest.mark.parametrize("name", ["relu7", "conv7", "gelu2"])
def test_no_did_you_mean_for_a_different_thing(name):
    """relu6 is not a typo of relu: a name differing by digits gets no suggestion."""
    assert "did you mean" not in error_of(f"input 8\n{name}").message


@pytest.mark.parametrize("typo, meant", [("rleu", "relu"), ("conw", "conv"), ("batchnrom", "batchnorm"),
                                         ("layrnorm", "layernorm")])
def test_did_you_mean_for_a_typo(typo, meant):
    assert f"did you mean '{meant}'?" in error_of(f"input 8\n{typo}").message


def test_a_repeat_with_an_index_is_bounded_at_once_even_when_empty():
    import time
    start = time.perf_counter()
    e = error_of("input 8\n[if false [relu]] * 100000000 as i\nrelu")
    assert "more than the 5,000 layers" in e.message and time.perf_counter() - start < 2


def test_deep_nesting_of_blocks_is_an_error_not_a_traceback():
    text = "input 8\n" + "".join(f"block b{i} {{ add([b{i + 1}], [identity]) }}\n" for i in range(600))
    e = error_of(text + "block b600 { relu }\nb0\n")
    assert "nest more than 64 levels deep" in e.message
