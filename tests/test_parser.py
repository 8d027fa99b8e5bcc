"""The syntax tree: what the spec says, with spans, before anything is evaluated."""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

import archdsl
from archdsl import syntax as S

SPECS = Path(__file__).resolve().parent.parent / "specs"


def items(text):
    """The layer items of a one-statement spec."""
    (stmt,) = archdsl.parse(text).statements
    return stmt.items


def test_brief_vgg_spec_parses_into_statements():
    tree = archdsl.parse(SPECS / "vgg.arch")
    kinds = [type(s).__name__ for s in tree.statements]
    assert kinds == ["InputStmt", "ParamStmt", "TrainStmt", "BlockDef"] + ["LayersStmt"] * 9
    inp, param, train, block = tree.statements[:4]
    assert inp.dims == (1, 224, 224)
    assert (param.name, param.default.value) == ("ratio", 1)
    assert train.dataset == "fashion-mnist"
    assert [(o.name, o.value.value) for o in train.options] == [
        ("resize", 224), ("batch", 128), ("lr", Fraction(1, 20)), ("epochs", 10)]
    assert block.name == "vgg" and [p.name for p in block.params] == ["convs", "channels"]
    group, pool = block.body.items
    assert isinstance(group, S.Group) and group.count == S.Name("convs", group.count.span)
    assert [c.name for c in group.path.items] == ["conv", "relu"]
    assert pool.name == "maxpool"


def test_spans_are_exact():
    tree = archdsl.parse("input 1x8x8\n\n  conv(6, k5,\n       p2)  relu")
    conv, relu = tree.statements[1].items
    assert (conv.span.line, conv.span.column, conv.span.end_line, conv.span.end_column) == (3, 3, 4, 11)
    assert conv.span.text == "conv(6, k5,\n       p2)"
    assert (relu.span.line, relu.span.column, relu.span.text) == (4, 13, "relu")
    assert conv.name_span.text == "conv"
    assert tree.statements[0].span.where == "<string>:1:1"


def test_argument_forms():
    (call,) = items("conv(64, k3, s2, p1, d2, g4, bias=false, kernel_size=3)")
    kinds = [type(a).__name__ for a in call.args]
    assert kinds == ["Positional"] + ["Tag"] * 5 + ["Keyword"] * 2
    assert [(a.letter, a.value) for a in call.args[1:6]] == [("k", 3), ("s", 2), ("p", 1), ("d", 2), ("g", 4)]
    assert call.args[6].name == "bias" and call.args[6].value.id == "false"
    assert call.args[0].value.value == 64


def test_expression_precedence_and_exactness():
    (call,) = items("linear(1 + 2 * -x / 4 // 3 - (5 - 1), 0.05, 1e-3)")
    e = call.args[0].value
    assert isinstance(e, S.BinOp) and e.op == "-"
    plus = e.left
    assert plus.op == "+" and plus.left.value == 1
    floordiv = plus.right
    assert floordiv.op == "//" and floordiv.left.op == "/" and floordiv.left.left.op == "*"
    assert isinstance(floordiv.left.left.right, S.Neg)
    assert call.args[1].value.value == Fraction(1, 20)  # 0.05 exactly, not a binary float
    assert call.args[2].value.value == Fraction(1, 1000)


def test_comments_semicolons_and_line_breaks():
    tree = archdsl.parse("# head\ninput 3x8x8 # the input\n\n; conv(4,\n  # inside\n  k3) ;; relu # end")
    assert [type(s).__name__ for s in tree.statements] == ["InputStmt", "LayersStmt", "LayersStmt"]


def test_repeats_nest_and_blocks_without_parameters():
    tree = archdsl.parse("block stem { conv(8, k3) }\n[[stem relu] * 2 dropout] * 3")
    block, layers = tree.statements
    assert block.params == ()
    (outer,) = layers.items
    assert outer.count.value == 3 and isinstance(outer.path.items[0], S.Group)


def test_path_arguments_parse_for_joining_layers():
    (call,) = items("concat([conv(8, k1)], [maxpool(3, s1, p1) conv(8, k1)])")
    assert [type(a).__name__ for a in call.args] == ["PathArg", "PathArg"]
    assert [c.name for c in call.args[1].path.items] == ["maxpool", "conv"]


def test_tag_letters_are_names_where_a_name_is_expected():
    tree = archdsl.parse("param k3 = 2\nblock b(s1) { relu }\nrelu")
    assert tree.statements[0].name == "k3" and tree.statements[1].params[0].name == "s1"


def test_parse_reads_files_and_reports_missing_ones():
    assert archdsl.parse(str(SPECS / "lenet.arch")).source.name.endswith("lenet.arch")
    with pytest.raises(archdsl.ArchError, match="no such spec file"):
        archdsl.parse("specs/missing.arch")


def test_parsing_needs_no_torch():
    code = "import sys, archdsl; archdsl.parse('input 1x8x8; conv(4, k3)'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
