"""`archdsl shapes` as people and programs read it: columns, widths, formats, totals, errors as JSON.

The oracles: torchinfo's own summary of the same built model (its per-layer numbers and its
totals, line for line), torch's flop counter, the csv and html.parser modules, and
unicodedata's East Asian widths for how wide a line is on a terminal.
"""

import csv
import dataclasses
import io
import json
import re
import subprocess
import sys
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import archdsl
from archdsl.cli import app
from archdsl.errors import ArchError
from archdsl.summary import COLUMNS, DEFAULT_COLUMNS, DROP_ORDER, columns_named, compact

SPECS = Path(__file__).resolve().parent.parent / "specs"
WIDE_SPECS = ["alexnet.arch", "resnet18.arch", "torchvision/googlenet.arch", "torchvision/resnet18.arch"]


@pytest.fixture(scope="module")
def traced():
    return {name: archdsl.trace(SPECS / name) for name in WIDE_SPECS}


def cli(*args, columns=None):
    """`archdsl shapes ...` in process; stdout is not a terminal, so $COLUMNS alone sets the width."""
    return CliRunner().invoke(app, ["shapes", *map(str, args)], env={"COLUMNS": columns})


def shown_width(line: str) -> int:
    """Terminal columns, by unicodedata (not archdsl's own measure): wide characters two, marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def cell_spans(header: str, names: list[str]) -> dict[str, tuple[int, int]]:
    """Where each left-aligned column's cells lie in a line, from the header line (ASCII tables)."""
    starts = [header.index(f"  {n}") + 2 if not header.startswith(n) else 0 for n in names]
    return {n: (s, e - 2) for n, s, e in zip(names, starts, [*starts[1:], 10_000])}


# Widths ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WIDE_SPECS)
@pytest.mark.parametrize("width", [60, 80, 120])
def test_no_line_is_wider_than_asked_and_shapes_and_numbers_are_whole(traced, name, width):
    summary = traced[name]
    table = summary.table(width=width)
    lines = table.splitlines()
    assert max(map(shown_width, lines)) <= width, max(lines, key=shown_width)
    header = lines[2]
    assert "layer" in header and "output shape" in header and "params" in header
    start, end = cell_spans(header, ["layer", "output shape"])["layer"]
    for row, line in zip(summary, lines[4:]):
        assert line.lstrip().startswith(f"{row.index}  ")
        assert f"  {'(' + ', '.join(map(str, row.output_shape)) + ')'}  " in line  # never cut
        assert f"{row.params:,}" in line.split()
        cell, full = line[start:end].rstrip(), "  " * row.depth + row.layer
        assert cell == full or (cell.endswith("…") and full.startswith(cell[:-1]) and len(cell) == end - start), \
            (cell, full)


def test_the_default_table_of_alexnet_fits_80_columns_uncut(traced):
    table = traced["alexnet.arch"].table(width=80)
    assert "…" not in table and "hidden" not in table
    assert table.splitlines()[2].split() == ["#", "layer", "output", "shape", "params", "mult-adds", "at"]


def test_numbers_align_right_under_their_headers(traced):
    lines = traced["alexnet.arch"].table().splitlines()
    for header in ("params", "mult-adds", "#"):
        end = lines[2].index(header) + len(header)
        assert all(line[end - 1] != " " and line[end:end + 1] in ("", " ") for line in lines[4:25]), header


def test_columns_are_dropped_in_the_stated_order_and_said_so(traced):
    summary = traced["alexnet.arch"]
    for width in (60, 80, 120, 200):
        table = summary.table(columns="all", width=width)
        header = table.splitlines()[2]
        note = table[table.index("hidden to fit"):table.index("Total params")] if "hidden" in table else ""
        hidden = " ".join(note.split()).partition(": ")[2].split(", ") if note else []
        assert hidden == list(DROP_ORDER[:len(hidden)])  # the first ones of the order, in it
        assert "layer" in header and "output shape" in header
        assert max(map(len, table.splitlines())) <= width
    assert summary.table(width=60).splitlines()[2].split()[-1] == "params"  # mult-adds and at gave way
    assert "hidden to fit 60 characters: at, mult_adds" in summary.table(width=60)


def test_below_the_narrowest_table_the_layer_and_shape_stay():
    table = archdsl.trace(SPECS / "lenet.arch").table(width=20)
    assert table.splitlines()[2].split() == ["layer", "output", "shape"]


def test_the_module_column_shrinks_with_an_ellipsis(traced):
    summary = traced["torchvision/googlenet.arch"]
    lines = summary.table(columns="layer,module,output_size", width=100).splitlines()
    spans = cell_spans(lines[2], ["layer", "module", "output shape"])
    start, end = spans["module"]
    cut = 0
    for row, line in zip(summary, lines[4:]):
        cell, full = line[start:end].rstrip(), compact(row.module)
        assert cell == full or (cell.endswith("…") and full.startswith(cell[:-1])), (cell, full)
        cut += cell != full
    assert cut > 50 and max(map(len, lines)) <= 100


def test_the_layer_keeps_its_text_before_the_module_does(traced):
    summary = traced["alexnet.arch"]
    lines = summary.table(columns="layer,module,output_size", width=80).splitlines()
    spans = cell_spans(lines[2], ["layer", "module", "output shape"])
    layers = [line[slice(*spans["layer"])].rstrip() for line in lines[4:4 + len(summary)]]
    modules = [line[slice(*spans["module"])].rstrip() for line in lines[4:4 + len(summary)]]
    assert layers == [r.layer for r in summary]
    room = 80 - len("conv(96, k11, s4, p1)") - len("(1, 256, 26, 26)") - 2 * 2  # what the module gets
    assert [m.endswith("…") for m in modules] == [len(compact(r.module)) > room for r in summary]
    assert sum(m.endswith("…") for m in modules) == 8 and max(map(len, lines)) == 80


def test_wide_characters_count_two_columns():
    summary = archdsl.trace("input 4\nlinear( # 漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字\n 8) relu")
    assert "漢字" in summary.table()  # not cut without a width
    for width in (40, 41, 60):
        table = summary.table(width=width)
        assert max(map(shown_width, table.splitlines())) <= width
        assert "linear( # 漢" in table and "…" in table


def test_a_long_file_name_loses_its_start_in_the_title(tmp_path):
    spec = tmp_path / ("a_rather_long_folder_name_" * 4) / "lenet.arch"
    spec.parent.mkdir()
    spec.write_text((SPECS / "lenet.arch").read_text())
    title = archdsl.trace(spec).table(width=60).splitlines()[0]
    assert len(title) == 60 and title.startswith("…") and title.endswith("_/lenet.arch: input (1, 1, 28, 28)")


def test_the_cli_fits_columns_and_a_pipe_gets_the_whole_table(traced):
    summary = traced["torchvision/googlenet.arch"]
    narrow = cli(SPECS / "torchvision/googlenet.arch", columns="80")
    assert narrow.exit_code == 0 and max(map(len, narrow.stdout.splitlines())) <= 80
    assert narrow.stdout.rstrip("\n") == summary.table(width=80)
    whole = cli(SPECS / "torchvision/googlenet.arch")  # no terminal, no $COLUMNS: nothing is cut
    assert whole.stdout.rstrip("\n") == summary.table() and max(map(len, whole.stdout.splitlines())) > 80


# Columns -----------------------------------------------------------------------------------------------------------

def test_torchinfo_names_and_aliases_choose_columns():
    names = "input_size,output_size,num_params,params_percent,kernel_size,mult_adds,trainable"
    assert [c.name for c in columns_named(names)] == names.split(",")
    assert columns_named("params, Mult-Adds ,macs,#") == columns_named(["num_params", "mult_adds", "index"])
    assert columns_named("default") == DEFAULT_COLUMNS and columns_named("all") == COLUMNS
    assert columns_named("at,default")[:2] == (columns_named("at")[0], DEFAULT_COLUMNS[0])
    assert len({n for c in COLUMNS for n in (c.name, *c.aliases)}) == sum(1 + len(c.aliases) for c in COLUMNS)
    assert set(DROP_ORDER) | {"layer", "output_size"} == {c.name for c in COLUMNS}


@pytest.mark.parametrize("given, words", [
    ("nosuch", "unknown column 'nosuch'; the columns are: index, name, layer, module, input_size"),
    ("layer,mult_add", "unknown column 'mult_add'; did you mean 'mult_adds'? The columns are: index,"),
    (",", "no column named; the columns are: index,"),
])
def test_an_unknown_column_is_one_clear_error(given, words):
    r = cli(SPECS / "lenet.arch", "--columns", given)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"error: {words}") and r.stderr.count("\n") == 1 and "; or default, all" in r.stderr
    with pytest.raises(ArchError, match="unknown column"):
        archdsl.trace(SPECS / "lenet.arch").table(columns=["layer", "nosuch"])


def test_an_unknown_column_is_told_before_torch_is_imported():
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom archdsl.cli import app\n"
             "r = CliRunner().invoke(app, ['shapes', 'input 4; relu', '--columns', 'nosuch'])\n"
             "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "False"]


@pytest.fixture(scope="module")
def alexnet_torchinfo():
    import torchinfo

    net = archdsl.build(SPECS / "alexnet.arch")
    return torchinfo.summary(net, (1, 1, 224, 224), verbose=0,
                             col_names=("input_size", "output_size", "num_params", "params_percent", "kernel_size",
                                        "mult_adds", "trainable"))


def test_every_column_agrees_with_torchinfo(traced, alexnet_torchinfo):
    summary = traced["alexnet.arch"]
    theirs = alexnet_torchinfo.summary_list[1:]  # [0] is the Sequential itself
    names = "input_size,output_size,num_params,params_percent,kernel_size,mult_adds,trainable"
    lines = [line for line in summary.to_markdown(columns=names).splitlines() if line.startswith("| (")]
    rows = list(csv.DictReader(io.StringIO(summary.to_csv())))
    assert len(theirs) == len(rows) == len(lines) == len(summary) == 21
    for row, line, info in zip(rows, lines, theirs):
        shown = lambda v: "" if v == "--" else v  # noqa: E731  (torchinfo's "--" is our blank)
        kernel = "x".join(map(str, info.kernel_size)) if isinstance(info.kernel_size, list) else info.kernel_size
        assert [c.strip() for c in line.split("|")[1:-1]] == [
            str(tuple(info.input_size)), str(tuple(info.output_size)), f"{info.num_params:,}",
            shown(info.params_percent(alexnet_torchinfo.total_params, False).strip()), str(kernel or ""),
            in_units(info.macs), shown(info.trainable)]
        assert int(row["params"]) == info.num_params and int(row["mult_adds"]) == info.macs
        assert row["input_shape"] == "x".join(map(str, info.input_size)) and row["kernel"] == str(kernel or "")


def in_units(n: int) -> str:
    """A cell's count: two decimals in the largest of G, M, K it reaches, as torchinfo's totals."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def test_the_totals_are_torchinfos_lines(traced, alexnet_torchinfo):
    ours = traced["alexnet.arch"].table()
    theirs = str(alexnet_torchinfo)
    for label in ("Total params", "Trainable params", "Non-trainable params", "Input size (MB)",
                  "Forward/backward pass size (MB)", "Params size (MB)", "Estimated Total Size (MB)"):
        line = next(ln for ln in theirs.splitlines() if ln.startswith(label + ":"))
        assert line in ours.splitlines(), line
    mult_adds = next(ln for ln in theirs.splitlines() if ln.startswith("Total mult-adds"))
    assert f"Total mult-adds: {mult_adds.rsplit(' ', 1)[1]} M" in ours  # torchinfo 1.8 names the unit MEGABYTES
    assert "Output: (1, 10)" in ours and "10^6 bytes" in ours


def test_frozen_weights_read_as_torchinfo_says():
    summary = archdsl.trace(SPECS / "lenet.arch")
    frozen = dataclasses.replace(summary, rows=tuple(
        dataclasses.replace(r, trainable={0: 0, 3: r.params // 2}.get(i, r.trainable)) for i, r in enumerate(summary)))
    lines = frozen.table(columns="trainable,frozen,layer").splitlines()[4:]
    assert lines[0].split()[:2] == ["False", "156"] and lines[3].split()[:2] == ["Partial", "1,208"]
    assert lines[1].split() == ["0", "sigmoid"] and lines[7].split()[:2] == ["True", "0"]
    assert f"Non-trainable params: {156 + 1208:,}" in frozen.table()
    assert frozen.to_dict()["frozen_params"] == 1364 and frozen.to_dict()["layers"][3]["frozen"] == 1208


def test_flops_when_counted_are_torchs(traced):
    import torch
    import torch.utils.flop_counter

    from archdsl.api import plan
    from archdsl.measures import count_flops
    from archdsl.tracer import trace_plan

    net, summary = trace_plan(plan(SPECS / "alexnet.arch"))
    assert "FLOPs" not in summary.table() and summary.to_dict()["total_flops"] is None
    flops = count_flops(net, summary.input_shape)
    counted = dataclasses.replace(summary, rows=tuple(dataclasses.replace(r, flops=flops.get(r.name, 0))
                                                      for r in summary))
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:  # the whole net, counted apart
        net(torch.empty(summary.input_shape, device="meta"))
    total = counter.get_total_flops()
    assert counted.to_dict()["total_flops"] == total
    assert f"FLOPs (torch.utils.flop_counter, forward): {total / 1e9:.2f} G" in counted.table()
    assert "1.88 G" in counted.table()
    line = counted.table(columns="layer,flops").splitlines()[4]
    assert line.split()[-2:] == [f"{flops['0'] / 1e6:.2f}", "M"]


def test_receptive_field_and_stride_are_blank_until_known():
    summary = archdsl.trace(SPECS / "lenet.arch")
    unknown = dataclasses.replace(summary, rows=tuple(dataclasses.replace(r, receptive_field=None, stride=None)
                                                      for r in summary))
    assert unknown.table(columns="index,receptive_field,stride").splitlines()[4].split() == ["1"]
    known = dataclasses.replace(unknown, rows=(dataclasses.replace(unknown[0], receptive_field=(5, 5), stride=(1, 1)),
                                               *unknown.rows[1:]))
    assert known.table(columns="index,receptive_field,stride").splitlines()[4].split() == ["1", "5x5", "1x1"]
    assert known.to_dict()["layers"][0]["receptive_field"] == [5, 5]


# Depth ------------------------------------------------------------------------------------------------------------

def test_depth_hides_rows_but_not_from_the_totals(traced):
    summary = traced["resnet18.arch"]
    full, top = summary.table(), summary.table(0)
    assert len(top.splitlines()) < len(full.splitlines())
    totals = lambda t: [ln for ln in t[t.index("Total params"):].splitlines() if not ln.startswith("-")]  # noqa: E731
    assert totals(top) == totals(full) and "Total params: 11,178,378" in top
    assert str(dataclasses.replace(summary, depth=0)) == top
    assert dataclasses.replace(summary, depth=0).table(columns="all", depth=1) == summary.table(columns="all", depth=1)
    r = cli(SPECS / "resnet18.arch", "--depth", "0", "-f", "csv")
    assert [row["depth"] for row in csv.DictReader(io.StringIO(r.stdout))] == ["0"] * 8


# Formats ----------------------------------------------------------------------------------------------------------

def test_csv_has_every_row_and_every_field(traced):
    summary = traced["torchvision/googlenet.arch"]
    r = cli(SPECS / "torchvision/googlenet.arch", "--format", "csv", "--columns", "layer")  # --columns: tables only
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    data = summary.to_dict()["layers"]
    assert len(rows) == len(summary) == len(data) == 299
    assert list(rows[0]) == list(data[0])  # JSON's keys, in JSON's order
    assert {f for c in COLUMNS for f in c.fields} <= set(rows[0])
    for row, d in zip(rows, data):
        assert row["layer"] == d["layer"] and row["module"] == d["module"]  # whole, not cut
        assert row["output_shape"] == "x".join(map(str, d["output_shape"])) and int(row["params"]) == d["params"]
        assert row["flops"] == "" and row["line"] == str(d["line"])
    assert sum(int(row["params"]) for row in rows if row["depth"] == "0") == summary.total_params


def test_json_carries_every_column_and_total(traced):
    summary = traced["alexnet.arch"]
    data = json.loads(cli(SPECS / "alexnet.arch", "-f", "json").stdout)
    assert {f for c in COLUMNS for f in c.fields} <= set(data["layers"][0])
    assert {k: data[k] for k in ("total_params", "trainable_params", "frozen_params", "total_mult_adds",
                                 "total_flops")} == {"total_params": 46_764_746, "trainable_params": 46_764_746,
                                                     "frozen_params": 0, "total_mult_adds": summary.total_mult_adds,
                                                     "total_flops": None}
    assert data["memory"] == summary.memory and data["output_shape"] == [1, 10]
    assert data["layers"][14]["params_percent"] == pytest.approx(56.06, abs=0.005)


def test_markdown_is_a_github_table_with_pipes_escaped():
    spec = "input 4\nlinear( # a|b\n 8) relu"
    r = cli(spec, "--format", "markdown", "--columns", "index,layer,output_size,params,at")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| # | layer | output shape | params | at |" and table[1] == "|---:|:---|:---|---:|:---|"
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table]
    assert all(len(c) == 5 for c in cells) and len(table) == 4
    assert cells[2][1].strip() == "linear( # a\\|b 8)" and cells[2][2].strip() == "(1, 8)"
    assert "- Total params: 40" in lines


def test_markdown_indents_nested_rows_with_em_spaces(traced):
    text = traced["resnet18.arch"].to_markdown()
    assert "| 2 | \u2003conv(64, k7, s2, p3) |" in text


class Cells(HTMLParser):
    """Each table row of a page as its cells' (tag, style, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str, str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = [tag, dict(attrs).get("style", ""), ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[2] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(tuple(self.cell))
            self.cell = None


@pytest.mark.parametrize("columns", [None, "all", "layer,num_params,input_size"])
def test_notebook_html_aligns_headers_with_their_cells(traced, columns):
    summary = traced["torchvision/googlenet.arch"]
    page = summary.to_html(columns=columns)
    assert page == summary._repr_html_() or columns is not None
    parsed = Cells()
    parsed.feed(page)
    head, *body = parsed.rows
    chosen = columns_named(columns)
    assert [text for _, _, text in head] == [c.header for c in chosen] and len(body) == len(summary)
    for row in body:
        assert len(row) == len(head) and all(tag == "td" for tag, _, _ in row)
        assert [style for _, style, _ in row] == [style for _, style, _ in head]  # the same alignment per column
    for c, (_, style, _) in zip(chosen, head):
        assert f"text-align:{c.align}" in style and "white-space:nowrap" in style
    assert "Total params: 6,624,904" in page and "Estimated Total Size (MB)" in page


def test_html_escapes_the_spec_text():
    page = archdsl.trace("input 4\nlinear( # <b>&\n 8)").to_html(columns="layer")
    assert "# <b>" not in page and "linear( # &lt;b&gt;&amp; 8)" in page


# Errors as JSON ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message, where", [
    (["conv("], "unexpected end of the spec; expected ')' or an argument", ("<string>", 1, 6)),
    (["input 4; nosuch(3)"], "unknown layer 'nosuch' (`archdsl layers` lists them)", ("<string>", 1, 10)),
    (["input 4; linear(3)", "--set", "x=3"], "no param 'x' in this spec; it declares no params", ("<string>", None, None)),
    (["input 4; linear(3)", "--columns", "nosuch"], "unknown column 'nosuch'", (None, None, None)),
    (["input 4; linear(3)", "--batch", "0"], "Invalid value for '--batch'", (None, None, None)),
    (["input 4; linear(3)", "--depth=-1"], "Invalid value for '--depth'", (None, None, None)),
    (["input 4; linear(3)", "--bogus"], "No such option: --bogus", (None, None, None)),
])
def test_every_error_is_one_json_object(args, message, where):
    for form in (["--format", "json"], ["-fjson"], ["--format=json"]):
        r = CliRunner().invoke(app, ["shapes", *args, *form])
        assert r.exit_code == 2, r.output
        data = json.loads(r.stdout)
        assert data["complete"] is False and data["layers"] == []
        assert data["error"]["message"].startswith(message)
        assert (data["error"]["file"], data["error"]["line"], data["error"]["column"]) == where
        assert "error" in r.stderr.lower() and "Traceback" not in r.output


def test_several_mistakes_come_as_errors():
    r = cli("input 8; conw relu6(2)", "-f", "json")
    data = json.loads(r.stdout)
    assert r.exit_code == 2 and [(e["line"], e["column"]) for e in data["errors"]] == [(1, 10), (1, 21)]


def test_a_shape_error_in_json_has_the_rows_so_far_in_every_format():
    r = cli(SPECS / "alexnet.arch", "--input", "1x28x28", "-f", "json")
    data = json.loads(r.stdout)
    assert r.exit_code == 2 and len(data["layers"]) == 5 and data["layers"][-1]["output_shape"] == [1, 256, 2, 2]
    assert (data["error"]["line"], data["error"]["column"]) == (14, 28) and data["complete"] is False
    r = cli(SPECS / "alexnet.arch", "--input", "1x28x28", "-f", "csv")
    assert r.exit_code == 2 and len(list(csv.DictReader(io.StringIO(r.stdout)))) == 5
    r = cli(SPECS / "alexnet.arch", "--input", "1x28x28", "-f", "markdown")
    assert r.exit_code == 2 and "- Params up to the failing layer: 626,368" in r.stdout
    assert "maxpool(3, 2) gets (1, 256, 2, 2)" in r.stderr
