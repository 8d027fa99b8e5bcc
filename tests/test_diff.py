"""`archdsl diff`'s library half: two networks' rows aligned, what changed, the side-by-side table, JSON.

The oracles: torch's own parameter count of each traced module (the meta network the summary
describes), the two summaries' totals, a plain dynamic-programming longest common subsequence
for the alignment, and unicodedata's East Asian widths for how wide a line is on a terminal.
"""

import json
import random
import re
import time
import unicodedata
from pathlib import Path

import pytest

import archdsl
from archdsl.api import plan
from archdsl.diff import IDENTICAL, MOST_EDITS, _myers, diff
from archdsl.summary import Row, Summary, compact
from archdsl.tracer import trace_plan

SPECS = Path(__file__).resolve().parent.parent / "specs"


def shown_width(line: str) -> int:
    """Terminal columns, by unicodedata (not archdsl's own measure): wide characters two, marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def assert_every_row_once_in_order(d, a: Summary, b: Summary):
    """The diff loses no row and repeats none: each side, read down, is its network's table."""
    assert [p.a for p in d.pairs if p.a is not None] == list(a.rows)
    assert [p.b for p in d.pairs if p.b is not None] == list(b.rows)


@pytest.fixture(scope="module")
def vgg():
    """VGG-11 at ratio 1 and 4, each with the meta network torch traced it as."""
    return [trace_plan(plan(SPECS / "vgg.arch", ratio=ratio)) for ratio in (1, 4)]


@pytest.fixture(scope="module")
def vgg_diff(vgg):
    (_, a), (_, b) = vgg
    return diff(a, b, label_b="specs/vgg.arch ratio=4")


# What pairs with what -------------------------------------------------------------------------------------------

def test_vgg_at_a_quarter_of_the_channels_changes_every_conv_in_place(vgg, vgg_diff):
    (net_a, a), (net_b, b) = vgg
    assert_every_row_once_in_order(vgg_diff, a, b)
    assert {p.status for p in vgg_diff.pairs} == {"same", "changed"}  # nothing added or removed
    convs = [p for p in vgg_diff.pairs if p.a.module.startswith("Conv2d")]
    assert len(convs) == 8 and all(p.status == "changed" and "params" in p.changes for p in convs)
    for p in vgg_diff.pairs:  # each side's params are torch's count of that module
        for row, net in ((p.a, net_a), (p.b, net_b)):
            assert row.params == sum(t.numel() for t in net.get_submodule(row.name).parameters()), row.name
    # a quarter of the channels in and out: a conv keeps 1/16 of its weights (the first, with one channel
    # in, 1/4), give or take its bias
    assert convs[0].a.params == 4 * convs[0].b.params
    assert all(15.5 < p.a.params / p.b.params < 16 for p in convs[1:])
    linears = [p for p in vgg_diff.pairs if p.a.module.startswith("Linear")]
    assert [p.status for p in linears] == ["changed", "same", "same"]  # only the first reads the convs' output


def test_vgg_deltas_are_the_two_summaries_totals_apart(vgg, vgg_diff):
    (net_a, a), (net_b, b) = vgg
    totals = vgg_diff.totals()
    delta = totals["delta"]
    assert delta["total_params"] == b.total_params - a.total_params
    torch_count = [sum(t.numel() for t in net.parameters()) for net in (net_a, net_b)]
    assert delta["total_params"] == torch_count[1] - torch_count[0]
    assert delta["total_mult_adds"] == b.total_mult_adds - a.total_mult_adds
    assert delta["memory"] == {k: b.memory[k] - a.memory[k] for k in a.memory}
    top = [p for p in vgg_diff.pairs if p.depth == 0]
    assert sum(p.params_delta for p in top) == delta["total_params"]
    assert sum(p.mult_adds_delta for p in top) == delta["total_mult_adds"]
    # the linear layers hold most of VGG's weights and keep most of theirs: 3x fewer in all, not 16x
    assert 2.9 < a.total_params / b.total_params < 3.1
    table = vgg_diff.table()
    assert f"{a.total_params:,}" in table and f"{b.total_params:,}" in table
    assert f"{delta['total_params']:+,} (-66.5%)" in table
    assert "params -93.7%" in table and "b: specs/vgg.arch ratio=4: input (1, 1, 224, 224)" in table


def test_lenet_against_lenet_bn_adds_the_batchnorms_and_pairs_the_rest():
    a, b = archdsl.trace(SPECS / "lenet.arch"), archdsl.trace(SPECS / "lenet-bn.arch")
    d = diff(a, b)
    assert_every_row_once_in_order(d, a, b)
    added = [p.b for p in d.pairs if p.status == "added"]
    assert [r.layer for r in added] == ["batchnorm"] * 4
    assert [compact(r.module) for r in added] == ["BatchNorm2d(6)", "BatchNorm2d(16)", "BatchNorm1d(120)",
                                                  "BatchNorm1d(84)"]
    assert d.counts["removed"] == 0 and all(p.a is not None for p in d.pairs if p.status != "added")
    first = d.pairs[0]  # conv(6, k5, p2) against conv(6, k5): the padding changes the shape, not the weights
    assert (first.status, first.changes) == ("changed", ("shape", "mult_adds", "module"))
    assert sum(r.params for r in added) == 2 * (6 + 16 + 120 + 84)  # a batchnorm's weight and bias a channel


def test_resnet18_against_itself_has_no_differences():
    a = archdsl.trace(SPECS / "resnet18.arch")
    d = diff(a, archdsl.trace(SPECS / "resnet18.arch"))
    assert not d.differs and d.counts == {"changed": 0, "added": 0, "removed": 0, "same": len(a)}
    assert_every_row_once_in_order(d, a, d.b)
    assert all(p.a.name == p.b.name for p in d.pairs)
    assert d.table().splitlines()[-1] == IDENTICAL
    only = d.table(changed_only=True).splitlines()
    assert IDENTICAL in only and not any("stage" in line for line in only)  # no rows, only the totals
    assert not any(line.strip().startswith("a: layer") for line in only)


def test_one_layer_removed_in_the_middle_is_one_removed_row():
    text = (SPECS / "lenet.arch").read_text()
    shorter = text.replace("conv(16, k5)    sigmoid avgpool(2, 2)", "conv(16, k5)    sigmoid")
    assert shorter != text
    a, b = archdsl.trace(text), archdsl.trace(shorter)
    d = diff(a, b)
    assert_every_row_once_in_order(d, a, b)
    assert d.counts["removed"] == 1 and d.counts["added"] == 0
    (gone,) = [p for p in d.pairs if p.status == "removed"]
    assert gone.a.index == 6 and gone.a.layer == "avgpool(2, 2)"
    # without the pool the first linear reads 1600 features, not 400: changed, as is every shape before it
    changed = [p.a.layer for p in d.pairs if p.status == "changed"]
    assert changed == ["flatten", "linear(120)"]


def test_a_block_removed_goes_whole_and_the_blocks_around_it_keep_their_rows():
    text = (SPECS / "resnet18.arch").read_text()
    a, b = archdsl.trace(text), archdsl.trace(text.replace("stage(256)\n", ""))
    d = diff(a, b)
    assert_every_row_once_in_order(d, a, b)
    removed = [p.a for p in d.pairs if p.status == "removed"]
    assert removed[0].layer == "stage(256)" and removed[0].depth == 0
    assert all(r.depth > 0 for r in removed[1:]) and len(removed) == 23  # the stage and its 22 nested rows
    assert d.counts["added"] == 0
    stage512 = next(p for p in d.pairs if p.a and p.a.layer == "stage(512)")
    assert stage512.status == "changed" and "params" in stage512.changes  # it now reads 128 channels, not 256


def test_rows_written_alike_pair_before_rows_of_a_class():
    """conv(64) conv(128) against conv(128): the conv(64) is the one removed, not the conv(128)."""
    a, b = archdsl.trace("input 3x32x32\nconv(64, k3) conv(128, k3)"), archdsl.trace("input 3x32x32\nconv(128, k3)")
    d = diff(a, b)
    assert [(p.status, (p.a or p.b).layer) for p in d.pairs] == [("removed", "conv(64, k3)"),
                                                                   ("changed", "conv(128, k3)")]


def test_a_layer_swapped_for_another_of_its_kind_is_changed_in_place():
    a = archdsl.trace("input 8\nlinear(8) relu linear(4)")
    b = archdsl.trace("input 8\nlinear(8) gelu linear(4)")
    d = diff(a, b)
    assert [(p.status, p.changes) for p in d.pairs] == [("same", ()), ("changed", ("module",)), ("same", ())]
    assert "module" in d.table()


def test_changed_only_keeps_the_blocks_around_a_changed_row():
    text = (SPECS / "resnet18.arch").read_text()
    a, b = archdsl.trace(text), archdsl.trace(text.replace("linear(10)", "linear(100)"))
    assert diff(a, b).counts["changed"] == 1
    c = archdsl.trace(text.replace("block stem { conv(64, k7, s2, p3) batchnorm relu",
                                   "block stem { conv(64, k7, s2, p3) batchnorm gelu"))
    lines = diff(a, c).table(changed_only=True).splitlines()
    body = lines[lines.index(next(line for line in lines if line.startswith("a: layer"))) + 2:]
    assert body[0].startswith("stem ") and body[1].strip().startswith("relu")  # the block, then its change
    assert body[2].startswith("---")


# The alignment against an oracle ----------------------------------------------------------------------------------

def lcs_length(a: list, b: list) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_myers_finds_a_longest_common_subsequence():
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.choice("abc") for _ in range(rng.randrange(12))]
        b = [rng.choice("abc") for _ in range(rng.randrange(12))]
        found = _myers(a, b, 100)
        assert all(a[i] == b[j] for i, j in found)
        assert all(i1 < i2 and j1 < j2 for (i1, j1), (i2, j2) in zip(found, found[1:]))
        assert len(found) == lcs_length(a, b), (a, b)


def row(i: int, layer: str, module: str, depth: int = 0, kind: str = "layer") -> Row:
    return Row(i + 1, str(i), depth, kind, layer, module, (1, 8), 0, None)


def flat(layers: list[tuple[str, str]]) -> Summary:
    return Summary("<rows>", (8,), tuple(row(i, t, m) for i, (t, m) in enumerate(layers)))


def test_thousands_of_rows_that_all_differ_align_in_seconds():
    """Every other row of 5,000 differs: past MOST_EDITS the rows pair where they stand, in seconds."""
    a = flat([("linear(8)", "Linear()"), ("relu", "ReLU()")] * 2500)
    b = flat([("linear(8)", "Linear()"), ("gelu", "GELU()")] * 2500)
    assert 2500 > MOST_EDITS
    start = time.process_time()
    d = diff(a, b)
    assert time.process_time() - start < 10
    assert d.counts == {"changed": 2500, "added": 0, "removed": 0, "same": 2500}
    far = flat([("linear(8)", "Linear()"), ("relu", "ReLU()")] * 2500)
    near = Summary("<rows>", (8,), far.rows[:1000] + far.rows[1001:4000] + far.rows[4001:])  # two rows gone
    start = time.process_time()
    d = diff(far, near)
    assert time.process_time() - start < 10
    assert d.counts == {"changed": 0, "added": 0, "removed": 2, "same": 4998}


# The table ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [40, 80, 120])
def test_no_line_is_wider_than_the_terminal(vgg_diff, width):
    r18, r50 = (archdsl.trace(SPECS / "torchvision" / n) for n in ("resnet18.arch", "resnet50.arch"))
    lenet = diff(archdsl.trace(SPECS / "lenet.arch"), archdsl.trace(SPECS / "lenet-bn.arch"))
    for d in (vgg_diff, lenet, diff(r18, r50, label_a="模型 " * 30)):
        for kwargs in ({}, {"depth": 0}, {"changed_only": True}):
            lines = d.table(width=width, **kwargs).splitlines()
            assert max(map(shown_width, lines)) <= width, max(lines, key=shown_width)
    table = vgg_diff.table(width=width)
    if width >= 80:  # the change survives a terminal's width
        assert "params -93.7%" in table and "-85,712,832 (-66.5%)" in table


def test_a_wide_terminal_shows_whole_numbers_and_shapes(vgg_diff):
    table = vgg_diff.table()
    assert "102,764,544" in table and "25,694,208" in table and "(1, 512, 14, 14)" in table
    narrow = vgg_diff.table(width=80)
    assert "102.76M" in narrow and "512x14x14" in narrow  # as an input is written: no batch


def test_labels_and_layer_text_are_escaped():
    a = archdsl.trace(SPECS / "lenet.arch")
    d = diff(a, a, label_a="evil\x1b[31m.arch", label_b="two\nlines.arch")
    table = d.table(width=80)
    assert "\x1b" not in table and "evil\\x1b[31m.arch" in table and "two\\nlines.arch" in table
    assert len(table.splitlines()) == len(d.table().splitlines())


def test_the_marks_say_which_side_has_the_row():
    a, b = archdsl.trace(SPECS / "lenet.arch"), archdsl.trace(SPECS / "lenet-bn.arch")
    lines = diff(a, b).table().splitlines()
    added = [line for line in lines if line.endswith("added")]
    assert len(added) == 4 and all(re.match(r"^\s+>\s+batchnorm", line) for line in added)
    assert lines[-1] == "rows: 8 changed, 4 added, 0 removed, 4 same"


# JSON ---------------------------------------------------------------------------------------------------------------

def test_json_round_trips_with_every_pair_and_the_totals(vgg, vgg_diff):
    (_, a), (_, b) = vgg
    data = vgg_diff.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert len(data["pairs"]) == len(vgg_diff.pairs) == len(a)
    assert [p["a"] for p in data["pairs"]] == [r.to_dict() for r in a.rows]
    assert [p["b"] for p in data["pairs"]] == [r.to_dict() for r in b.rows]
    assert data["totals"]["a"]["total_params"] == a.total_params
    assert data["totals"]["b"]["memory"] == b.memory
    assert data["totals"]["delta"]["total_params"] == b.total_params - a.total_params
    assert data["b"] == {"label": "specs/vgg.arch ratio=4", "spec": b.spec, "input_shape": [1, 1, 224, 224],
                         "complete": True}
    assert data["differs"] is True and data["counts"]["changed"] == 28
    block, conv = data["pairs"][:2]  # vgg(1, 64 / ratio), a Sequential both sides, and its conv
    assert block["changes"] == ["shape", "params", "mult_adds", "trainable"]
    assert conv["status"] == "changed" and conv["changes"] == ["shape", "params", "mult_adds", "trainable", "module"]
    assert conv["params_delta"] == conv["b"]["params"] - conv["a"]["params"] == 160 - 640


def test_a_spec_against_the_same_network_as_a_module_pairs_their_layers():
    """A module's own row holds all its others: against a spec, its inside is what pairs."""
    a = archdsl.trace(SPECS / "torchvision" / "resnet18.arch")
    b = archdsl.trace("torchvision:resnet18", "3x224x224")
    result = diff(a, b)
    paired = [p for p in result.pairs if p.a is not None and p.b is not None]
    assert [p.b.name for p in paired[:4]] == ["conv1", "bn1", "relu", "maxpool"]
    assert all(p.a.params == p.b.params for p in paired if p.b.name.startswith("layer") and "." not in p.b.name)
