"""No input breaks archdsl: every limit of archdsl/limits.py is one located error, reached quickly.

Each case here once hung, ate gigabytes or ended in a traceback.
"""

import os
import time

import pytest
from typer.testing import CliRunner

import archdsl
from archdsl import ArchError
from archdsl.cli import app


def error_of(text, **kw):
    start = time.perf_counter()
    with pytest.raises(ArchError) as info:
        archdsl.trace(text, **kw)
    assert time.perf_counter() - start < 5, "refused, but slowly"
    assert "Traceback" not in info.value.render()
    return info.value


def squarings(n):
    return "input 4\nparam a0 = 10\n" + "".join(f"param a{i} = a{i - 1} * a{i - 1}\n" for i in range(1, n)) + "relu"


def block_chain(n, body="relu"):
    return "input 8\n" + "".join(f"block b{i} {{ b{i + 1} }}\n" for i in range(n)) + f"block b{n} {{ {body} }}\nb0"


@pytest.mark.parametrize("text, words", [
    # work that multiplies
    ("input 4; block a { [relu] * 1000 }; block b { [a] * 10 }; [b] * 1000", "more than 5,000 layers"),
    ("input 8\n[[if false [relu]] * 5000 as i] * 5000 as j\nrelu", "more than 200,000 steps to unroll"),
    ("input 4; block a { [relu] * (996 + input.features) }; [a] * 10", "more than 5,000 layers"),
    # exact numbers that grow without end
    (squarings(25), "has more than 300 digits"),
    ("input 4; dropout(" + "*".join(["1e30"] * 12) + ")", "has more than 300 digits"),
    ("input 1x4x4; batchnorm(eps=" + "*".join(["1e30"] * 12) + ")", "has more than 300 digits"),
    ("input 4; train synthetic lr=" + "*".join(["1e30"] * 12) + "; relu", "has more than 300 digits"),
    ("input 4; linear(make_divisible(" + "*".join(["1e30"] * 12) + ", 8))", "has more than 300 digits"),
    # nesting: what follows the parser recurses once a level
    ("input 8\n" + "if true [" * 300 + "relu" + "]" * 300, "nests more than 64 levels deep"),
    ("input 8\n" + "add([" * 130 + "relu" + "], [identity])" * 130, "nests more than 64 levels deep"),
    ("input 8\nparam a = " + "+".join(["1"] * 3000) + "\nrelu", "nests more than 64 levels deep"),
    ("input 8\nparam a = " + "-" * 3000 + "1\nrelu", "nests more than 64 levels deep"),
    ("input 8\nparam a = " + "(" * 3000 + "1" + ")" * 3000 + "\nrelu", "nests more than 64 levels deep"),
    (block_chain(600), "nest more than 64 levels deep"),
    (block_chain(600, "linear(input.features)"), "nest more than 64 levels deep"),
    # sizes past what a tensor holds
    ("input 999999999x999999999x999999999; relu", "more than a tensor can"),
    ("input 1x99999999999x28; relu", "a size above 999,999,999 is too large to be meant"),
    # a spec too long to parse quickly
    ("input 4\n" + "relu " * 15000, "longer than 65,536 characters"),
])
def test_bounded(text, words):
    assert words in error_of(text).message


def test_within_the_limits_nothing_is_refused():
    archdsl.trace(block_chain(60))
    archdsl.trace("input 8\n" + "add([" * 31 + "relu" + "], [identity])" * 31)
    archdsl.trace(squarings(7))  # 10^64


def test_a_dependent_param_is_not_a_second_error():
    e = error_of(squarings(25))
    assert len(e.errors) == 1 and "a8 * a8" in e.message  # a9 = 10^512


def test_the_layer_limit_can_be_raised(monkeypatch):
    text = "input 4\n[relu] * 60"
    monkeypatch.setenv("ARCHDSL_MAX_LAYERS", "50")
    e = error_of(text)
    assert "more than 50 layers" in e.message and "set ARCHDSL_MAX_LAYERS to raise it" in e.message
    monkeypatch.setenv("ARCHDSL_MAX_LAYERS", "100")
    assert len(archdsl.trace(text).rows) == 60
    monkeypatch.setenv("ARCHDSL_MAX_LAYERS", "lots")
    assert "$ARCHDSL_MAX_LAYERS must be a whole number of layers from 1 to 1,000,000" in error_of(text).message


@pytest.mark.parametrize("kw, words", [
    (dict(input_shape=(1, 10 ** 30, 28)), "too large to be meant"),
    (dict(input_shape="²x28x28"), "is not of the form CxHxW"),
    (dict(batch=10 ** 20), "a batch size above 999,999,999 is too large to be meant"),
    (dict(batch=1.5), "a batch size must be a whole number"),
    (dict(input_shape=b"1x28x28"), "an input shape is text such as"),
    (dict(input_shape=(1.9, 28, 28)), "an input size must be a whole number"),
    (dict(input_shape=(10 ** 5000, 28, 28)), "an input size above 999,999,999"),
    (dict(batch=10 ** 5000), "a batch size above 999,999,999"),
    (dict(ratio="1e999999999"), "has more than 300 digits"),
    (dict(ratio="1e-5000"), "has more than 300 digits"),
    (dict(ratio=10 ** 400), "has more than 300 digits"),
    (dict(ratio=float("inf")), "is not a finite number"),
])
def test_python_arguments_are_bounded(kw, words):
    assert words in error_of("input 1x28x28\nparam ratio = 1\nrelu", **kw).message


# Lines, characters and files --------------------------------------------------------

def test_line_breaks_other_than_newline_keep_the_excerpt_on_the_reported_line():
    for brk in ("\f", "\x85", "\u2028", "\v", "\r"):
        e = error_of(f"input 1x28x28 # a{brk}b\nconw(6, k5)\n")
        assert e.span.line == 2
        assert e.render().splitlines()[1].endswith("| conw(6, k5)")


def test_control_characters_are_escaped_and_long_lines_clipped():
    report = error_of("input 4\n\x1b[31mrelu\n").render()
    assert "\x1b" not in report and "\\x1b[31mrelu" in report
    line = "relu " * 2000 + "conw " + "relu " * 2000
    report = error_of("input 4\n" + line).render()
    excerpt, caret = report.splitlines()[1:3]
    assert len(excerpt) < 120 and excerpt.count("…") == 2
    assert excerpt[caret.index("^"):].startswith("conw")


def test_wide_characters_keep_the_caret_under_the_mistake():
    report = error_of('input 4\ninclude "網路.arch" conw\n').render()
    excerpt, caret = report.splitlines()[1:3]
    assert caret.index("^") - caret.index("|") == excerpt.index("conw") - excerpt.index("|") + 2


def test_a_byte_order_mark_is_not_a_mistake(tmp_path):
    spec = tmp_path / "bom.arch"
    spec.write_bytes("\ufeffinput 4\nrelu\n".encode())
    assert len(archdsl.trace(spec).rows) == 1
    assert len(archdsl.trace("\ufeffinput 4\nrelu").rows) == 1


def test_what_is_not_a_spec_file_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.arch").write_text("input 4\nrelu\n")
    assert error_of("mlp.arc").message == "no such spec file; did you mean 'mlp.arch'?"
    assert error_of("nets/mlp").message.startswith("no such spec file")
    assert error_of(str(tmp_path)).message == "is a directory, not a spec file"
    os.mkfifo(tmp_path / "pipe.arch")
    assert "not a regular file" in error_of("pipe.arch").message  # never blocks reading it
    (tmp_path / "big.arch").write_text("relu " * 100_000)
    assert "longer than 65,536 characters" in error_of("big.arch").message


def test_includes_are_arch_files_and_name_their_includer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "include takes a spec file ending in .arch" in error_of('input 4\ninclude "../../etc/passwd"\nrelu').message
    assert "cannot include" in error_of('input 4\ninclude "blocks\0.arch"\nrelu').message
    (tmp_path / "a.arch").symlink_to(tmp_path / "b.arch")
    (tmp_path / "b.arch").symlink_to(tmp_path / "a.arch")
    assert "cannot include 'a.arch'" in error_of('input 4\ninclude "a.arch"\nrelu').message
    os.mkfifo(tmp_path / "p.arch")
    assert "p.arch is not a regular file" in error_of('input 4\ninclude "p.arch"\nrelu').message
    (tmp_path / "broken.arch").write_text("block b { conv( }\n")
    e = error_of('input 4\ninclude "broken.arch"\nrelu')
    assert e.where == "broken.arch:1:17" and "in broken.arch, included at <string>:2:1" in e.notes


# The command line --------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--input", "1x99999999999999999999x28"], "too large to be meant"),
    (["--input", "²x28x28"], "is not of the form CxHxW"),
    (["--batch", "99999999999999999999"], "--batch"),
    (["--set", "ratio=1e999999999"], "has more than 300 digits"),
    (["--set", "ratio=1e-5000"], "has more than 300 digits"),
])
def test_flags_are_bounded(args, words):
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["shapes", "input 1x28x28\nparam ratio = 1\nrelu", *args])
    assert time.perf_counter() - start < 5
    assert result.exit_code == 2 and words in result.output and result.exception is None or \
        isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


# Found by a hostile trial ------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    # a block that reads its input is unrolled once per call; its work is the whole spec's
    ("input 8; block b { [[if false [relu]] * 5000 as i] * 39 as j linear(input.features) }; [b] * 100",
     "steps to unroll"),
    # one step can be long: its arguments count
    ("input 4\n[[if max(" + ",".join(["1"] * 20000) + ") > 5 [relu]] * 5000 as i] * 39 as j\nrelu", "steps to unroll"),
    ("input 1\n[reshape(" + "1," * 3000 + "1) reshape(1)] * 2000 as i", "steps to unroll"),
    ("input " + "0" * 5000 + "1x28; relu", None),
    ("input 1x8x8; conv(4, k" + "0" * 5000 + "1)", None),
])
def test_hostile(text, words):
    start = time.perf_counter()
    try:
        archdsl.trace(text)
    except ArchError as e:
        assert words is None or words in e.message, e.message
    else:
        assert words is None
    assert time.perf_counter() - start < 5


def test_many_params_do_not_slow_a_repeat():
    start = time.perf_counter()
    text = "input 4\n" + "".join(f"param p{i} = 1\n" for i in range(3000)) + "[[if false [relu]] * 100 as i] * 100\nrelu"
    assert len(archdsl.trace(text).rows) == 1 and time.perf_counter() - start < 5


def test_a_long_call_repeated_is_quoted_short():
    text = "input 4\n[dropout( # " + "x" * 60000 + "\n 0.5)] * 2000\n"
    start = time.perf_counter()
    summary = archdsl.trace(text)
    assert len(summary.table()) < 400_000 and len(str(summary.to_dict())) < 5_000_000
    assert time.perf_counter() - start < 5


def test_includes_are_bounded_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        (tmp_path / f"b{i}.arch").write_text(f"block b{i} {{ relu }}\n" + "# padding\n" * 3000)
    e = error_of("input 4\n" + "".join(f'include "b{i}.arch"\n' for i in range(3)) + "relu")
    assert "the included files are longer than 65,536 characters together" in e.message


def test_an_include_from_a_folder_named_stdlib_is_the_users(tmp_path, monkeypatch):
    (tmp_path / "stdlib").mkdir()
    (tmp_path / "stdlib" / "blocks.arch").write_text("block mine { relu }\n")
    (tmp_path / "stdlib" / "net.arch").write_text('input 4\ninclude "blocks.arch"\nmine\n')
    monkeypatch.chdir(tmp_path)
    assert len(archdsl.trace("stdlib/net.arch").rows) == 2


def test_a_deleted_working_directory_is_an_error(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert "cannot include" in error_of('input 4; include "x.arch"; relu').message


def test_many_syntax_errors_stay_quick_and_say_they_stopped():
    text = "input 4\n" + "relu )\n" * 300 + "relu\n" * 4000
    start = time.perf_counter()
    e = error_of(text)
    assert time.perf_counter() - start < 5
    assert len(e.errors) < 20 and "stopped looking there, so there may be more" in e.render()


@pytest.mark.parametrize("value", ["9" * 5000, "1000000000000", "0"])
def test_limits_raised_past_their_ceiling_are_refused(monkeypatch, value):
    monkeypatch.setenv("ARCHDSL_MAX_SPEC_CHARS", value)
    assert "$ARCHDSL_MAX_SPEC_CHARS must be a whole number of characters in a spec file from 1 to 16,777,216" in \
        error_of("input 4\nrelu").message


def test_build_says_what_the_weights_would_need():
    with pytest.raises(ArchError, match=r"the model's weights need [\d,.]+ GiB \(3,999,999,996,000,000,000 bytes\)"):
        archdsl.build("input 999999999; linear(999999999)")


def test_control_characters_in_file_names_are_escaped_in_the_table(tmp_path):
    spec = tmp_path / "bell\x07\x1bc.arch"
    spec.write_text("input 4\nrelu\n")
    table = archdsl.trace(spec).table()
    assert "\x07" not in table and "\x1b" not in table and "bell\\x07\\x1bc.arch" in table


def test_combining_marks_keep_the_caret_under_the_mistake():
    report = error_of('input 4\ninclude "e\u0301\u0301\u0301.arch" conw\n').render()
    excerpt, caret = report.splitlines()[1:3]
    assert caret.index("^") - caret.index("|") == excerpt.index("conw") - excerpt.index("|") - 3


def test_train_reports_a_spec_mistake_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom archdsl.cli import app\n"
            "r = CliRunner().invoke(app, ['train', 'input 4; conv('])\n"
            "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "False"]


def test_leading_zeros_are_not_digits_that_count():
    assert archdsl.trace("input 1x28x28\nrelu", input_shape="0" * 5000 + "1x28x28").input_shape == (1, 1, 28, 28)
