"""Any text in, an ArchError or a result out: never another exception, never a hang.

A property test and fuzzer for the spec language and the `shapes` command's flags. The
promise it checks: any spec text, any include, any flag value gives a result or an
`archdsl.ArchError`, never another exception, never a hang (a case finishes in a few
seconds), never more than 1 GB of memory; and every error's excerpt shows the line its
`file:line:col` names (a line being what lies between two "\\n"), with no raw control
character in the report.

Cases come from generators that write the whole grammar (statements, calls with every
kind of argument, repeats, choices, joins, expressions), mutations of the specs in
specs/ and archdsl/stdlib, deep nesting, huge numbers, odd characters, includes (a NUL
in the name, a symlink loop, a directory, a file that is not a spec) and the flags of
`archdsl shapes`, run in process through typer's CliRunner.

Each case runs in a worker process (torch imported once) with a time limit and its peak
memory measured: a hang or a runaway allocation kills the worker, not the test run.
`benchmarks/fuzz.py --minutes 10` is the long mode; this file runs a fixed, seeded set.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = ROOT / "archdsl" / "stdlib"
SOURCES = sorted(ROOT.glob("specs/**/*.arch")) + sorted(STDLIB.glob("*.arch"))
PIECES = list("()[]{},=*/+-;#\n x0123456789kspdg._\"<>!") + [
    "conv", "relu", "if", "else", "block", "param", "input", "include", "train", "concat", "add", "[identity]",
    "1x8x8", "true", "//", "e5", "99999999999", "linear(0)", "maxpool(9)", "flatten", "*", " * 3",
    # the constructs of today's networks
    "relu6", "silu", "hardswish", "gelu(approximate=tanh)", "activation(act)", "mul", "split", "k1x7", "p0x3", "s2x1",
    "(1, 7)", "padding=same", '"same"', "default conv(bias=false)\n", "default batchnorm(eps=1e-3)", "input.channels",
    "input.height", " and ", " or ", "not ", "max(1, 2)", "min(", "round(", "make_divisible(9, 8)", " as i", "i",
    " * 0", "permute(0, 2, 3, 1)", "transpose(1, 2)", "flatten(2)", "reshape(-1)", "unflatten(1, (2, 2))",
    "mean(2, 3)", "channelshuffle(2)", "layernorm(over=channels)", "groupnorm(2)", "batchnorm(16)",
    "linear(8, pointwise=true)", "droppath(0.1)", "layerscale(1e-6)", "classtoken", "posembedding",
    "attention(2)", "token(0)", "include mobilenet\n", "include transformer\n"]

TIMEOUT_S = float(os.environ.get("ARCHDSL_FUZZ_TIMEOUT", 8))  # a case that computes longer (CPU seconds) is a hang
WAIT_FACTOR = 3  # a case that waits this many times TIMEOUT_S on the clock is a hang too
MEMORY_MB = 1024  # a case that grows the worker by more is a runaway allocation


def mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(text) + 1)
        roll = rng.random()
        if roll < 0.4:
            text = text[:pos] + rng.choice(PIECES) + text[pos:]
        elif roll < 0.8:
            text = text[:pos] + text[pos + rng.randint(1, 6):]
        else:
            start = rng.randrange(len(text) + 1)
            text = text[:pos] + text[start:start + 24] + text[pos:]
    return text


# Cases ----------------------------------------------------------------------
#
# A case is a plain dict (it travels to the worker as JSON):
#   gen     the generator that made it, "family:variant" (hangs are classed by it)
#   mode    "api": archdsl.trace(spec, input_shape, batch=, **params); "cli": `archdsl shapes spec *args`
#   spec    spec text, or the name of one of `files` (then it is passed as a path)
#   files   name -> {"text": str} | {"latin1": str (raw bytes)} | {"symlink": target} | {"dir": true}, made in
#           a fresh directory that is the working directory while the case runs
#   args    the CLI's flags (mode "cli")
#   input_shape, batch, params   the API's arguments (mode "api"), as tagged values: see `_py`


def case(gen: str, spec: str, *, files: dict | None = None, args: list | None = None, mode: str = "api",
         **api: Any) -> dict:
    c = {"gen": gen, "mode": mode, "spec": spec, "files": files or {}}
    if mode == "cli":
        c["args"] = list(args or [])
    else:
        c.update({k: v for k, v in api.items() if v is not None})
    return c


def _layer_schemas() -> dict[str, dict]:
    """The built-in layers and their arguments, read from the registry (no torch): new layers are fuzzed too."""
    try:
        from archdsl.registry import REGISTRY, REQUIRED
        import archdsl.plan  # noqa: F401  (registers the layers)
        assert archdsl.plan
    except Exception:  # pragma: no cover - a registry that moved: fall back to a few layers
        return {n: {"args": [], "paths": n in ("add", "concat", "mul")} for n in
                ("relu", "flatten", "identity", "sigmoid", "add", "concat", "mul")}
    out = {}
    for name, ldef in REGISTRY.items():
        args = []
        for a in getattr(ldef, "args", ()):
            kind = getattr(a, "kind", None)
            args.append({
                "name": a.name, "kind": type(kind).__name__, "min": getattr(kind, "min", None),
                "lo": getattr(kind, "lo", None), "hi": getattr(kind, "hi", None),
                "words": tuple(getattr(kind, "words", ()) or ()), "tag": getattr(a, "tag", None),
                "aliases": tuple(getattr(a, "aliases", ()) or ()), "required": a.default is REQUIRED,
                "kw": bool(getattr(a, "keyword_only", False)), "many": bool(getattr(a, "many", False))})
        out[name] = {"args": args, "paths": bool(getattr(ldef, "takes_paths", False))}
    return out


LAYERS = _layer_schemas()
JOINS = [n for n, s in LAYERS.items() if s["paths"]]
PLAIN = [n for n, s in LAYERS.items() if not s["paths"]]
ELEMENTWISE = [n for n in ("relu", "relu6", "sigmoid", "tanh", "gelu", "silu", "hardswish", "mish", "identity",
                           "dropout", "batchnorm", "elu", "leakyrelu", "softplus", "prelu", "droppath") if n in LAYERS]
STDLIB_CALLS = {  # include name -> calls of its blocks that fit a small image
    "vgg": ["vgg_block(1, 8)", "vgg_block(2, 4)"], "nin": ["nin_block(8, 3)", "nin_block(4, 1, 1, 0)"],
    "inception": ["inception(4, 2, 4, 2, 4, 4)"], "resnet": ["residual(8)", "residual(8, 2, true)"],
    "densenet": ["dense_block(2, 4)", "transition(8)", "dense_layer(4)"],
    "mobilenet": ["conv_bn_act(8)", "inverted_residual(8)", "squeeze_excitation(4)",
                  "inverted_residual(16, 5, 2, se=true)"],
    "convnext": ["convnext_block()", "convnext_block(sd = 0.1)"],
    "shufflenet": ["shuffle_unit(8)", "shuffle_unit(16, 2)"],
    "transformer": ["patch_embedding(8, 2)", "encoder_block(2, 16)"],
}
NAMES = ["w", "ratio", "depth", "width", "n", "act", "flag", "c", "e", "x", "y", "mid", "out", "gate", "a_1", "B"]
ODD = ["\f", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\v", "\x00", "\x1b[31m", "\x1b[2J\x1b[H", "\ufeff", "²", "³",
       "\u0663", "\u00a0", "\u200b", "\u202e", "\t", "\x7f", "\x08", "\x07", "\udcff", "\U0001F600", "é", "\u0301",
       "\r\r\n", "\n\r", "\x1c", "\x1d", "\x1e"]
HUGE_LITERALS = ["1e999999", "1e-999999", "1e30", "1e308", "1e309", "1e-400", "2147483647", "2147483648",
                 "99999999999", "9" * 40, "9" * 400, "9" * 5000, "0." + "0" * 400 + "1", "1E+30", "1e9999",
                 "18446744073709551616", "4294967296", ".0000000000000000000000000000001"]


class Gen:
    """Writes a random spec from the grammar: statements, calls with every kind of argument, repeats, choices,
    joins and expressions, mostly well formed so that tracing is reached, sometimes not."""

    def __init__(self, rng: random.Random, *, wild: float = 0.05) -> None:
        self.rng = rng
        self.wild = wild  # how often a value (a call, a name) is anything at all rather than one that fits
        self.names: list[str] = []  # params and arguments in scope
        self.blocks: dict[str, list[str]] = {}  # block name -> its parameters
        self.extra_calls: list[str] = []  # calls of included blocks

    # expressions
    def expr(self, depth: int = 0) -> str:
        r, rng = self.rng.random(), self.rng
        if depth > 3 or r < 0.35:
            return self.atom()
        if r < 0.55:
            op = rng.choice(["+", "-", "*", "/", "//", "*", "+"])
            return f"{self.expr(depth + 1)} {op} {self.expr(depth + 1)}"
        if r < 0.62:
            return f"({self.expr(depth + 1)})"
        if r < 0.7:
            return rng.choice(["-", "+", "- "]) + self.expr(depth + 1)
        if r < 0.82:
            fn = rng.choice(["min", "max", "abs", "round", "floor", "ceil", "make_divisible", "max"]
                            + (["k", "sqrt", "Min"] if rng.random() < self.wild * 4 else []))
            n = {"abs": 1, "round": 1, "floor": 1, "ceil": 1}.get(fn, rng.choice([1, 2, 2, 3]))
            return f"{fn}({', '.join(self.expr(depth + 1) for _ in range(n))})"
        if r < 0.9:
            return self.cond(depth + 1)
        items = [self.expr(depth + 1) for _ in range(rng.choice([1, 2, 2, 3]))]
        return "(" + ", ".join(items) + ("," if len(items) == 1 or rng.random() < 0.2 else "") + ")"

    def atom(self) -> str:
        rng, r = self.rng, self.rng.random()
        if rng.random() < self.wild:
            return rng.choice(HUGE_LITERALS[:12] + ["undefined_name", "input", "i", "j", "input.size", '""'])
        if r < 0.45:
            return rng.choice(["0", "1", "2", "3", "4", "8", "16", "0.5", ".5", "1e-3", "3e2", "0.1", "7", "64"])
        if r < 0.7 and self.names:
            return rng.choice(self.names)
        if r < 0.8:
            return f"input.{rng.choice(['channels', 'height', 'width', 'features', 'rank', 'channels'])}"
        if r < 0.86:
            return rng.choice(["true", "false"])
        return rng.choice(['"same"', '"valid"', '"tanh"', "same", "tanh", "relu", "silu"])

    def cond(self, depth: int = 0) -> str:
        rng, r = self.rng, self.rng.random()
        if depth > 3 or r < 0.3:
            return rng.choice(["true", "false", f"{self.atom()} > 1", "input.channels == 3",
                               "input.rank >= 3", f"{self.atom()} == {self.atom()}"])
        if r < 0.55:
            return f"{self.expr(depth + 1)} {rng.choice(['==', '!=', '<', '<=', '>', '>='])} {self.expr(depth + 1)}"
        if r < 0.8:
            return f"{self.cond(depth + 1)} {rng.choice(['and', 'or'])} {self.cond(depth + 1)}"
        return f"not {self.cond(depth + 1)}"

    # arguments of a layer
    def value_for(self, a: dict) -> str:
        rng = self.rng
        if rng.random() < self.wild:
            return self.expr(1) if rng.random() < 0.7 else rng.choice(HUGE_LITERALS)
        if a["words"] and rng.random() < 0.35:
            w = rng.choice(a["words"])
            return f'"{w}"' if rng.random() < 0.2 else w
        kind, least = a["kind"], a["min"]
        if kind == "Int":
            if least is None:
                return str(rng.choice([-1, 0, 1, 2, 1, -2, 3]))
            return str(rng.choice([least, least + 1, least + 1, least + 2, 2, 4]) if least < 2 else least)
        if kind == "Sizes":
            low = max(least if least is not None else 1, 1) if least != -1 else 1
            if rng.random() < 0.2:
                return f"({rng.randint(low, 3)}, {rng.randint(low, 3)})"
            return str(rng.randint(low if least != 0 else 0, 3))
        if kind == "Real":
            hi = a["hi"]
            if hi is not None and hi <= 1:
                return rng.choice(["0", "0.1", "0.5", "0.25", ".9"])
            return rng.choice(["0.5", "1", "1e-5", "2", "0.01", "20"])
        if kind == "Bool":
            return rng.choice(["true", "false"])
        if kind == "Word" and a["words"]:
            return rng.choice(a["words"])
        return self.expr(1)

    def call(self, depth: int = 0) -> str:
        rng = self.rng
        r = rng.random()
        if self.extra_calls and r < 0.12:
            return rng.choice(self.extra_calls)
        if self.blocks and r < 0.3:
            name = rng.choice(list(self.blocks))
            params = self.blocks[name]
            args = []
            for p in params:
                if rng.random() < 0.8:
                    v = self.value_for({"words": (), "kind": "Int", "min": 1}) if rng.random() < 0.7 else self.expr(1)
                    args.append(f"{p}={v}" if rng.random() < 0.3 else v)
            return f"{name}({', '.join(args)})" if args or rng.random() < 0.3 else name
        if rng.random() < self.wild:
            return rng.choice(["Conv2d(4, 4, 3)", "nn.ReLU", "lstm", "swish", "for", "foo", "conv2", "relu(", "relu)",
                               "block", "input", "Relu", "MaxPool2d"])
        if depth < 3 and JOINS and rng.random() < 0.12:
            name = rng.choice(JOINS)
        elif self.wild < 0.01:  # layers that take most shapes, so that a spec traces through
            name = rng.choice(ELEMENTWISE + ["conv", "conv", "maxpool", "adaptiveavgpool", "layernorm"])
        else:
            name = rng.choice(ELEMENTWISE if rng.random() < 0.35 else PLAIN)
        schema = LAYERS[name]
        parts: list[str] = []
        if schema["paths"]:
            parts += [f"[{self.path(depth + 1)}]" for _ in range(rng.choice([2, 2, 3, 1]))]
        positional = True
        for a in schema["args"]:
            if a["many"]:
                parts += [self.value_for(a) for _ in range(rng.randint(0 if not a["required"] else 1, 4))]
                continue
            if not a["required"] and rng.random() < 0.6:
                positional = False
                continue
            if a["required"] and rng.random() < self.wild:
                continue  # a missing argument
            ways = ["kw"] + (["pos", "pos"] if positional and not a["kw"] else []) + (
                ["tag"] if a["tag"] and a["kind"] in ("Int", "Sizes") else [])
            how = rng.choice(ways)
            if how == "tag":
                sizes = [str(rng.randint(1, 3)) for _ in range(rng.choice([1, 1, 2]))]
                parts.append(a["tag"] + "x".join(sizes))
                positional = False
            elif how == "kw":
                parts.append(f"{rng.choice((a['name'],) + a['aliases'])}={self.value_for(a)}")
                positional = False
            else:
                parts.append(self.value_for(a))
        if rng.random() < self.wild and parts:
            parts.append(rng.choice(parts))  # an argument given twice
        if rng.random() < self.wild:
            parts.append(rng.choice(["bogus=1", "k3", "[relu]", "1"]))
        if rng.random() < 0.1:
            rng.shuffle(parts)
        if not parts and rng.random() < 0.7:
            return name
        sep = rng.choice([", ", ",", ",\n    ", " , "])
        return f"{name}({sep.join(parts)}{',' if parts and rng.random() < 0.05 else ''})"

    def item(self, depth: int = 0) -> str:
        rng, r = self.rng, self.rng.random()
        if depth < 3 and r < 0.1:
            index = rng.choice(["i", "j", "idx"]) if rng.random() < 0.4 else None
            saved = list(self.names)
            if index:
                self.names.append(index)
            body = self.path(depth + 1)
            self.names = saved
            count = rng.choice(["0", "1", "2", "3", "2 + 1", "3 // 2"] + [n for n in ("n", "depth", "w // 2")
                                                                        if n.split()[0] in self.names]
                               + (["-1", "1.5", "true", "undefined"] if rng.random() < self.wild * 4 else []))
            if rng.random() < 0.1:
                return f"[{body}]"
            return f"[{body}] * {count}" + (f" as {index}" if index else "")
        if depth < 3 and r < 0.17:
            then = self.path(depth + 1)
            other = f" else [{self.path(depth + 1)}]" if rng.random() < 0.6 else ""
            return f"if {self.cond()} [{then}]{other}"
        return self.call(depth)

    def path(self, depth: int = 0) -> str:
        return " ".join(self.item(depth) for _ in range(self.rng.choice([1, 1, 2, 3, 4])))

    # statements
    def shape(self) -> str:
        rng = self.rng
        rank = rng.choice([1, 2, 3, 3, 3, 3, 4])
        sizes = [rng.choice([1, 3, 4, 8, 16, 28, 32, 64]) for _ in range(rank)]
        return "x".join(map(str, sizes))

    def spec(self) -> str:
        rng = self.rng
        stmts: list[str] = []
        if rng.random() < 0.9:
            stmts.append(f"input {self.shape()}")
        for name in rng.sample(NAMES, rng.choice([0, 0, 1, 2, 3])):
            default = rng.choice(["2", "4", "8", "true", "relu", self.expr(1)]) if rng.random() > self.wild else ""
            stmts.append(f"param {name}" + (f" = {default}" if default else ""))
            self.names.append(name)
        if rng.random() < 0.25:
            opts = rng.sample(["resize=32", "batch=16", "lr=0.1", "epochs=2", "batch_size=8"]
                              + (["foo=1", "epochs=0", f"lr={self.expr(1)}"] if rng.random() < self.wild * 4 else []),
                              rng.randint(0, 3))
            stmts.append(f"train {rng.choice(['mnist', 'fashion-mnist', 'cifar10', 'synthetic', 'mnist'])} "
                         + " ".join(opts))
        if rng.random() < 0.2:
            layer = rng.choice(PLAIN)
            kws = [a for a in LAYERS[layer]["args"] if not a["many"]]
            args = ", ".join(f"{a['name']}={self.value_for(a)}" for a in rng.sample(kws, min(len(kws), 2)))
            stmts.append(f"default {layer}({args})")
        if rng.random() < 0.2:
            lib = rng.choice(list(STDLIB_CALLS) + (["nonexistent"] if rng.random() < self.wild * 4 else []))
            stmts.append(f'include "{lib}"' if rng.random() < self.wild else f"include {lib}")
            self.extra_calls += STDLIB_CALLS.get(lib, [])
        for b in range(rng.choice([0, 0, 1, 1, 2, 3])):
            name = rng.choice(["blk", "stem", "unit", "stage", "head"]) + str(b)
            params = rng.sample(["c", "kernel", "stride", "out", "act", "n2", "q"], rng.choice([0, 1, 2]))
            decls = [p + (f" = {self.value_for({'words': (), 'kind': 'Int', 'min': 1})}" if rng.random() < 0.4 else "")
                     for p in params]
            saved = list(self.names)
            self.names += params
            defaults = f"default conv(bias={rng.choice(['false', 'true'])}) " if rng.random() < 0.1 else ""
            body = self.path(1)
            self.names = saved
            head = f"block {name}({', '.join(decls)})" if decls or rng.random() < 0.5 else f"block {name}"
            stmts.append(f"{head} {{\n    {defaults}{body}\n}}")
            self.blocks[name] = params
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            stmts.append(self.path())
        if rng.random() < self.wild * 3:
            rng.shuffle(stmts)
        out = ""
        for st in stmts:
            out += st + rng.choice(["\n", "\n", "\n", ";", "; ", "\n\n", "  # note\n", "\r\n", "\n\t"])
        return out


def _ok_spec(rng: random.Random) -> str:
    """A small spec that traces, for the odd-character and flag cases to start from."""
    return rng.choice([
        "input 1x28x28\nparam w = 4\nconv(w, k5, p2) sigmoid avgpool(2, 2)\nconv(16, k5) sigmoid avgpool(2, 2)\n"
        "flatten linear(120) sigmoid linear(10)\n",
        "input 3x32x32\nblock unit(c) {\n    conv(c, k3, p1) batchnorm relu\n}\n[unit(8)] * 2 maxpool(2)\n"
        "flatten linear(10)\n",
        "include resnet\ninput 1x16x16\nconv(8, k3, p1) residual(8) residual(16, 2, true)\nadaptiveavgpool(1) "
        "flatten linear(10)\n",
        "input 3x16x16\nconcat([conv(4, k1)], [conv(4, k3, p1) relu],\n       [maxpool(3, s1, p1)])\nflatten\n",
        "param ratio = 2\ninput 1x8x8\nconv(16 / ratio, k3) relu; flatten; linear(4)\n",
    ])


def gen_grammar(rng: random.Random) -> dict:
    text = Gen(rng, wild=rng.choice([0, 0, 0.02, 0.05, 0.1])).spec()
    return case("grammar", text, **_maybe_api_flags(rng, 0.1))


def gen_mutate(rng: random.Random) -> dict:
    src = rng.choice(SOURCES)
    text = mutate(rng, _read(src))
    return case("mutate", text, input_shape=rng.choice([None, ["str", "1x16x16"], ["str", "3x64x64"]]))


def _read(path: Path) -> str:
    cache = _read.__dict__.setdefault("cache", {})
    if path not in cache:
        cache[path] = path.read_text(encoding="utf-8")
    return cache[path]


def gen_deep(rng: random.Random) -> dict:
    n = rng.choice([20, 50, 63, 64, 65, 100, 200, 300, 500, 1000, 3000])
    which = rng.choice(DEEP)
    text, variant = which(n, rng)
    return case(f"deep:{variant}", text)


def _chain_blocks(n: int, rng: random.Random) -> tuple[str, str]:
    reads = rng.random() < 0.5
    leaf = "conv(input.channels, k1)" if reads else "relu"
    defs = [f"block b{i} {{ b{i + 1} {'relu' if rng.random() < 0.3 else ''} }}" for i in range(n)]
    defs.append(f"block b{n} {{ {leaf} }}")
    if rng.random() < 0.5:
        defs.reverse()
    return "input 1x8x8\n" + "\n".join(defs) + "\nb0\n", "block-chain" + ("-input" if reads else "")


DEEP: list[Callable[[int, random.Random], tuple[str, str]]] = [
    lambda n, r: ("input 1x8x8\n" + "[" * n + "relu" + "]" * n + "\n", "brackets"),
    lambda n, r: ("input 1x8x8\n" + "[" * n + "relu" + "] * 2" * n + "\n", "repeats"),
    lambda n, r: ("input 1x8x8\n" + "if true [" * n + "relu" + "] else [identity]" * n + "\n", "if"),
    lambda n, r: ("input 1x8x8\n" + "add([" * n + "relu" + "], [identity])" * n + "\n", "add"),
    lambda n, r: ("input 1x8x8\n" + "concat([" * n + "relu" + "], [identity])" * n + "\n", "concat"),
    lambda n, r: ("input 4x8x8\n" + "split([" * n + "relu" + "], [identity])" * n + "\n", "split"),
    lambda n, r: ("input 1x8x8\nconv(" + "(" * n + "4" + ")" * n + ", k1)\n", "parens"),
    lambda n, r: ("input 1x8x8\nconv(" + "-" * n + "4, k1)\n", "minus"),
    lambda n, r: ("input 1x8x8\nif " + "not " * n + "true [relu]\n", "not"),
    lambda n, r: ("input 1x8x8\nconv(" + "1 + " * n + "1, k1)\n", "sum"),
    lambda n, r: ("input 1x8x8\nconv(" + "1 * " * n + "4, k1)\n", "product"),
    lambda n, r: ("input 1x8x8\nif " + "true and " * n + "true [relu]\n", "and"),
    lambda n, r: ("input 1x8x8\nconv(" + "max(" * n + "4" + ", 1)" * n + ", k1)\n", "functions"),
    lambda n, r: ("input 1x8x8\nconv(4, kernel=" + "(" * n + "1" + ",)" * n + ")\n", "tuples"),
    lambda n, r: ("input 1x8x8\n" + "relu " * (n * 20) + "\n", "long-line"),
    lambda n, r: ("input 1x8x8\n" + "relu\n" * (n * 10), "many-lines"),
    lambda n, r: ("input 1x8x8\n" + "".join(f"param q{i} = {i}\n" for i in range(n)) + "relu\n", "many-params"),
    lambda n, r: ("input 1x8x8\n" + "foo\n" * n, "many-errors"),
    lambda n, r: ("input 1x8x8\n" + ")\n" * n, "many-syntax-errors"),
    lambda n, r: ("input 1x8x8\n" + "conv(4, k3" * min(n, 300) + "\n", "unclosed"),
    _chain_blocks,
    lambda n, r: ("block a { [relu] * 1000 }\nblock b { [a] * 10 }\ninput 1x8x8\n[b] * 1000\n", "multiply"),
    lambda n, r: (f"block a {{ [relu] * {n} }}\nblock b {{ [a] * {n} }}\ninput 1x8x8\n[b] * {n}\n", "multiply-n"),
    lambda n, r: (f"block a {{ conv(input.channels, k1) }}\nblock b {{ [a] * {n} }}\ninput 1x8x8\n[b] * {n}\n",
                  "multiply-input"),
    lambda n, r: ("input 1x8x8\n" + "[" * 6 + "relu" + f"] * {n}" * 6 + "\n", "repeat-power"),
    lambda n, r: (f"input 1x8x8\n[[if false [relu]] * {n * 100} as i] * {n * 100} as j\n", "empty-index-repeats"),
    lambda n, r: (f"input 1x8x8\n[[[if false [relu]] * {n} as i] * {n} as j] * {n} as l\n", "empty-index-repeats-3"),
    lambda n, r: (f"input 1x8x8\n[[identity] * 0] * {n ** 3}\n", "empty-repeat"),
    lambda n, r: (f"block a(x) {{ [relu] * x }}\ninput 1x8x8\n[a({n})] * {n} as i\n", "block-arg-repeat"),
    lambda n, r: ("input 1x8x8\nconv(4, k1, " + ", ".join(["1"] * n) + ")\n", "many-args"),
    lambda n, r: ("input 1x8x8\nreshape(" + ", ".join(["1"] * n) + ", -1)\n", "reshape-rank"),
    lambda n, r: ("input 1x8x8\nmean(" + ", ".join(["2"] * n) + ")\n", "mean-axes"),
    lambda n, r: ("input 1x8x8\nadd(" + ", ".join(["[relu]"] * n) + ")\n", "wide-join"),
    lambda n, r: ("input " + "x".join(["1"] * min(n, 400)) + "\nconv(2, k1) flatten\n", "input-rank"),
    lambda n, r: ("input 1x8x8\n" + "block x{0} {{ relu }}\n".format(0) * 2 + "x0\n", "duplicate-block"),
    # at the limits a spec may reach: the layers, the characters of a spec; each must still take seconds at most
    lambda n, r: ("input 1x8x8\n" + "conv(4, k1)\n" * min(n * 4, 12_000), "conv-lines"),
    lambda n, r: (f"input 1x8x8\n[conv(4, k1)] * {min(n * 4, 9_999)}\n", "conv-repeat"),
    lambda n, r: (f"input 1x8x8\n[conv(4 + i, k1)] * {min(n * 4, 9_999)} as i\n", "index-repeat"),
    lambda n, r: ("input 1x8x8\n" + ("conv(4, k1) " * 8 + "\n") * min(n * 4, 1_350), "size-limit"),
]


def _squares(m: int, base: str) -> tuple[str, str]:
    lines = f"param v0 = {base}\n" + "".join(f"param v{i + 1} = v{i} * v{i}\n" for i in range(m))
    return lines, f"v{m}"


HUGE_SLOTS = [
    "conv({v}, k3)", "conv(4, k3, stride={v})", "conv(4, kernel=({v}, 1))", "linear({v})", "flatten linear({v})",
    "dropout({v})", "dropout(1 / ({v}))", "elu({v})", "leakyrelu({v})", "layerscale({v})", "layerscale(1 / ({v}))",
    "posembedding(std={v})", "batchnorm(eps={v})", "batchnorm(eps=1 / ({v}))", "lrn(3, alpha={v})",
    "softplus(beta={v})", "prelu(init={v})", "prelu(init=-({v}))", "[relu] * ({v})", "[relu] * ({v}) as i",
    "if ({v}) > 1 [relu] else [identity]", "if {v} [relu]", "reshape(-1, {v})", "permute(0, {v})", "mean({v})",
    "flatten({v})", "transpose(1, {v})", "unflatten(1, ({v}, -1))", "token({v})", "concat([relu], [relu], dim={v})",
    "split([relu], [relu], sizes=({v}, 1))", "maxpool({v})", "adaptiveavgpool({v})", "groupnorm({v})",
    "channelshuffle({v})", "attention({v})", "activation({v})", "gelu(approximate={v})", "linear(4, bias={v})",
    "conv(round(({v}) / 3), k1)", "conv(make_divisible({v}, 7), k1)", "conv(min({v}, 4), k1)",
    "conv(floor(1 / ({v})) + 1, k1)", "conv(abs(-({v})), k1)", "conv(ceil(({v}) / 7), k1)",
    "conv(make_divisible(4, {v}), k1)", "conv(4, k1) dropout(({v}) / (({v}) + 1))", "blk({v})",
    "conv(4, k3, padding={v})", "conv(4, k3, dilation={v})", "conv(4, k3, groups={v})", "softmax({v})",
]


def gen_huge(rng: random.Random) -> dict:
    prefix = "block blk(x) { conv(x, k1) }\n" if rng.random() < 0.3 else ""
    r = rng.random()
    if r < 0.3:
        v, variant = rng.choice(HUGE_LITERALS), "literal"
    elif r < 0.5:
        factor = rng.choice(["1e30", "99999", "10", "1e-30", "1/3", "2"])
        v, variant = "*".join([factor] * rng.choice([2, 5, 12, 40, 200])), "product"
    elif r < 0.8:
        m = rng.choice([3, 6, 9, 11, 12, 13, 14, 16, 18, 20, 24, 30, 40])
        lines, v = _squares(m, rng.choice(["10", "2", "1e30", "1/3", "3/2", "1.5"]))
        prefix += lines
        variant = "squares" if m < 20 else "squares-deep"
    elif r < 0.9:
        v, variant = rng.choice(["i * i * i * i * i * i * i * i", "x * x * x * x"]), "index"
        prefix += "block sq(x) { conv(x * x * x * x, k1) }\n"
        return case("huge:index", prefix + "input 1x8x8\n" + rng.choice(
            [f"[conv(4, k1) {rng.choice(HUGE_SLOTS).format(v='i * 99999 * 99999 * 99999')}] * 3 as i",
             f"sq({rng.choice(HUGE_LITERALS[:12])})"]) + "\n")
    else:
        shape = rng.choice(["999999999x999999999x999999999", "9999999999x1", "1x999999999", "999999999",
                            "3x99999999x99999999", "1x" + "9" * 30, "999999999x999999999", "1x1x1x1x1x1x1x1x1x99"])
        body = rng.choice(["conv(4, k3)", "flatten linear(4)", "maxpool(3)", "adaptiveavgpool(99999999)", "relu",
                           "batchnorm layernorm", "flatten", "reshape(-1)", "conv(4, k999999999)",
                           "conv(4, k9999999999)", "classtoken", "attention(1)", "split([relu], [relu])"])
        return case("huge:shape", f"input {shape}\n{body}\n",
                    batch=rng.choice([None, None, ["int", "999999999"], ["int", str(2 ** 40)]]))
    stmt = rng.choice(HUGE_SLOTS).format(v=v)
    where = rng.random()
    if where < 0.15:
        text = prefix + f"param q = {v}\ninput 1x8x8\nconv(4, k1) {rng.choice(HUGE_SLOTS).format(v='q')}\n"
    elif where < 0.3:
        option = rng.choice(["lr", "epochs", "batch", "resize"])
        text = prefix + f"train {rng.choice(['mnist', 'cifar10'])} {option}={v}\ninput 1x8x8\nrelu\n"
    elif where < 0.4:
        text = prefix + f"block big(x = {v}) {{ conv(x, k1) }}\ninput 1x8x8\nbig\n"
    else:
        text = prefix + f"input 1x8x8\nconv(4, k1) {stmt}\n"
    return case(f"huge:{variant}", text)


def gen_odd(rng: random.Random) -> dict:
    """Odd characters and long lines, with a mistake placed after them: the excerpt must still show the right line."""
    base = _ok_spec(rng) if rng.random() < 0.6 else Gen(rng).spec()
    text = base
    for _ in range(rng.choice([1, 1, 2, 3])):
        odd = rng.choice(ODD)
        if rng.random() < 0.5:  # at a line boundary, where line counting is decided
            starts = [0] + [m.end() for m in re.finditer("\n", text)]
            pos = rng.choice(starts) + (0 if rng.random() < 0.5 else -1)
            pos = max(0, pos)
        else:
            pos = rng.randrange(len(text) + 1)
        text = text[:pos] + odd * rng.choice([1, 1, 1, 3]) + text[pos:]
    variant = "chars"
    r = rng.random()
    if r < 0.5:  # a mistake on a later line, or on the line of the odd character
        bad = rng.choice(["bogus", "conv(", ")", "conv(4, k3, k3)", "linear(0)", "maxpool(99)", "if 3 [relu]",
                          "relu(1)", "param", "1x8", "conv(q, k1)"])
        lines = text.split("\n")
        at = rng.randrange(len(lines))
        cut = rng.randrange(len(lines[at]) + 1)
        lines[at] = lines[at][:cut] + " " + bad + " " + lines[at][cut:]
        text = "\n".join(lines)
    elif r < 0.65:
        n = rng.choice([200, 2000, 20000, 100000])
        filler = rng.choice(["relu ", "  ", "# " + "x" * 10, "identity "])
        where = rng.choice(["before", "after", "both"])
        line = (filler * (n // len(filler)) if where in ("before", "both") else "") + "bogus" + (
            " " + filler * (n // len(filler)) if where in ("after", "both") else "")
        text = text + "\n" + line + "\n"
        variant = "long-line"
    if rng.random() < 0.1:
        text = "\ufeff" + text
    mode = "cli" if rng.random() < 0.3 else "api"
    return case(f"odd:{variant}", text, mode=mode, args=rng.choice([[], ["--format", "json"]]))


def gen_include(rng: random.Random) -> dict:
    """Includes: the quoted file may be missing, a directory, a symlink loop, not a spec, not UTF-8, or fine."""
    blocks = "block inc(c = 4) {\n    conv(c, k1) relu\n}\n"
    r = rng.random()
    files: dict[str, dict] = {}
    use = "inc(4)"
    if r < 0.12:
        target, variant = rng.choice(["x\0y.arch", "\0", "a\0", "x\0y"]), "nul"
    elif r < 0.22:
        files = {"loop.arch": {"symlink": "loop.arch"}} if rng.random() < 0.5 else {
            "a.arch": {"symlink": "b.arch"}, "b.arch": {"symlink": "a.arch"}}
        target, variant = rng.choice(["loop.arch", "a.arch", "loop.arch/x.arch"]), "symlink-loop"
        if "a.arch" not in files and target == "a.arch":
            target = "loop.arch"
    elif r < 0.3:
        files = {"dir.arch": {"dir": True}}
        target, variant = rng.choice(["dir.arch", ".", "..", "/", "dir.arch/"]), "directory"
    elif r < 0.4:
        name = rng.choice(["notes.txt", "blocks", "x.py", "README"])
        files = {name: {"text": rng.choice([blocks, "print('hi')\n", "just words\n", ""])}}
        target, variant = name, "not-arch"
    elif r < 0.47:
        files = {"bin.arch": {"latin1": rng.choice(["\xff\xfe\x00b\x00l", "block a { relu }\n\xe9\xff", "\x80"])}}
        target, variant = "bin.arch", "not-utf8"
    elif r < 0.52:
        target, variant = rng.choice(["/dev/zero", "/dev/null", "/proc/self/mem", "/proc/self/stat"]), "device"
    elif r < 0.57:
        target, variant = rng.choice(["a" * 300 + ".arch", "a/" * 3000 + "x.arch", "~/x.arch", "", " ",
                                      "\x1b[31m.arch", "x\ny.arch", "../" * 50 + "x.arch"]), "name"
    elif r < 0.67:  # a cycle, or a chain
        n = rng.choice([2, 3, 50, 300])
        cycle = rng.random() < 0.5
        for i in range(n):
            nxt = f"f{i + 1}.arch" if i + 1 < n else ("f0.arch" if cycle else None)
            files[f"f{i}.arch"] = {"text": (f'include "{nxt}"\n' if nxt else "") + (blocks if i == n - 1 else "")}
        target, variant = "f0.arch", "cycle" if cycle else "chain"
    else:  # a file with a mistake in it: the excerpt is from the included file
        g = Gen(rng)
        body = rng.choice([blocks, blocks.replace("relu", "bogus"), blocks.replace("{", "(", 1),
                           "input 1x8x8\n" + blocks, blocks + "relu\n", "param w = 3\n" + blocks,
                           blocks.replace("c = 4", "c = 1e999999"), "include vgg\n" + blocks,
                           blocks + f"block g {{ {g.path()} }}\n"])
        if rng.random() < 0.4:
            pos = rng.randrange(len(body) + 1)
            body = body[:pos] + rng.choice(ODD) + body[pos:]
        files = {"lib.arch": {"text": body}}
        target, variant = "lib.arch", "file"
        use = rng.choice(["inc(4)", "inc(0)", "inc(1e999999)", "g", "inc"])
    text = f'include "{target}"\ninput 1x8x8\n{use} flatten\n'
    if rng.random() < 0.2:
        files["main.arch"] = {"text": text}
        return case(f"include:{variant}", "main.arch", files=files, mode="cli", args=[])
    return case(f"include:{variant}", text, files=files, mode=rng.choice(["api", "api", "cli"]))


INPUT_VALUES = ["1x28x28", "1x99999999999999999999x28", "²x28x28", "0x28x28", "-1", "abc", "", "1x28x28x", "1×28×28",
                " 1x28x28 ", "1e3x28x28", "3x224x224", "1x1x1", "999999999x999999999x999999999", "1x" + "9" * 5000,
                "1x" + "1x" * 3000 + "1", "x", "1xx28", "28", "1x-28x28", "1.5x28x28", "\u0663x28x28", "1x28x28\n",
                "0x10", "1x28x28;", "1_0x28x28", "+1x28x28", "1x28x28\x1b[31m", "１x28x28", "1x2147483648x1",
                "1x4294967296x4294967296", "1 x 28 x 28"]
BATCH_VALUES = ["1", "99999999999999999999", "2147483648", "9223372036854775808", "999999999", "0", "-3", "1e3", "x",
                "4", "", "1.5", "9" * 400]
SET_VALUES = ["1e999999999", "1e-5000", "abc", "9" * 5000, "1/3", "-4", "true", " 4 ", "0x10", "1_0", "\u0663", "²",
              "inf", "nan", "-inf", "1e308", "1e-308", "1" * 4400, "4\x1b[31m", "1e999", "8", "2", "0", "1e-999999999",
              "1e+999999999", "relu", "false", "1/0", "3.0", "1e9", "-0", ".5e1", "1" + "0" * 299, "1E400",
              "1e9999999999999999999"]
DEPTH_VALUES = ["-1", "0", "1", "2", "99999999999999999999", "x", "3"]


def gen_cli(rng: random.Random) -> dict:
    spec = _ok_spec(rng) if rng.random() < 0.6 else Gen(rng).spec()
    if "param w" not in spec and rng.random() < 0.7:
        spec = "param w = 4\n" + spec
    args: list[str] = []
    for _ in range(rng.choice([1, 1, 2, 3, 4])):
        flag = rng.choice(["--input", "--batch", "--set", "--set", "--depth", "--format", "-i", "-b", "-s", "-f"])
        if flag in ("--input", "-i"):
            value = rng.choice(INPUT_VALUES)
        elif flag in ("--batch", "-b"):
            value = rng.choice(BATCH_VALUES)
        elif flag in ("--set", "-s"):
            name = rng.choice(["w", "w", "w", "ratio", "W", "", " w", "w w", "input", "true"])
            value = f"{name}={rng.choice(SET_VALUES)}" if rng.random() < 0.95 else rng.choice(["w", "=", "w==4"])
        elif flag == "--depth":
            value = rng.choice(DEPTH_VALUES)
        else:
            value = rng.choice(["json", "table", "json", "xml", "JSON"])
        args += [flag, value]
    if rng.random() < 0.05:
        args.append(rng.choice(["--bogus", "extra", "--batch"]))
    args = [a.replace("\0", "") for a in args]  # argv holds no NUL
    # labelled by the flags' values, so that a hang is told by what caused it
    label = " ".join(f"{f}={v[:16]!r}" if i % 2 == 0 else "" for i, (f, v) in enumerate(zip(args, args[1:] + [""])))
    return case(f"cli:{' '.join(label.split())}", spec.replace("\0", ""), mode="cli", args=args)


def _maybe_api_flags(rng: random.Random, p: float) -> dict:
    if rng.random() >= p:
        return {}
    return {"input_shape": rng.choice([["str", rng.choice(INPUT_VALUES)], ["tuple", ["1", "8", "8"]],
                                       ["tuple", ["1", str(2 ** 70), "3"]], ["tuple", ["0", "8"]], ["tuple", []],
                                       ["tuple", ["-1", "8", "8"]], ["tuple", ["3", "999999999", "999999999"]]]),
            "batch": rng.choice([["int", "1"], ["int", "0"], ["int", "-1"], ["int", str(2 ** 63)],
                                 ["int", "999999999"]])}


def gen_api(rng: random.Random) -> dict:
    """The Python API's equivalents of the flags: input_shape=, batch=, params of every Python number type."""
    spec = _ok_spec(rng) if rng.random() < 0.7 else Gen(rng).spec()
    spec = spec if "param w " in spec else "param w = 4\n" + spec
    params = {}
    if rng.random() < 0.8:
        params["w"] = rng.choice([["int", "1" + "0" * 5000], ["int", "4"], ["float", "inf"], ["float", "nan"],
                                  ["float", "-0.0"], ["float", "1e308"], ["float", "5e-324"], ["str", "1e999999999"],
                                  ["bool", True], ["frac", "1/3"], ["str", "nan"], ["str", " 4 "],
                                  ["int", str(2 ** 63)],
                                  ["str", "9" * 5000], ["float", "0.1"], ["str", "\u0663"], ["int", "-4"],
                                  ["str", "1e-999999999"], ["frac", "1/1" + "0" * 400]])
    if rng.random() < 0.1:
        params["undeclared"] = ["int", "1"]
    flags = _maybe_api_flags(rng, 0.7)
    label = " ".join(f"{k}={_py_repr(v):.24}" for k, v in [*params.items(), *flags.items()])
    return case(f"api:{label}", spec, params=params, **flags)


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "grammar": gen_grammar, "mutate": gen_mutate, "deep": gen_deep, "huge": gen_huge, "odd": gen_odd,
    "include": gen_include, "cli": gen_cli, "api": gen_api,
}


def corpus() -> list[dict]:
    """The cases the brief names, always run: each one once."""
    big = "*".join(["1e30"] * 12)
    sq, v = _squares(40, "10")
    return [
        case("corpus:huge", "input 1x8x8\nconv(1e999999, k1)\n"),
        case("corpus:huge", f"input 1x8x8\nconv({big}, k1)\n"),
        case("corpus:huge", f"input 1x8x8\nelu({big})\n"),
        case("corpus:huge", f"train mnist lr={big}\ninput 1x8x8\nrelu\n"),
        case("corpus:huge", "input 999999999x999999999x999999999\nconv(4, k3)\n"),
        case("corpus:huge", _squares(13, "10")[0] + "input 1x8x8\nconv(v13, k3)\n"),
        case("corpus:squares", sq + f"input 1x8x8\nconv({v}, k1)\n"),
        case("corpus:multiply", "block a { [relu] * 1000 }\nblock b { [a] * 10 }\ninput 1x8x8\n[b] * 1000\n"),
        case("corpus:deep", "input 1x8x8\n" + "add([" * 300 + "relu" + "], [identity])" * 300 + "\n"),
        case("corpus:deep", _chain_blocks(500, random.Random(0))[0]),
        case("corpus:odd", "input 1x8x8\nrelu\rbogus\n"),
        case("corpus:odd", "input 1x8x8\nrelu\x85\nbogus\n"),
        case("corpus:odd", "input 1x8x8\u2028relu\u2029\nbogus\n"),
        case("corpus:odd", "\ufeffinput 1x8x8\nrelu bogus\n"),
        case("corpus:odd", "input 1x8x8\nrelu \x1b[31mbogus\n"),
        case("corpus:odd", "input 1x8x8\nconv(²)\n"),
        case("corpus:odd", "input 1x8x8\r\nrelu\r\nbogus\r\n"),
        case("corpus:odd", "input 1x8x8\n" + "relu " * 20000 + "bogus\n"),
        case("corpus:include", 'include "x\0y.arch"\ninput 1x8x8\nrelu\n'),
        case("corpus:include", 'include "loop.arch"\ninput 1x8x8\nrelu\n',
             files={"loop.arch": {"symlink": "loop.arch"}}),
        case("corpus:include", 'include "dir.arch"\ninput 1x8x8\nrelu\n', files={"dir.arch": {"dir": True}}),
        case("corpus:include", 'include "notes.txt"\ninput 1x8x8\nrelu\n', files={"notes.txt": {"text": "hello\n"}}),
        case("corpus:cli", "input 1x28x28\nflatten linear(10)\n", mode="cli",
             args=["--input", "1x99999999999999999999x28"]),
        case("corpus:cli", "input 1x28x28\nflatten linear(10)\n", mode="cli", args=["--input", "²x28x28"]),
        case("corpus:cli", "input 1x28x28\nflatten linear(10)\n", mode="cli", args=["--batch", "9" * 20]),
        case("corpus:cli", "param w = 4\ninput 1x28x28\nflatten linear(w)\n", mode="cli",
             args=["--set", "w=1e999999999"]),
        case("corpus:cli", "param w = 4\ninput 1x28x28\nflatten linear(w)\n", mode="cli", args=["--set", "w=1e-5000"]),
        case("corpus:cli", "param w = 4\ninput 1x28x28\nflatten linear(w)\n", mode="cli",
             args=["--set", "w=abc", "--format", "json", "--depth", "0"]),
    ]


# Checking a report ------------------------------------------------------------

HEAD = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): (?:error|warning): ")
GUTTER = re.compile(r"^ *(?P<line>\d+) \| (?P<text>.*)$")
CARET = re.compile(r"^ *\| (?P<pad>[^^]*)(?P<carets>\^+)")
# How an excerpt may show a character it escapes, and where it clips a long line: kept apart when comparing.
ESCAPED = re.compile(r"\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\U[0-9a-fA-F]{8}|\\[0abtnvfre]|<U\+[0-9A-Fa-f]{4,6}>"
                     r"|<(?:CR|LF|FF|VT|NUL|ESC|NEL|LS|PS|BOM|TAB|DEL|BS|BEL)>|\^[@A-Z\[\\\]^_?]"
                     r"|[\u2400-\u2426\ufffd\u23ce\u21b5\u00b7]")
CLIP = re.compile(r"\.\.\.|…|\[\.\.\.\]")
RAW = {"Cc", "Cs", "Zl", "Zp"}  # characters a report must not print raw (a tab and a line break may stand)


def _visible(s: str) -> str:
    """Only what a reader sees as text: everything else (control characters, white space) as single spaces."""
    return " ".join("".join(c if c.isprintable() and not c.isspace() else " " for c in s).split())


def check_report(report: str, source_of: Callable[[str], str | None]) -> list[tuple[str, str]]:
    """Problems of a rendered report: each `file:line:col: error:` whose excerpt shows another line than the one
    named, a column outside that line, a caret elsewhere than the column, raw control characters.

    `source_of(file)` gives the text of a file the report names (None: unknown, its excerpt is not compared).
    Escaped characters and clipped ends are allowed: what is shown must be pieces of the named line, in order.
    """
    problems: list[tuple[str, str]] = []
    for ch in report:
        if ch not in "\n\t" and unicodedata.category(ch) in RAW:
            problems.append((f"raw U+{ord(ch):04X} in the report", f"{ch!r} printed as is"))
            break
    lines = report.split("\n")
    heads = [i for i, ln in enumerate(lines) if HEAD.match(ln)]
    for n, i in enumerate(heads):
        m = HEAD.match(lines[i])
        text = source_of(m["file"])
        if text is None:
            continue
        stop = heads[n + 1] if n + 1 < len(heads) else len(lines)
        found = _check_head(m["file"], int(m["line"]), int(m["col"]), lines[i + 1:stop], text)
        if found and text.startswith("\ufeff"):  # a byte order mark opening the text may be dropped, not counted
            found = min(found, _check_head(m["file"], int(m["line"]), int(m["col"]), lines[i + 1:stop], text[1:]),
                        key=len)
        problems += found
    return problems


def _check_head(name: str, line: int, col: int, after: list[str], text: str) -> list[tuple[str, str]]:
    """The problems of one error's excerpt: `after` are the report's lines after its head, up to the next head."""
    source_lines = text.split("\n")
    where = f"{name}:{line}:{col}"
    if not 1 <= line <= len(source_lines):
        return [("line past the end of the source", f"{where}: the source has {len(source_lines)} lines")]
    problems = []
    expected = source_lines[line - 1]
    if not 1 <= col <= len(expected) + 1:
        problems.append(("column outside the line", f"{where}: line {line} has {len(expected)} characters"))
    shown = caret = None
    for j in range(len(after) - 1):
        g, c = GUTTER.match(after[j]), CARET.match(after[j + 1])
        if g and c:
            shown, caret = g, c
            break
    if shown is None:
        if _visible(expected):
            problems.append(("no excerpt for a line with text", f"{where}: {expected[:80]!r}"))
        return problems
    if int(shown["line"]) != line:
        problems.append(("excerpt numbered another line", f"{where} shows line {shown['line']}"))
    s = shown["text"]
    pieces = [_visible(p) for p in CLIP.split(ESCAPED.sub(" ", s))]
    pieces = [p for p in pieces if p]
    want = _visible(expected)
    at = 0
    for p in pieces:
        found = want.find(p, at)
        if found < 0:
            problems.append(("excerpt shows another line", f"{where}: shows {s[:80]!r}, line {line} is "
                                                           f"{expected[:80]!r}"))
            return problems
        at = found + len(p)
    if want and not pieces:
        problems.append(("excerpt shows nothing of the line", f"{where}: line {line} is {expected[:80]!r}"))
    elif col - 1 < len(expected) and not _caret_ok(s, len(caret["pad"]), expected, col):
        problems.append(("caret not under the column", f"{where}: caret at {len(caret['pad']) + 1} of "
                                                       f"{s[:80]!r}, column {col} of {expected[:80]!r}"))
    return problems


def _columns(c: str) -> int:
    """Terminal columns a character takes: none for a combining mark, two for a wide (CJK) one."""
    if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def _caret_ok(shown: str, at: int, expected: str, col: int) -> bool:
    columns = 0  # the caret's column -> the character of `shown` drawn there
    for i, ch in enumerate(shown):
        if columns >= at and _columns(ch):
            at = i
            break
        columns += _columns(ch)
    else:
        at = len(shown) if columns <= at else at
    c = expected[col - 1]
    if not expected[col - 1:].strip() or not _visible(expected[col - 1:]) or not _columns(c):
        return True  # at the end of the line, or a mark drawn over the character before: nothing to point at
    if c.isprintable() and not c.isspace():
        return at < len(shown) and shown[at] == c
    if at >= len(shown):
        return False
    return bool(ESCAPED.match(shown, at)) or shown[at] in " ?\t" or not shown[at].isprintable()


# The worker: runs cases, one at a time, in its own process ----------------------

def _py(v: Any) -> Any:
    """A tagged JSON value -> the Python value the API gets."""
    if v is None:
        return None
    kind, x = v
    if kind == "int":
        return int(x) if len(x) < 4000 else 10 ** (len(x) - 1)
    if kind == "float":
        return float(x)
    if kind == "frac":
        from fractions import Fraction
        num, den = x.split("/")
        return Fraction(int(num), int(den)) if len(den) < 4000 else Fraction(1, 10 ** (len(den) - 1))
    if kind == "tuple":
        return tuple(int(d) for d in x)
    return x  # str, bool


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _py_repr(v: Any) -> str:
    """How the value `_py(v)` is written in Python, short even for a number of thousands of digits."""
    kind, x = v
    if kind == "int" and len(x) > 40:
        return f"10**{len(x) - 1}" if x.strip("0") == "1" else f"int('{x[:12]}...' ({len(x)} digits))"
    if kind == "frac" and len(x) > 40:
        num, den = x.split("/")
        return f"Fraction({num}, 10**{len(den) - 1})"
    return repr(_py(v))


def _status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, ... in kB from /proc."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("Vm"):
                    key, val = ln.split(":", 1)
                    out[key] = int(val.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _make_files(files: dict[str, dict]) -> None:
    for name, what in files.items():
        p = Path(name)
        if p.parent != Path("."):
            p.parent.mkdir(parents=True, exist_ok=True)
        if "symlink" in what:
            os.symlink(what["symlink"], name)
        elif "dir" in what:
            p.mkdir()
        elif "latin1" in what:
            p.write_bytes(what["latin1"].encode("latin-1"))
        else:
            p.write_bytes(what["text"].encode("utf-8", "surrogatepass"))


def _frames(tb) -> tuple[str, str]:
    """Where an exception was raised, and the innermost frame in archdsl: `file.py:line (function)`."""
    import traceback

    frames = traceback.extract_tb(tb)
    if not frames:
        return "?", "?"
    def say(f):
        return f"{Path(f.filename).name}:{f.lineno} ({f.name})"
    ours = [f for f in frames if f"{os.sep}archdsl{os.sep}" in f.filename]
    return say(frames[-1]), say(ours[-1]) if ours else "-"


def run_case(c: dict) -> dict:
    """Run one case here and now; what happened, as a JSON-able dict."""
    import shutil

    import archdsl
    from archdsl import ArchError

    home = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="archdsl-fuzz-")
    out: dict[str, Any] = {"outcome": "ok", "problems": []}
    try:
        os.chdir(tmp)
        _make_files(c.get("files", {}))
        spec = c["spec"]
        t0, cpu0 = time.perf_counter(), time.process_time()
        if c["mode"] == "cli":
            out.update(_run_cli(c))
        else:
            try:
                batch = _py(c.get("batch"))
                summary = archdsl.trace(spec, _py(c.get("input_shape")), batch=1 if batch is None else batch,
                                        **{k: _py(v) for k, v in c.get("params", {}).items()})
                str(summary), summary.to_dict()
            except ArchError as e:
                report = e.render()
                texts = {x.span.source.name: x.span.source.text for x in e.errors if x.span is not None}
                out.update(outcome="error", report=report[:2000],
                           problems=check_report(report, texts.get) + _report_basics(report))
            except BaseException as e:  # noqa: B036 - every other exception is what we are looking for
                if isinstance(e, KeyboardInterrupt):
                    raise
                raised, ours = _frames(e.__traceback__)
                out.update(outcome="crash", type=type(e).__name__, message=str(e)[:500], raised=raised, ours=ours)
        out["time"], out["cpu"] = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        os.chdir(home)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _report_basics(report: str) -> list[tuple[str, str]]:
    bad = []
    if "error" not in report:
        bad.append(("report says no error", report[:120]))
    if "Traceback" in report:
        bad.append(("traceback in the report", report[:120]))
    return bad


def _run_cli(c: dict) -> dict:
    from typer.testing import CliRunner

    from archdsl.cli import app

    files = c.get("files", {})
    spec = c["spec"]

    def source_of(name: str) -> str | None:
        if name == "<string>":
            return spec
        if name in files and "text" in files[name]:
            return files[name]["text"]
        if name.startswith("stdlib/") and (STDLIB / name[7:]).is_file():
            return (STDLIB / name[7:]).read_text(encoding="utf-8")
        return None

    res = CliRunner().invoke(app, ["shapes", spec, *c["args"]])
    output = res.output or ""
    out: dict[str, Any] = {"outcome": "ok" if res.exit_code == 0 else "error", "report": output[-2000:]}
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raised, ours = _frames(res.exc_info[2] if res.exc_info else None)
        out.update(outcome="crash", type=type(exc).__name__, message=str(exc)[:500], raised=raised, ours=ours)
    elif res.exit_code not in (0, 2):
        out.update(outcome="crash", type=f"exit code {res.exit_code}", message=output[-300:], raised="-", ours="-")
    elif "Traceback" in output:
        out.update(outcome="crash", type="traceback printed", message=output[-300:], raised="-", ours="-")
    else:
        out["problems"] = check_report(output, source_of)
        formats = [v for f, v in zip(c["args"], c["args"][1:]) if f in ("--format", "-f")]
        if formats and formats[-1] == "json" and res.stdout.strip():
            try:
                json.loads(res.stdout)
            except ValueError as e:
                out["problems"].append(("--format json printed what is not JSON", f"{e}: {res.stdout[:200]!r}"))
    return out


def worker_main() -> None:
    """Read cases as JSON lines on stdin, answer each with a JSON line; stray prints go to stderr."""
    import resource

    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    import archdsl.api  # noqa: F401
    import archdsl.cli  # noqa: F401
    import archdsl.tracer  # noqa: F401  (torch)

    run_case(case("warm-up", "input 1x8x8\nconv(4, k3) relu flatten linear(2)\n"))
    run_case(case("warm-up", "input 1x8x8\nconv(4, k3) bogus\n", mode="cli"))
    run_case(case("warm-up", "input 1x8x8\nconv(4, k3) flatten\n", mode="cli", args=["--format", "json"]))
    vm = _status().get("VmSize", 4 << 20) * 1024
    try:  # a runaway allocation becomes a MemoryError here rather than the machine's problem
        resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 30), resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass
    proto.write(json.dumps({"ready": True, "archdsl": str(Path(archdsl.api.__file__).parent)}) + "\n")
    for line in sys.stdin:
        c = json.loads(line)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the present VmRSS: the peak is this case's
        except OSError:
            pass
        before = _status().get("VmRSS", 0)
        result = run_case(c)
        result["mem_mb"] = max(0, _status().get("VmHWM", 0) - before) / 1024
        proto.write(json.dumps(result) + "\n")


# The pool: workers in their own processes, each case bounded in time and memory ---------

BOOT = "import sys; sys.path.insert(0, {tests!r}); import test_fuzz; test_fuzz.worker_main()"


class Worker:
    def __init__(self, timeout: float, memory_mb: float, log: str | None = None) -> None:
        self.timeout, self.memory_mb, self.log = timeout, memory_mb, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONHASHSEED": "0"}
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL
        # The working directory is not the checkout: `python -c` looks for modules there first, before PYTHONPATH.
        self.proc = subprocess.Popen([sys.executable, "-c", BOOT.format(tests=str(Path(__file__).parent))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                     cwd=tempfile.gettempdir(), env=env)
        if self.log:
            err.close()
        self.buf = b""
        self.starts += 1
        ready = self._read(180.0, watch=False)
        if not isinstance(ready, dict) or not ready.get("ready"):
            raise RuntimeError(f"the fuzz worker did not start: {ready}")
        self.base_kb = _status(self.proc.pid).get("VmRSS", 0)
        self.library = ready["archdsl"]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.proc = None

    def _read(self, timeout: float, watch: bool = True) -> dict | str:
        """The next JSON line, or "hang", "memory:<MB>", "died:<code>".

        A hang is `timeout` seconds of the worker's CPU time, so that a loaded machine does not make one; a case
        that waits without computing is a hang after WAIT_FACTOR times `timeout` on the clock.
        """
        deadline = time.monotonic() + timeout * (WAIT_FACTOR if watch else 1)
        fd = self.proc.stdout.fileno()
        cpu0 = _cpu_seconds(self.proc.pid)
        while b"\n" not in self.buf:
            now = time.monotonic()
            if now > deadline or (watch and _cpu_seconds(self.proc.pid) - cpu0 > timeout):
                return "hang"
            ready, _, _ = select.select([fd], [], [], min(0.02, deadline - now))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    code = self.proc.wait()
                    return f"died:{code}"
                self.buf += chunk
            elif watch:
                grown = (_status(self.proc.pid).get("VmRSS", 0) - self.base_kb) / 1024
                if grown > self.memory_mb:
                    return f"memory:{grown:.0f}"
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def run(self, c: dict) -> dict:
        if self.proc is None:
            self.start()
        t0, cpu0 = time.monotonic(), _cpu_seconds(self.proc.pid)
        try:
            self.proc.stdin.write((json.dumps(c) + "\n").encode())
            self.proc.stdin.flush()
            got = self._read(self.timeout)
        except (BrokenPipeError, OSError):
            got = f"died:{self.proc.poll()}"
        if isinstance(got, dict):
            if _status(self.proc.pid).get("VmRSS", 0) - self.base_kb > 600 * 1024:
                self.stop()  # it kept memory from a big case: start afresh so later peaks mean something
            return got
        cpu = _cpu_seconds(self.proc.pid) - cpu0
        self.stop()
        wall = time.monotonic() - t0
        if got == "hang":
            return {"outcome": "hang", "time": wall, "cpu": cpu, "problems": []}
        if got.startswith("memory:"):
            return {"outcome": "memory", "time": wall, "mem_mb": float(got[7:]), "problems": []}
        return {"outcome": "crash", "type": f"worker died ({got[5:]})", "message": self._log_tail(), "raised": "-",
                "ours": "-", "time": wall, "problems": []}

    def _log_tail(self) -> str:
        if not self.log:
            return "(no log)"
        try:
            return Path(self.log).read_text(errors="replace")[-500:]
        except OSError:
            return ""


class Pool:
    """Runs cases on `n` workers in parallel; each case bounded by `timeout` seconds and `memory_mb` of growth."""

    def __init__(self, n: int = 2, timeout: float = TIMEOUT_S, memory_mb: float = MEMORY_MB,
                 log_dir: str | None = None) -> None:
        self.workers = [Worker(timeout, memory_mb, f"{log_dir}/worker{i}.log" if log_dir else None) for i in range(n)]
        errors: list[BaseException] = []

        def start(w: Worker) -> None:
            try:
                w.start()
            except BaseException as e:  # noqa: B036
                errors.append(e)

        threads = [threading.Thread(target=start, args=(w,)) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.close()
            raise errors[0]

    def run(self, cases: Iterable[dict], skip: Callable[[dict], bool] | None = None,
            done: Callable[[dict, dict], None] | None = None) -> list[tuple[dict, dict]]:
        """(case, result) for every case, in order. `skip(case)` is asked just before a case would run;
        `done(case, result)` is called as each finishes (from the worker threads, one at a time)."""
        todo: queue.Queue = queue.Queue()
        cases = list(cases)
        for i, c in enumerate(cases):
            todo.put((i, c))
        results: list[Any] = [None] * len(cases)
        lock = threading.Lock()

        def serve(w: Worker) -> None:
            while True:
                try:
                    i, c = todo.get_nowait()
                except queue.Empty:
                    return
                with lock:
                    skipped = skip is not None and skip(c)
                r = {"outcome": "skipped", "problems": []} if skipped else w.run(c)
                with lock:
                    results[i] = (c, r)
                    if done is not None:
                        done(c, r)

        threads = [threading.Thread(target=serve, args=(w,)) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def close(self) -> None:
        for w in self.workers:
            w.stop()


# Classes of failure -----------------------------------------------------------------

def failures_of(c: dict, r: dict) -> list[tuple[str, str]]:
    """(class, detail) for each way the case broke the promise; none for a result or a proper error."""
    out = []
    o = r["outcome"]
    if o == "crash":
        where = r.get("ours") if r.get("ours") not in (None, "-") else r.get("raised")
        where = re.sub(r":\d+ ", " ", where or "?")  # classed by file and function, not by line
        out.append((f"crash: {r['type']} at {where}",
                    f"{r['type']}: {r.get('message', '')[:300]}\n"
                    f"    raised at {r.get('raised')}; in archdsl at {r.get('ours')}"))
    elif o == "hang":
        out.append((f"hang: {c['gen']}", f"no answer after {r.get('cpu', 0):.1f} s of CPU time "
                                          f"({r['time']:.1f} s on the clock)"))
    elif o == "memory" or r.get("mem_mb", 0) > MEMORY_MB:
        out.append((f"memory: {c['gen']}", f"grew by {r.get('mem_mb', 0):.0f} MB"))
    for kind, detail in r.get("problems", []):
        label = "garbled" if kind.startswith("raw ") or "JSON" in kind else "misplaced"
        out.append((f"{label}: {kind}", detail))
    return out


def kind_of(cls: str) -> str:
    return cls.split(":", 1)[0]


def show_case(c: dict) -> str:
    """A reproducer, as Python would write the call (CLI arguments as Python strings too)."""
    files = "".join(f"\n    file {name!r}: " + (_py_text(what["text"]) if "text" in what else repr(what))
                    for name, what in c.get("files", {}).items())
    if c["mode"] == "cli":
        args = " ".join(t if t == repr(a) else f"({t})" for a, t in ((a, _py_text(a)) for a in c["args"]))
        return f"archdsl shapes {_short(_py_text(c['spec']))} {args}".rstrip() + files
    extra = "".join(f", {k}={_py_repr(c[k])}" for k in ("input_shape", "batch") if c.get(k) is not None)
    extra += "".join(f", {k}={_short(_py_repr(v))}" for k, v in c.get("params", {}).items())
    return f"archdsl.trace({_short(_py_text(c['spec']))}{extra})" + files


def _py_text(s: str) -> str:
    """A string as a Python expression, its long runs of one piece written as a repeat: 'x\\n' + 'relu ' * 9000."""
    parts, pos = [], 0
    for m in re.finditer(r"(.{1,200}?)\1{9,}", s, re.S):
        if m.start() > pos:
            parts.append(repr(s[pos:m.start()]))
        parts.append(f"{m[1]!r} * {len(m[0]) // len(m[1])}")
        pos = m.end()
    if pos < len(s) or not parts:
        parts.append(repr(s[pos:]))
    return " + ".join(parts)


def _short(s: str, most: int = 600) -> str:
    return s if len(s) <= most else s[:most // 2] + f" ...[{len(s) - most:,} more]... " + s[-most // 2:]


def size_of(c: dict) -> int:
    return (len(c["spec"]) + sum(len(a) for a in c.get("args", []))
            + sum(len(json.dumps(w)) for w in c.get("files", {}).values())
            + sum(len(json.dumps(v)) for v in c.get("params", {}).values()))


# The tests ---------------------------------------------------------------------------

CI_CASES = {"grammar": 140, "mutate": 120, "deep": 0,  # deep: deep_cases(), every kind
            "huge": 70, "odd": 120, "include": 50, "cli": 70, "api": 40}
MAX_HANGS_PER_GEN = 1  # after a hang of one generator variant, its other cases are skipped (each costs seconds)
MAX_HANGS_PER_TEST = 3  # and after this many hangs in one test, every case left is (the test fails already)


@pytest.fixture(scope="module")
def pool():
    p = Pool(n=2)
    yield p
    p.close()


def _run_checked(pool: Pool, cases: list[dict]) -> dict[str, int]:
    hangs: dict[str, int] = {}
    classes: dict[str, list] = {}  # class -> [count, shortest case, detail]
    counts = {"ok": 0, "error": 0, "skipped": 0}

    def skip(c: dict) -> bool:
        return hangs.get(c["gen"], 0) >= MAX_HANGS_PER_GEN or sum(hangs.values()) >= MAX_HANGS_PER_TEST

    def done(c: dict, r: dict) -> None:
        counts["skipped"] += r["outcome"] == "skipped"
        if r["outcome"] in counts:
            counts[r["outcome"]] += 1
        if r["outcome"] in ("hang", "memory"):
            hangs[c["gen"]] = hangs.get(c["gen"], 0) + 1
        for cls, detail in failures_of(c, r):
            entry = classes.setdefault(cls, [0, c, detail])
            entry[0] += 1
            if size_of(c) < size_of(entry[1]):
                entry[1], entry[2] = c, detail

    pool.run(cases, skip=skip, done=done)
    if classes:
        lines = [f"{len(classes)} kinds of failure in {len(cases)} cases"
                 + (f" ({counts['skipped']} skipped after hangs)" if counts["skipped"] else "") + ":"]
        for cls, (count, c, detail) in sorted(classes.items()):
            lines.append(f"\n[{count}x] {cls}\n    {show_case(c)}\n    {detail}")
        pytest.fail("\n".join(lines), pytrace=False)
    return counts


AT_LIMITS = {"conv-lines", "conv-repeat", "index-repeat", "size-limit", "many-lines", "long-line", "multiply-n",
             "multiply-input", "block-arg-repeat", "empty-index-repeats", "empty-index-repeats-3"}


def deep_cases(rng: random.Random) -> list[dict]:
    """Every kind of deep nesting once shallow and once deep; those that reach the limits of a spec, deep only,
    first (the longest cases first keep both workers busy to the end)."""
    first, then = [], []
    for make in DEEP:
        for n in (rng.choice([20, 50, 63, 64, 65, 100]), rng.choice([300, 500, 1000, 3000])):
            text, variant = make(n, rng)
            if variant not in AT_LIMITS:
                then.append(case(f"deep:{variant}", text))
            elif n >= 300:
                first.append(case(f"deep:{variant}", text))
    return first + then


@pytest.mark.parametrize("family", list(CI_CASES))
def test_generated_cases_give_results_or_located_errors(pool, family):
    rng = random.Random(f"archdsl-fuzz-{family}")
    if family == "deep":
        cases = deep_cases(rng)
    else:
        cases = [GENERATORS[family](rng) for _ in range(CI_CASES[family])]
    counts = _run_checked(pool, cases)
    if family in ("grammar", "mutate", "odd"):
        assert counts["error"] > 0  # the cases do reach the error paths
    if family in ("grammar", "mutate"):
        assert counts["ok"] > 0  # and some trace all the way through


def test_named_cases(pool):
    _run_checked(pool, corpus())


def test_the_checker_sees_a_misplaced_excerpt():
    text = "input 1x8x8\nrelu\nbogus\n"
    good = "<string>:3:1: error: unknown layer 'bogus'\n    3 | bogus\n      | ^^^^^"
    assert check_report(good, {"<string>": text}.get) == []
    wrong_line = "<string>:3:1: error: unknown layer 'bogus'\n    3 | relu\n      | ^^^^"
    assert [k for k, _ in check_report(wrong_line, {"<string>": text}.get)] == ["excerpt shows another line"]
    raw = "<string>:2:1: error: x\n    2 | re\x1blu\n      | ^"
    assert check_report(raw, {"<string>": "input 1x8x8\nre\x1blu\n"}.get)[0][0] == "raw U+001B in the report"
    escaped = "<string>:2:3: error: x\n    2 | re\\x1blu\n      |   ^^^^"
    assert check_report(escaped, {"<string>": "input 1x8x8\nre\x1blu\n"}.get) == []
    clipped = "<string>:2:5001: error: x\n    2 | …lu relu bogus relu re…\n      |          ^^^^^"
    assert check_report(clipped, {"<string>": "input 1x8x8\n" + "relu " * 1000 + "bogus " + "relu " * 1000}.get) == []
    caret_off = "<string>:2:6: error: x\n    2 | relu bogus\n      | ^^^^^"
    assert [k for k, _ in check_report(caret_off, {"<string>": "input 1x8x8\nrelu bogus\n"}.get)] == [
        "caret not under the column"]


if __name__ == "__main__":  # pragma: no cover
    worker_main()
