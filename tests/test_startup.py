"""What a start of `archdsl` imports and caches: the commands that need no torch import none,
tracing imports no sympy (torch's meta kernels would), and the parser's tables cached per user
are used when sound and rebuilt otherwise. Timings are in benchmarks/bench_startup.py."""

import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import archdsl
from archdsl import ShapeError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# Runs the real entry point, then says at exit (after typer's sys.exit) what was imported.
PROBE = """
import atexit, sys
atexit.register(lambda: print("imported:", *sorted(m for m in ("torch", "lark", "sympy") if m in sys.modules),
                              file=sys.stderr))
sys.argv = ["archdsl", *sys.argv[1:]]
from archdsl.cli import main
main()
"""


def archdsl_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def imported(r: subprocess.CompletedProcess) -> set[str]:
    line = [x for x in r.stderr.splitlines() if x.startswith("imported:")][-1]
    return set(line.split()[1:])


@pytest.mark.parametrize("args, code, says, parses", [
    (["--help"], 0, "Usage", False),
    (["layers"], 0, "conv(channels, kernel", False),
    (["shapes", "conv("], 2, "unexpected end of the spec", True),
    (["shapes", "input 4; nosuch(3)"], 2, "unknown layer 'nosuch'", True),
    (["shapes", "nosuch.arch"], 2, "no such spec file", True),
])
def test_commands_that_need_no_torch_import_none(args, code, says, parses, tmp_path):
    r = archdsl_process(*args, cwd=tmp_path)
    assert r.returncode == code and says in r.stdout + r.stderr
    assert "torch" not in imported(r)
    if not parses:  # the help and the list of layers need no parser either
        assert "lark" not in imported(r)


def test_tracing_imports_no_sympy():
    """torch._check, called by torch's meta kernels (conv, pooling) and broadcast_shapes, imports
    sympy on first use: ~1 s. Every layer's output shape is worked out without them: here on the
    classic specs and on those with mul (squeeze-excitation), split and attention."""
    specs = sorted(SPECS.glob("*.arch")) + [SPECS / "torchvision" / f"{name}.arch" for name in
                                            ("efficientnet_b0", "shufflenet_v2_x1_0", "vit_b_16")]
    code = ("import sys, archdsl\n"
            f"for s in {[str(s) for s in specs]!r}: archdsl.trace(s)\n"
            "print(*sorted(m for m in ('torch', 'sympy', 'torch.fx.experimental.symbolic_shapes') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["torch"]


# The shape arithmetic that replaces torch's meta kernels, against torch itself ------------------

def torch_output(module_of, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output shape of the torch module on a meta input, or None where torch refuses."""
    try:
        with torch.device("meta"):
            return tuple(module_of()(torch.empty(shape)).shape)
    except (RuntimeError, ValueError):
        return None


def archdsl_output(text: str) -> tuple[int, ...] | None:
    try:
        return [r for r in archdsl.trace(text) if r.depth == 0][-1].output_shape
    except ShapeError:
        return None


def window_cases(seed: int, count: int):
    """Random inputs of 1 to 3 spatial axes, and a way to draw a size per axis and to write it."""
    rng = random.Random(seed)
    for _ in range(count):
        n = rng.choice([1, 2, 2, 3])
        sizes = tuple(rng.randint(1, 12) for _ in range(n))

        def per_axis(lo: int, hi: int) -> tuple[int, ...]:
            return tuple(rng.randint(lo, hi) for _ in range(n))

        def spelled(values: tuple[int, ...]) -> str:  # `3` or `(3, 3)` alike, when square
            return str(values[0]) if len(set(values)) == 1 and rng.random() < 0.5 else f"({', '.join(map(str, values))})"

        yield rng, sizes, per_axis, spelled


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape[1:]))


@pytest.mark.parametrize("seed", range(2))
def test_conv_shapes_are_torchs(seed):
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for rng, sizes, per_axis, spelled in window_cases(seed, 150):
        kernel, stride, padding, dilation = per_axis(1, 5), per_axis(1, 3), per_axis(0, 3), per_axis(1, 2)
        channels, groups = rng.choice([(2, 1), (4, 2), (6, 3)])
        pad_text, pad_torch = rng.choice([("same", "same"), ("valid", 0), (spelled(padding), padding)])
        shape = (1, channels, *sizes)
        text = (f"input {shape_text(shape)}\nconv({channels}, kernel={spelled(kernel)}, stride={spelled(stride)}, "
                f"padding={pad_text}, dilation={spelled(dilation)}, groups={groups})")
        conv = convs[len(sizes) - 1]
        expected = torch_output(lambda: conv(channels, channels, kernel, stride, pad_torch, dilation, groups), shape)
        assert archdsl_output(text) == expected, text


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_shapes_are_torchs(kind, seed):
    pools = {"max": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "avg": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)}
    for rng, sizes, per_axis, spelled in window_cases(seed, 150):
        kernel, stride, padding = per_axis(1, 5), per_axis(1, 4), per_axis(0, 2)
        ceil, strided = rng.random() < 0.5, rng.random() < 0.7  # not strided: the stride is the kernel
        shape = (1, 3, *sizes)
        text = (f"input {shape_text(shape)}\n{kind}pool(kernel={spelled(kernel)}, padding={spelled(padding)}, "
                f"ceil={str(ceil).lower()}" + (f", stride={spelled(stride)})" if strided else ")"))
        pool = pools[kind][len(sizes) - 1]
        expected = torch_output(lambda: pool(kernel, stride if strided else None, padding, ceil_mode=ceil), shape)
        if ceil and any(size + 2 * p < k for size, p, k in zip(sizes, padding, kernel)):
            expected = None  # torch counts a window larger than the input as one; archdsl refuses it
        assert archdsl_output(text) == expected, text


def test_mul_broadcasts_as_torch_does():
    rng = random.Random(0)
    for _ in range(100):
        a, b = (tuple(rng.randint(1, 3) for _ in range(3)) for _ in range(2))  # (C, H, W) of each path
        text = "input 3x3x3\nmul(" + ", ".join(f"[conv({c}, k1) adaptiveavgpool(({h}, {w}))]" for c, h, w in (a, b)) + ")"
        try:
            expected = tuple(torch.broadcast_shapes((1, *a), (1, *b)))
        except RuntimeError:
            expected = None
        assert archdsl_output(text) == expected, text


# The parser's tables, cached per user ----------------------------------------------------------

PARSE = """
import sys
from pathlib import Path
import archdsl
for spec in sys.argv[1:]:
    print(repr(archdsl.parse(Path(spec))))
for text in ("conv(", "input 4; conv(6, k5) relu) linear(3)", "block b { relu", "x = 3"):
    try:
        archdsl.parse(text)
    except archdsl.ArchError as e:
        print(e.render())
"""


def parse_all(cache_home: str | Path, **kw) -> subprocess.CompletedProcess:
    specs = [str(SPECS / name) for name in ("alexnet.arch", "googlenet.arch", "torchvision/vit_b_16.arch")]
    return subprocess.run([sys.executable, "-c", PARSE, *specs], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache_home)}, timeout=120, **kw)


@pytest.fixture(scope="module")
def uncached() -> str:
    """What the parser gives with no cache (a relative $XDG_CACHE_HOME is ignored, as XDG says)."""
    r = parse_all("not/absolute")
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert not (ROOT / "not").exists()
    return r.stdout


def test_tables_are_cached_per_user_and_then_loaded(tmp_path, uncached):
    cache = tmp_path / "archdsl" / "grammar.lark-cache"
    r = parse_all(tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, uncached, "")
    written = cache.stat().st_mtime_ns
    r = parse_all(tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, uncached, "")
    assert cache.stat().st_mtime_ns == written  # loaded, not built and written again


def test_tables_of_another_grammar_are_rebuilt(tmp_path, uncached):
    from lark import Lark

    cache = tmp_path / "archdsl" / "grammar.lark-cache"
    cache.parent.mkdir()
    Lark('start: "conv"', parser="lalr", cache=str(cache))  # as an older archdsl's grammar would leave it
    stale = cache.read_bytes()
    r = parse_all(tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, uncached, "")
    assert cache.read_bytes() != stale


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> bytes:
    """The cache file as archdsl writes it."""
    home = tmp_path_factory.mktemp("cache")
    assert parse_all(home).returncode == 0
    return (home / "archdsl" / "grammar.lark-cache").read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "directory", "fifo", "huge"])
def test_a_damaged_cache_is_never_an_error(damage, tmp_path, uncached, tables):
    cache = tmp_path / "archdsl" / "grammar.lark-cache"
    cache.parent.mkdir()
    if damage == "garbage":
        cache.write_bytes(b"\x80\x04not a pickle\n" * 100)
    elif damage == "truncated":
        cache.write_bytes(tables[:len(tables) // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "directory":
        cache.mkdir()
    elif damage == "fifo":  # reading it would wait for a writer forever
        os.mkfifo(cache)
    else:  # a file with no line break, which lark would read whole
        with open(cache, "wb") as f:
            f.truncate(64 * 2**20)
    r = parse_all(tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, uncached, "")
    if damage in ("garbage", "truncated", "empty"):  # written again, and loaded from then on
        written = cache.stat().st_mtime_ns
        assert parse_all(tmp_path).stdout == uncached and cache.stat().st_mtime_ns == written


def _full_disk() -> None:
    """In the child: files may not grow past 4 KiB, as on a full disk (EFBIG instead of a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_full_disk_leaves_a_partial_cache_that_is_rebuilt(tmp_path, uncached):
    cache = tmp_path / "archdsl" / "grammar.lark-cache"
    r = parse_all(tmp_path, preexec_fn=_full_disk)
    assert (r.returncode, r.stdout, r.stderr) == (0, uncached, "")
    assert cache.stat().st_size <= 4096  # the write failed part way
    r = parse_all(tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, uncached, "")
    assert cache.stat().st_size > 4096  # written whole once there is room


@pytest.mark.parametrize("where", ["read-only", "a file", "unmakeable"])
def test_a_cache_folder_that_cannot_be_written_is_never_an_error(where, tmp_path, uncached):
    home = tmp_path / "cache"
    if where == "read-only":
        (home / "archdsl").mkdir(parents=True)
        (home / "archdsl").chmod(0o555)  # (root writes there all the same)
    elif where == "a file":
        home.mkdir()
        (home / "archdsl").write_text("not a folder")
    else:
        home = Path("/proc/self/no")  # a folder cannot be made there, even by root
    try:
        r = parse_all(home)
    finally:
        if where == "read-only":
            (home / "archdsl").chmod(0o755)
    assert (r.returncode, r.stdout, r.stderr) == (0, uncached, "")
