"""The documentation says what the code does."""

import re
from pathlib import Path

import archdsl
from archdsl.plan import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def test_every_layer_is_in_the_language_reference():
    """Each layer is named in docs/language.md, with the signature `archdsl layers` prints."""
    doc = (ROOT / "docs" / "language.md").read_text()
    for name, ldef in REGISTRY.items():
        assert f"`{name}`" in doc, name
        if ldef.args or ldef.takes_paths:
            assert f"`{ldef.signature()}`" in doc, ldef.signature()


def test_readme_quick_start_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    main = lines[lines.index("# set up and run the main job: AlexNet's shape table") + 1]
    test = lines[lines.index("# set up and run the tests") + 1]
    assert main.endswith("archdsl shapes specs/alexnet.arch") and "pip install -e ." in main
    assert test.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set up and run the tests" in ci


def test_readme_figures_match_the_specs():
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"\| `(specs/[\w/-]+\.arch)` \| [^|]+ \| [^|]+ \| ([\d,]+) \|", readme)
    assert len(rows) == 24
    for spec, params in rows:
        assert f"{archdsl.trace(ROOT / spec).total_params:,}" == params, spec


def test_the_language_references_complete_examples_trace():
    """Every example in docs/language.md that is a whole spec (it has an `input` line) works as shown."""
    doc = (ROOT / "docs" / "language.md").read_text()
    examples = [b for b in re.findall(r"```\n(.*?)```", doc, re.S) if re.search(r"^input \d", b, re.M)]
    assert len(examples) >= 3
    for example in examples:
        archdsl.trace(example)


def test_every_standard_library_block_is_documented():
    doc = (ROOT / "docs" / "language.md").read_text()
    for path in sorted((ROOT / "archdsl" / "stdlib").glob("*.arch")):
        assert f"`include {path.stem}`" in doc, path.name
        for name in re.findall(r"^block (\w+)", path.read_text(), re.M):
            assert f"`{name}(" in doc or f"`{name}`" in doc, (path.name, name)


def test_the_limits_table_is_the_code_s():
    from archdsl.limits import LIMITS

    doc = (ROOT / "docs" / "language.md").read_text()
    rows = re.findall(r"^\| [^|]+ \| ([\d,]+) \| (`\w+`)? *\|", doc, re.M)
    assert {int(value.replace(",", "")): env.strip("`") or None for value, env in rows} == \
        {lim.value: lim.env for lim in LIMITS.values()}


def test_the_inspection_guide_lists_every_column_and_warning():
    """docs/inspection.md's tables are the code's: each column with its aliases, each warning code."""
    from archdsl import lint
    from archdsl.summary import COLUMNS

    doc = (ROOT / "docs" / "inspection.md").read_text()
    for column in COLUMNS:
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{column.name}` |")), None)
        assert row is not None, column.name
        assert row.split(" | ")[1] == column.header and all(f"`{a}`" in row for a in column.aliases), row
    codes = {v for k, v in vars(lint).items() if k.isupper() and isinstance(v, str) and "-" in v}
    assert len(codes) == 7
    for code in codes:
        assert f"| `{code}` |" in doc, code
