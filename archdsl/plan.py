"""Syntax tree -> layer plan: params resolved, blocks and repeats unrolled, every value checked.

The plan is what the tracer builds from; nothing after this point looks at the syntax.
A block whose body reads its input's shape (`input.channels`) cannot be unrolled before
that shape is known: its step carries the expansion, and the tracer runs it with the
traced shape. Every other mistake is found here, all of them in one pass (up to
MAX_ERRORS), each at its place in the spec.
"""

from __future__ import annotations

import contextlib
import functools
from collections import ChainMap
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Mapping, Union

from . import layers as _layers  # noqa: F401  (registers the built-in layers)
from . import syntax as S
from .errors import ArchError, ErrorLog, Source, Span, clip, first_at, os_reason
from .limits import limit, raise_hint
from .registry import REGISTRY, REQUIRED, Arg, Bound, CallArg, LayerDef, bind, check_layer_args
from .values import INPUT, TAG_WORDS, Bool, Int, Real, Value, did_you_mean, evaluate, from_python

STDLIB = Path(__file__).resolve().parent / "stdlib"  # blocks any spec can `include` by name

DATASETS = ("fashion-mnist", "mnist", "cifar10", "synthetic")

# Names people bring from torch and other tools, and what archdsl calls the same thing.
KNOWN_AS = {
    "conv1d": "conv", "conv2d": "conv", "conv3d": "conv", "convolution": "conv",
    "dense": "linear", "fc": "linear", "fullyconnected": "linear",
    "maxpool1d": "maxpool", "maxpool2d": "maxpool", "maxpool3d": "maxpool",
    "avgpool1d": "avgpool", "avgpool2d": "avgpool", "avgpool3d": "avgpool",
    "adaptiveavgpool1d": "adaptiveavgpool", "adaptiveavgpool2d": "adaptiveavgpool",
    "adaptiveavgpool3d": "adaptiveavgpool", "globalavgpool": "adaptiveavgpool", "gap": "adaptiveavgpool",
    "batchnorm1d": "batchnorm", "batchnorm2d": "batchnorm", "batchnorm3d": "batchnorm", "bn": "batchnorm",
    "instancenorm1d": "instancenorm", "instancenorm2d": "instancenorm", "instancenorm3d": "instancenorm",
    "ln": "layernorm", "layernorm2d": "layernorm", "swish": "silu", "hswish": "hardswish",
    "hsigmoid": "hardsigmoid", "lrelu": "leakyrelu", "localresponsenorm": "lrn", "stochasticdepth": "droppath",
    "multiheadattention": "attention", "mha": "attention", "selfattention": "attention",
    "globalaveragepooling2d": "adaptiveavgpool", "globalavgpool2d": "adaptiveavgpool", "view": "reshape",
    "cat": "concat", "residualadd": "add",
}  # keys in lower case without underscores: adaptive_avg_pool2d and AdaptiveAvgPool2d are both found

# Constructs the language does not have, and what to write instead where there is a way.
LACKS = {
    **dict.fromkeys(("lstm", "gru", "rnn"), "recurrent layers (LSTM, GRU, RNN) are not in the language: a spec is "
                                            "a feed-forward network"),
    "embedding": "there is no embedding layer: a spec's input is a tensor of numbers, not token ids",
    **dict.fromkeys(("convtranspose", "convtranspose2d", "deconv", "upsample", "interpolate", "pixelshuffle"),
                    "there are no upsampling layers (transposed convolution, interpolation) yet"),
    **dict.fromkeys(("for", "while"), "there are no loops: repeat a path with [ ... ] * n, and name its index "
                                      "with [ ... ] * n as i"),
    **dict.fromkeys(("def", "function", "class"), "define a block with block NAME(args) { layers }"),
    **dict.fromkeys(("import", "from"), "bring in blocks with include NAME or include \"file.arch\""),
    **dict.fromkeys(("let", "var", "const", "set"), "declare a value with param NAME = value, or give a block "
                                                    "an argument with a default"),
    **dict.fromkeys(("dropout1d", "dropout2d", "dropout3d"), "there is no channel dropout yet: dropout drops single "
                                                             "values, not whole channels"),
    "sequential": "a spec is a sequence already: write the layers one after another; group them with a block",
}


class TooLarge(ArchError):
    """The spec passes a limit of archdsl.limits while unrolling: the expansion stops at once, not at the next item."""


TOO_DEEP = "the spec nests blocks, joins or expressions too deeply to unroll (Python's recursion limit)"

# Names a spec cannot give to a param, a block argument or a repeat index: they mean something already.
RESERVED = ("true", "false", INPUT)

# Statement words, which are names inside a block body; there they were meant as statements.
STATEMENTS = ("default", "param", "input", "include", "train", "block")


def check_dataset(name: str, span: Span | None = None) -> str:
    """The name of a known data set, or an ArchError with the closest one."""
    if name not in DATASETS:
        raise ArchError(f"unknown dataset '{name}'{did_you_mean(name, DATASETS)} (known: {', '.join(DATASETS)})", span)
    return name


@dataclass(frozen=True)
class Recipe:
    """The optional `train` statement: the training recipe the spec was written for."""

    dataset: str
    resize: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    epochs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# option name in the spec -> (Recipe field, kind)
RECIPE_OPTIONS = {
    "resize": ("resize", Int(1)),
    "batch": ("batch_size", Int(1)),
    "batch_size": ("batch_size", Int(1)),
    "lr": ("lr", Real(0.0, None, lo_open=True)),
    "epochs": ("epochs", Int(1)),
}


@dataclass(frozen=True, eq=False)
class PathStep:
    """One [ path ] given to a join (concat, add, mul, split)."""

    steps: tuple[Step, ...]
    span: Span


@dataclass(frozen=True, eq=False)
class LayerStep:
    layer: LayerDef
    args: SimpleNamespace
    span: Span  # the call as written
    paths: tuple[PathStep, ...] = ()  # for joins
    arg_spans: Mapping[str, Span] = field(default_factory=dict)  # where each argument's value is written


@dataclass(frozen=True, eq=False)
class BlockStep:
    name: str
    span: Span  # the call site
    steps: tuple[Step, ...] | None  # None for a block that reads its input's shape: see `body`
    expand: Callable[[tuple[int, ...]], tuple[Step, ...]] | None = None

    def body(self, shape: tuple[int, ...]) -> tuple[Step, ...]:
        """The block's steps for an input of `shape` (C x H x W, without the batch)."""
        return self.steps if self.steps is not None else self.expand(shape)


Step = Union[LayerStep, BlockStep]


@dataclass(frozen=True, eq=False)
class Plan:
    source: Source
    input_shape: tuple[int, ...] | None  # C x H x W, batch excluded
    params: dict[str, Value]
    recipe: Recipe | None
    steps: tuple[Step, ...]
    input_span: Span | None = None  # the `input` statement, when it gave input_shape (not --input)


@dataclass(frozen=True)
class Scope:
    """What an expression sees where it is written: names (params, block arguments, repeat
    indexes, the input shape) and the `default` arguments of each layer."""

    env: Mapping[str, Any]
    defaults: Mapping[str, Bound]

    def let(self, **names: Any) -> Scope:
        return Scope(ChainMap(names, self.env), self.defaults)  # not a copy: a repeat's index is set each step


def expand(spec: S.Spec, overrides: Mapping[str, Any] | None = None,
           input_shape: tuple[int, ...] | None = None) -> Plan:
    """Resolve a parsed spec into a plan. `overrides` set declared params; `input_shape` replaces `input`."""
    try:
        return _Expander(spec).run(dict(overrides or {}), input_shape)
    except RecursionError:
        raise ArchError(TOO_DEEP, where=spec.source.name) from None


def _display(path: Path) -> str:
    """A path as short as it can be said: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):  # outside it, or it was deleted
        return str(path)


def _size(steps: tuple[Step, ...]) -> int:
    """How many layers the steps unroll to (a block not yet expanded counts as one)."""
    total = 0
    for s in steps:
        if isinstance(s, BlockStep):
            total += _size(s.steps) if s.steps is not None else 1
        else:
            total += 1 + sum(_size(p.steps) for p in s.paths)
    return total


class _Expander:
    def __init__(self, spec: S.Spec) -> None:
        self.spec = spec
        self.blocks: dict[str, S.BlockDef] = {}
        self.foreign: set[str] = set()  # blocks from included files: they see no params of this spec
        self.seen: dict[str, Span] = {}  # every defined name, for duplicates
        self.included: set[Path] = set()
        self.included_chars = 0  # of all included files: each is bounded, and so are they together
        self.files: dict[str, Path] = {}  # source name -> its file, which quoted includes are relative to
        self.defaults_of: dict[str, dict[str, Bound]] = {}  # file name -> its top-level `default`s
        self.stack: list[str] = []  # blocks being expanded, to catch recursion
        self.calls: list[str] = []  # notes naming the block calls that led to the current item
        self.count = 0  # layers unrolled
        self.work = 0  # syntax nodes expanded, in layers or not (see `_weight`)
        self.weights: dict[int, int] = {}
        self.depth = 0  # blocks, joins, repeats and choices being expanded within one another
        self.reads_input: dict[str, bool] = {}
        self.acyclic: set[str] = set()  # blocks whose calls were followed and never lead back to them
        self.globals: dict[str, Value] = {}
        self.log = ErrorLog()

    def run(self, overrides: dict[str, Any], input_shape: tuple[int, ...] | None) -> Plan:
        src = self.spec.source
        inputs, trains, params, defaults, layer_stmts = [], [], [], [], []
        home = (Path(src.name).resolve(),) if src.name != "<string>" else ()
        self.files.update({src.name: home[0]} if home else {})
        for st in self.spec.statements:
            if isinstance(st, S.InputStmt):
                inputs.append(st)
            elif isinstance(st, S.TrainStmt):
                trains.append(st)
            elif isinstance(st, S.IncludeStmt):
                self._attempt(self._include, st, home)
            elif isinstance(st, S.ParamStmt):
                self._attempt(self._unique, st.name, st.name_span)
                params.append(st)
            elif isinstance(st, S.DefaultStmt):
                defaults.append(st)
            elif isinstance(st, S.BlockDef):
                self._attempt(self._define, st)
            else:
                layer_stmts.append(st)
        for kind, stmts in (("input", inputs), ("train", trains)):
            if len(stmts) > 1:
                self.log.record(ArchError(f"a spec has one '{kind}' statement; this is the second", stmts[1].span,
                                          notes=first_at(stmts[0].span, stmts[1].span, "the first is")))
        if input_shape is None:
            input_shape = inputs[0].dims if inputs else None
        if input_shape is not None and any(d < 1 for d in input_shape):
            span = inputs[0].span if inputs and input_shape == inputs[0].dims else None
            raise ArchError(f"input sizes must be positive, not {'x'.join(map(str, input_shape))}", span,
                            where=src.name)

        self.globals = self._params(params, overrides, input_shape)
        self.log.check()  # a param that failed would make every use of it a second error
        env = {**self.globals, INPUT: input_shape}
        scope = Scope(env, self._defaults(defaults, Scope(env, {})))
        self.defaults_of[src.name] = dict(scope.defaults)
        recipe = self._attempt(self._recipe, trains[0], scope.env) if trains else None
        steps = tuple(s for st in layer_stmts for s in self._items(st.items, scope))
        self.log.check()
        if not steps:
            raise ArchError("the spec has no layers", where=src.name)
        given = inputs[0].span if inputs and input_shape == inputs[0].dims else None
        return Plan(src, tuple(input_shape) if input_shape else None, self.globals, recipe, steps, given)

    def _attempt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one independent piece of the expansion; log its mistake, with the calls that led there, and go on."""
        try:
            return fn(*args)
        except TooLarge:
            raise
        except ArchError as e:
            for one in e.errors:
                one.notes += tuple(n for n in reversed(self.calls) if n not in one.notes)
            self.log.record(e)
            return None

    def _unique(self, name: str, span: Span) -> None:
        self._reserved(name, span)
        if name in self.seen:
            raise ArchError(f"'{name}' is defined twice", span, notes=first_at(self.seen[name], span, "first defined"))
        self.seen[name] = span

    def _define(self, block: S.BlockDef, foreign: bool = False) -> None:
        self._unique(block.name, block.name_span)
        if block.name in REGISTRY:
            raise ArchError(f"block '{block.name}' has the name of a built-in layer; choose another", block.name_span)
        for p in block.params:
            self._reserved(p.name, p.span)
        self.blocks[block.name] = block
        if foreign:
            self.foreign.add(block.name)

    # Includes ---------------------------------------------------------------

    def _include(self, st: S.IncludeStmt, chain: tuple[Path, ...]) -> None:
        """Bring in the blocks of another file; `chain` is the files including it, to catch cycles."""
        path = self._resolve(st)
        if path in chain:
            names = " -> ".join(p.name for p in chain[chain.index(path):] + (path,))
            raise ArchError(f"include cycle: {names}", st.span)
        if path in self.included:
            return  # included twice along different routes: once is enough
        self.included.add(path)
        from .parser import read_spec  # lark, needed by includes alone: `archdsl layers` lists layers without it

        name = f"stdlib/{path.name}" if path.parent == STDLIB else _display(path)
        text = read_spec(path, name, st.span)
        self.files[name] = path
        self.included_chars += len(text)
        if self.included_chars > limit("spec_chars"):
            raise TooLarge(f"the included files are longer than {limit('spec_chars'):,} characters together, the most "
                           f"archdsl reads{raise_hint('spec_chars')}", st.span)
        try:
            tree = _parse_included(name, text)
        except ArchError as e:  # its mistakes are in the included file: say which spec brought it in
            for one in e.errors:
                one.notes += (f"in {name}, included at {st.span.where}",)
            raise
        defaults = []
        for inner in tree.statements:
            if isinstance(inner, S.IncludeStmt):
                self._attempt(self._include, inner, chain + (path,))
            elif isinstance(inner, S.BlockDef):
                self._attempt(self._define, inner, True)
            elif isinstance(inner, S.DefaultStmt):
                defaults.append(inner)
            else:
                self.log.record(ArchError("an included file may only define blocks, set defaults and include other "
                                          "files", inner.span, notes=(f"included at {st.span.where}",)))
        self.defaults_of[name] = self._defaults(defaults, Scope({}, {}))

    def _resolve(self, st: S.IncludeStmt) -> Path:
        """`include NAME` is the standard library's NAME.arch; `include "file.arch"` is relative to the includer."""
        library = sorted(p.stem for p in STDLIB.glob("*.arch"))
        if not st.quoted:
            path = STDLIB / f"{st.target}.arch"
            if path.is_file():
                return path
            raise ArchError(f"no block library '{st.target}'{did_you_mean(st.target, library)} (the standard "
                            f"library has {', '.join(library)}; include your own file by its quoted path: "
                            f'include "blocks.arch")', st.span)
        if not st.target.endswith(".arch"):
            raise ArchError(f"include takes a spec file ending in .arch, not {clip(st.target, 60)!r}", st.span)
        source = st.span.source.name
        try:
            base = self.files[source].parent if source in self.files else Path.cwd()  # spec text: where it runs
            path = (base / st.target).resolve()
            found = path.exists()
        except (OSError, ValueError, RuntimeError) as e:  # a NUL in the name, a symlink loop, a deleted directory
            raise ArchError(f"cannot include {clip(st.target, 60)!r}: {os_reason(e)}", st.span) from None
        if not found:
            raise ArchError(f"cannot find {_display(path)} to include", st.span)
        return path

    # Params, defaults and the recipe ----------------------------------------

    def _params(self, stmts: list[S.ParamStmt], overrides: dict[str, Any],
                input_shape: tuple[int, ...] | None) -> dict[str, Value]:
        declared = [p.name for p in stmts]
        for name in overrides:
            if name not in declared:
                have = f"; it declares {', '.join(declared)}" if declared else "; it declares no params"
                raise ArchError(f"no param '{name}' in this spec{did_you_mean(name, declared)}{have}",
                                where=self.spec.source.name)
        env: dict[str, Value] = {}
        failed: set[str] = set()  # params whose value is a mistake: those computed from them are not reported again
        for p in stmts:  # in order: a default may use the params above it
            if p.name in overrides:
                env[p.name] = from_python(p.name, overrides[p.name])
            elif p.default is not None:
                if any(isinstance(n, S.Name) and n.id in failed for n in exprs(p.default)):
                    failed.add(p.name)
                    continue
                value = self._attempt(evaluate, p.default, {**env, INPUT: input_shape})
                if value is not None:
                    env[p.name] = value
                else:
                    failed.add(p.name)
            else:
                self.log.record(ArchError(f"param '{p.name}' has no default; set it with --set {p.name}=VALUE "
                                          f"(or {p.name}=VALUE in Python)", p.span))
        return env

    def _defaults(self, stmts: list[S.DefaultStmt], scope: Scope) -> dict[str, Bound]:
        """`default conv(bias=false)` statements -> layer name -> the arguments they give, evaluated and checked."""
        out: dict[str, Bound] = dict(scope.defaults)
        mine: dict[str, Bound] = {}  # given by these statements, to catch one argument given twice
        for st in stmts:
            bound = self._attempt(self._default, st, scope)
            if bound is None:
                continue
            for name, value in bound.values.items():
                earlier = mine.setdefault(st.layer, Bound())
                if name in earlier.values:
                    self.log.record(ArchError(f"default {st.layer}: {name} is given twice", bound.spans[name],
                                              notes=first_at(earlier.spans[name], bound.spans[name])))
                    continue
                earlier.values[name], earlier.spans[name] = value, bound.spans[name]
        for layer, bound in mine.items():
            base = out.get(layer, Bound())
            out[layer] = Bound({**base.values, **bound.values}, {**base.spans, **bound.spans})
        return out

    def _default(self, st: S.DefaultStmt, scope: Scope) -> Bound:
        ldef = REGISTRY.get(st.layer)
        if ldef is None:
            what = "a block's defaults are in its definition: block NAME(arg = value)" if st.layer in self.blocks \
                else f"unknown layer '{st.layer}'{did_you_mean(st.layer, REGISTRY)}"
            raise ArchError(f"default sets arguments of built-in layers; {what}", st.name_span)
        for a in st.args:
            if isinstance(a, (S.Positional, S.PathArg)):
                raise ArchError(f"a default gives arguments by name: default {st.layer}(name=value)", a.span)
        args = self._call_args(st.args)
        optional = [replace(a, default=None) if a.default is REQUIRED else a for a in ldef.args]  # any subset
        bound = bind(st.layer, optional, args, st.span, self._layer_value(scope), infers=ldef.infers)
        check_layer_args(ldef, bound)  # a bad value is an error here, at the default, not at each call
        return bound

    def _recipe(self, st: S.TrainStmt, env: Mapping[str, Value]) -> Recipe:
        check_dataset(st.dataset, st.dataset_span)
        fields: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        for opt in st.options:
            if opt.name not in RECIPE_OPTIONS:
                raise ArchError(f"unknown train option '{opt.name}'{did_you_mean(opt.name, RECIPE_OPTIONS)} "
                                f"(known: resize, batch, lr, epochs)", opt.span)
            key, kind = RECIPE_OPTIONS[opt.name]
            if key in fields:
                raise ArchError(f"train option '{opt.name}' is given twice", opt.span,
                                notes=first_at(spans[key], opt.span))
            fields[key] = kind.convert(evaluate(opt.value, env), opt.name, opt.value.span)
            spans[key] = opt.span
        return Recipe(st.dataset, **fields)

    # Layer paths ------------------------------------------------------------

    def _items(self, items: tuple[S.Item, ...], scope: Scope) -> list[Step]:
        out: list[Step] = []
        for item in items:
            steps = self._attempt(self._item, item, scope)
            out += steps or ()
        return out

    def _item(self, item: S.Item, scope: Scope) -> list[Step]:
        self.work += self._weight(item)
        if self.work > limit("expansions"):
            raise TooLarge(f"the spec takes more than {limit('expansions'):,} steps to unroll; check the repeat counts",
                           item.span)
        with self._deeper(item.span):
            return self._expand_item(item, scope)

    def _weight(self, item: S.Item) -> int:
        """The work of expanding an item once: its syntax nodes, without the paths it holds (they count as they
        are expanded). A long argument list evaluated in a repeat costs in proportion."""
        key = id(item)
        if key not in self.weights:
            self.weights[key] = sum(1 for _ in exprs(item, into_paths=False))
        return self.weights[key]

    @contextlib.contextmanager
    def _deeper(self, span: Span) -> Iterator[None]:
        """One level deeper into blocks, joins, repeats and choices: what follows recurses once per level."""
        if self.depth >= limit("depth"):
            raise TooLarge(f"blocks, joins and repeats nest more than {limit('depth')} levels deep here", span,
                           notes=tuple(reversed(self.calls[-3:])))
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def _expand_item(self, item: S.Item, scope: Scope) -> list[Step]:
        if isinstance(item, S.Group):
            return self._group(item, scope)
        if isinstance(item, S.Choice):
            taken = Bool().convert(evaluate(item.condition, scope.env), "an if condition", item.condition.span)
            chosen = item.then if taken else item.otherwise
            return self._items(chosen.items, scope) if chosen is not None else []
        if item.name in self.blocks:
            return [self._block(item, scope)]
        return [self._layer(item, scope)]

    def _group(self, group: S.Group, scope: Scope) -> list[Step]:
        n = 1 if group.count is None else Int(0).convert(evaluate(group.count, scope.env), "a repeat count",
                                                         group.count.span)
        if group.index is None:  # the same steps n times: expand once
            body = self._items(group.path.items, scope) if n else []
            self._grow(_size(tuple(body)) * (n - 1), group.span)
            return body * n
        self._reserved(group.index, group.span)
        if n > limit("layers"):  # even an empty body would take that many expansions
            raise TooLarge(f"a repeat of {n:,} is more than the {limit('layers'):,} layers a spec may unroll to"
                           f"{raise_hint('layers')}", group.count.span)
        out: list[Step] = []
        for i in range(n):  # the body sees its index: expand it once per index
            out += self._items(group.path.items, scope.let(**{group.index: Fraction(i)}))
        return out

    @staticmethod
    def _reserved(name: str, span: Span) -> None:
        if name in RESERVED:
            raise ArchError(f"'{name}' already means something; give it another name", span)

    def _grow(self, n: int, span: Span) -> None:
        self.count += n
        if self.count > limit("layers"):
            raise TooLarge(f"the spec unrolls to more than {limit('layers'):,} layers; check the repeat counts"
                           f"{raise_hint('layers')}", span)

    @staticmethod
    def _call_args(args: tuple[S.Arg, ...]) -> list[CallArg]:
        """A call's arguments for `bind`; [ path ] arguments are the caller's business."""
        out = []
        for a in args:
            if isinstance(a, S.Tag):
                value = tuple(map(Fraction, a.value)) if isinstance(a.value, tuple) else Fraction(a.value)
                out.append(CallArg("tag", a.letter, value, a.span))
            elif isinstance(a, S.Keyword):
                out.append(CallArg("keyword", a.name, a.value, a.span, a.value.span))
            elif isinstance(a, S.Positional):
                out.append(CallArg("positional", None, a.value, a.span, a.value.span))
        return out

    @staticmethod
    def _layer_value(scope: Scope) -> Callable[[Arg, CallArg], Value]:
        """How a layer's argument is evaluated: in the scope, with the bare words its kind accepts."""
        def value_of(arg: Arg, c: CallArg) -> Value:
            return c.expr if c.how == "tag" else evaluate(c.expr, scope.env, arg.words)
        return value_of

    def _layer(self, call: S.Call, scope: Scope) -> LayerStep:
        ldef = REGISTRY.get(call.name)
        if ldef is None:
            raise ArchError(self._unknown_layer(call.name), call.name_span)
        path_args = [a for a in call.args if isinstance(a, S.PathArg)]
        if path_args and not ldef.takes_paths:
            raise ArchError(f"{call.name} takes no [ ... ] path arguments", path_args[0].span)
        if ldef.takes_paths and len(path_args) < 2:
            raise ArchError(f"{call.name} joins two or more paths: {call.name}([ ... ], [ ... ])", call.span)
        bound = bind(call.name, ldef.args, self._call_args(call.args), call.span, self._layer_value(scope),
                     defaults=scope.defaults.get(call.name), infers=ldef.infers)
        args = check_layer_args(ldef, bound)
        paths = tuple(PathStep(tuple(self._items(a.path.items, scope)), a.span) for a in path_args)
        self._grow(1, call.span)
        return LayerStep(ldef, args, call.span, paths, bound.spans)

    def _unknown_layer(self, name: str) -> str:
        key = name.lower().replace("_", "")
        if name in STATEMENTS:
            return (f"'{name}' starts a statement, which stands at the top level of a spec; in a block body, "
                    f"default statements come first, before the layers")
        if key in KNOWN_AS or key in REGISTRY:
            return f"unknown layer '{name}'; archdsl calls it '{KNOWN_AS.get(key, key)}'"
        if key in LACKS:
            return f"unknown layer '{name}': {LACKS[key]}"
        hint = did_you_mean(name, list(REGISTRY) + list(self.blocks)) or " (`archdsl layers` lists them)"
        return f"unknown layer '{name}'{hint}"

    def _block(self, call: S.Call, scope: Scope) -> BlockStep:
        bdef = self.blocks[call.name]
        if call.name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(call.name):] + [call.name])
            raise ArchError(f"block '{call.name}' calls itself ({chain}); recursion is not allowed", call.span)
        for a in call.args:
            if isinstance(a, S.PathArg):
                raise ArchError(f"block {call.name} takes no [ ... ] path arguments", a.span)
        # A block's arguments named like a layer's (kernel, stride, ...) take that layer's tags: basic(64, k7, s2).
        params = {p.name for p in bdef.params}
        schema = [Arg(p.name, default=REQUIRED if p.default is None else p.default,
                      tag=next((t for t, word in TAG_WORDS.items() if word == p.name), None)) for p in bdef.params]
        for a in call.args:
            if isinstance(a, S.Tag) and TAG_WORDS.get(a.letter) not in params:
                raise ArchError(f"block {call.name} takes no tag {a.letter}N: it has no argument named "
                                f"{TAG_WORDS[a.letter]}; write one of its arguments by name", a.span)
        layer_names = tuple(REGISTRY)  # a bare layer name is a value a block can pass on: activation(act)
        bound = bind(call.name, schema, self._call_args(call.args), call.span,
                     lambda arg, c: c.expr if c.how == "tag" else evaluate(c.expr, scope.env, layer_names), what="block")
        note = f"in block {call.name}, called at {call.span.at()}: {call.span.oneline}"
        # Lexical scope: the block sees the params and defaults of the file that defines it, and its
        # own arguments; never its caller's.
        foreign = call.name in self.foreign
        base = Scope({} if foreign else self.globals, self.defaults_of.get(bdef.span.source.name, {}))
        calls = [*self.calls, note]

        def scope_of_body(shape: tuple[int, ...] | None) -> Scope:
            inner = base.let(**{INPUT: shape})
            for p in bdef.params:
                value = bound.values[p.name] if p.name in bound.values else evaluate(p.default, inner.env, layer_names)
                inner = inner.let(**{p.name: value})
            return Scope(inner.env, self._defaults(list(bdef.defaults), inner))

        def body(shape: tuple[int, ...] | None) -> tuple[Step, ...]:
            saved, self.calls = self.calls, calls
            self.stack.append(call.name)
            try:
                inner = self._attempt(scope_of_body, shape)
                return tuple(self._items(bdef.body.items, inner)) if inner is not None else ()
            finally:
                self.stack.pop()
                self.calls = saved

        if not self._reads_input(bdef):
            return BlockStep(call.name, call.span, body(None))

        depth = self.depth

        def later(shape: tuple[int, ...]) -> tuple[Step, ...]:
            # Its layers are bounded on their own, from the depth of its call (the tracer bounds the
            # layers of the whole model); its work counts toward the whole spec's.
            saved = self.count, self.depth
            self.count, self.depth = 0, depth  # the work is the whole spec's, shared by every expansion
            try:
                steps = body(shape)
            finally:
                self.count, self.depth = saved
            self.log.check()
            return steps

        self._check_recursion(bdef)
        return BlockStep(call.name, call.span, None, later)

    def _reads_input(self, bdef: S.BlockDef) -> bool:
        """Whether a block's argument defaults or body read `input.*` (the bodies of blocks it calls are theirs)."""
        if bdef.name not in self.reads_input:
            parts = (bdef.params, bdef.defaults, bdef.body)
            self.reads_input[bdef.name] = any(isinstance(n, S.InputRef) for part in parts for n in exprs(part))
        return self.reads_input[bdef.name]

    def _check_recursion(self, bdef: S.BlockDef, chain: tuple[str, ...] = ()) -> None:
        """A block expanded later must still not call itself: follow its calls now."""
        if bdef.name in self.acyclic:
            return
        chain = (*chain, bdef.name)
        for call in _calls(bdef.body.items):
            if call.name in chain:
                path = " -> ".join(chain[chain.index(call.name):] + (call.name,))
                raise ArchError(f"block '{call.name}' calls itself ({path}); recursion is not allowed", call.span)
            if call.name in self.blocks:
                self._check_recursion(self.blocks[call.name], chain)
        self.acyclic.add(bdef.name)


@functools.lru_cache(maxsize=64)
def _parse_included(name: str, text: str) -> S.Spec:
    """An included file's syntax tree, parsed once per text: the standard library is included again and again."""
    from .parser import parse_source

    return parse_source(Source(name, text))


def _calls(items: tuple[S.Item, ...]) -> Iterator[S.Call]:
    """Every call in a path, inside repeats, choices and join paths."""
    for item in items:
        if isinstance(item, S.Group):
            yield from _calls(item.path.items)
        elif isinstance(item, S.Choice):
            yield from _calls(item.then.items)
            if item.otherwise is not None:
                yield from _calls(item.otherwise.items)
        else:
            yield item
            for a in item.args:
                if isinstance(a, S.PathArg):
                    yield from _calls(a.path.items)


def exprs(node: Any, into_paths: bool = True) -> Iterator[Any]:
    """Every syntax node under `node` (dataclasses, tuples), depth first; without what nested paths hold
    when `into_paths` is false."""
    yield node
    if isinstance(node, tuple):
        for x in node:
            yield from exprs(x, into_paths)
    elif hasattr(node, "__dataclass_fields__") and not isinstance(node, (Span, Source)) \
            and (into_paths or not isinstance(node, S.Path)):
        for name in node.__dataclass_fields__:
            yield from exprs(getattr(node, name), into_paths)


