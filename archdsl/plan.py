"""Syntax tree -> layer plan: params resolved, blocks and repeats unrolled, every value checked.

The plan is what the tracer builds from; nothing after this point looks at the syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Union

from . import layers as _layers  # noqa: F401  (registers the built-in layers)
from . import syntax as S
from .errors import ArchError, Source, Span
from .parser import parse_source
from .registry import REGISTRY, REQUIRED, Arg, Given, LayerDef, bind, check_layer_args
from .values import Bool, Int, Real, Value, did_you_mean, evaluate, from_python

STDLIB = Path(__file__).resolve().parent / "stdlib"  # blocks any spec can `include` by name

MAX_LAYERS = 100_000  # a spec that unrolls to more is almost surely a typo in a repeat count

DATASETS = ("fashion-mnist", "mnist", "cifar10", "synthetic")


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
    """One [ path ] given to a join (concat, add)."""

    steps: tuple[Step, ...]
    span: Span


@dataclass(frozen=True, eq=False)
class LayerStep:
    layer: LayerDef
    args: SimpleNamespace
    span: Span  # the call as written
    paths: tuple[PathStep, ...] = ()  # for joins


@dataclass(frozen=True, eq=False)
class BlockStep:
    name: str
    steps: tuple[Step, ...]
    span: Span  # the call site


Step = Union[LayerStep, BlockStep]


@dataclass(frozen=True, eq=False)
class Plan:
    source: Source
    input_shape: tuple[int, ...] | None  # C x H x W, batch excluded
    params: dict[str, Value]
    recipe: Recipe | None
    steps: tuple[Step, ...]


def expand(spec: S.Spec, overrides: Mapping[str, Any] | None = None,
           input_shape: tuple[int, ...] | None = None) -> Plan:
    """Resolve a parsed spec into a plan. `overrides` set declared params; `input_shape` replaces `input`."""
    return _Expander(spec).run(dict(overrides or {}), input_shape)


def _display(path: Path) -> str:
    """A path as short as it can be said: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Expander:
    def __init__(self, spec: S.Spec) -> None:
        self.spec = spec
        self.blocks: dict[str, S.BlockDef] = {}
        self.foreign: set[str] = set()  # blocks from included files: they see no params of this spec
        self.seen: dict[str, Span] = {}  # every defined name, for duplicates
        self.included: set[Path] = set()
        self.stack: list[str] = []  # blocks being expanded, to catch recursion
        self.count = 0
        self.globals: dict[str, Value] = {}

    def run(self, overrides: dict[str, Any], input_shape: tuple[int, ...] | None) -> Plan:
        src = self.spec.source
        inputs, trains, params, layer_stmts = [], [], [], []
        home = (Path(src.name).resolve(),) if src.name != "<string>" else ()
        for st in self.spec.statements:
            if isinstance(st, S.InputStmt):
                inputs.append(st)
            elif isinstance(st, S.TrainStmt):
                trains.append(st)
            elif isinstance(st, S.IncludeStmt):
                self._include(st, home)
            elif isinstance(st, S.ParamStmt):
                self._unique(st.name, st.name_span)
                params.append(st)
            elif isinstance(st, S.BlockDef):
                self._define(st)
            else:
                layer_stmts.append(st)
        for kind, stmts in (("input", inputs), ("train", trains)):
            if len(stmts) > 1:
                first = stmts[0].span
                raise ArchError(f"a spec has one '{kind}' statement; this is the second", stmts[1].span,
                                notes=(f"the first is at {first.line}:{first.column}",))

        env = self.globals = self._params(params, overrides)
        recipe = self._recipe(trains[0], env) if trains else None
        steps = tuple(s for st in layer_stmts for s in self._items(st.items, env))
        if not steps:
            raise ArchError("the spec has no layers", where=src.name)
        if input_shape is None:
            input_shape = inputs[0].dims if inputs else None
        if input_shape is not None and any(d < 1 for d in input_shape):
            span = inputs[0].span if inputs and input_shape == inputs[0].dims else None
            raise ArchError(f"input sizes must be positive, not {'x'.join(map(str, input_shape))}", span,
                            where=src.name)
        return Plan(src, tuple(input_shape) if input_shape else None, env, recipe, steps)

    def _unique(self, name: str, span: Span) -> None:
        if name in self.seen:
            first = self.seen[name]
            at = f"{first.line}:{first.column}" if first.source is span.source else first.where
            raise ArchError(f"'{name}' is defined twice", span, notes=(f"first defined at {at}",))
        self.seen[name] = span

    def _define(self, block: S.BlockDef, foreign: bool = False) -> None:
        self._unique(block.name, block.name_span)
        if block.name in REGISTRY:
            raise ArchError(f"block '{block.name}' has the name of a built-in layer; choose another", block.name_span)
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
        name = f"stdlib/{path.name}" if path.parent == STDLIB else _display(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ArchError(f"cannot read {name}: {e}", st.span) from None
        for inner in parse_source(Source(name, text)).statements:
            if isinstance(inner, S.IncludeStmt):
                self._include(inner, chain + (path,))
            elif isinstance(inner, S.BlockDef):
                self._define(inner, foreign=True)
            else:
                raise ArchError("an included file may only define blocks and include other files", inner.span,
                                notes=(f"included at {st.span.where}",))

    @staticmethod
    def _resolve(st: S.IncludeStmt) -> Path:
        """`include NAME` is the standard library's NAME.arch; `include "file.arch"` is relative to the includer."""
        library = sorted(p.stem for p in STDLIB.glob("*.arch"))
        if not st.quoted:
            path = STDLIB / f"{st.target}.arch"
            if path.is_file():
                return path
            raise ArchError(f"no block library '{st.target}'{did_you_mean(st.target, library)} (the standard "
                            f"library has {', '.join(library)}; include your own file by its quoted path: "
                            f'include "blocks.arch")', st.span)
        source = st.span.source.name
        if source.startswith("stdlib/"):
            base = STDLIB
        elif source == "<string>":
            base = Path.cwd()
        else:
            base = Path(source).resolve().parent
        path = (base / st.target).resolve()
        if not path.is_file():
            raise ArchError(f"cannot find {_display(path)} to include", st.span)
        return path

    def _params(self, stmts: list[S.ParamStmt], overrides: dict[str, Any]) -> dict[str, Value]:
        declared = [p.name for p in stmts]
        for name in overrides:
            if name not in declared:
                have = f"; it declares {', '.join(declared)}" if declared else "; it declares no params"
                raise ArchError(f"no param '{name}' in this spec{did_you_mean(name, declared)}{have}",
                                where=self.spec.source.name)
        env: dict[str, Value] = {}
        for p in stmts:  # in order: a default may use the params above it
            if p.name in overrides:
                env[p.name] = from_python(p.name, overrides[p.name])
            elif p.default is not None:
                env[p.name] = evaluate(p.default, env)
            else:
                raise ArchError(f"param '{p.name}' has no default; set it with --set {p.name}=VALUE "
                                f"(or {p.name}=VALUE in Python)", p.span)
        return env

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
                first = spans[key]
                raise ArchError(f"train option '{opt.name}' is given twice", opt.span,
                                notes=(f"first given at {first.line}:{first.column}",))
            fields[key] = kind.convert(evaluate(opt.value, env), opt.name, opt.value.span)
            spans[key] = opt.span
        return Recipe(st.dataset, **fields)

    # Layer paths ------------------------------------------------------------

    def _items(self, items: tuple[S.Item, ...], env: Mapping[str, Value]) -> list[Step]:
        out: list[Step] = []
        for item in items:
            if isinstance(item, S.Group):
                body = self._items(item.path.items, env)
                n = 1 if item.count is None else Int(1).convert(evaluate(item.count, env), "a repeat count",
                                                                item.count.span)
                self._grow(len(body) * (n - 1), item.span)
                out += body * n
            elif isinstance(item, S.Choice):
                taken = Bool().convert(evaluate(item.condition, env), "an if condition", item.condition.span)
                chosen = item.then if taken else item.otherwise
                if chosen is not None:
                    out += self._items(chosen.items, env)
            elif item.name in self.blocks:
                out.append(self._block(item, env))
            else:
                out.append(self._layer(item, env))
        return out

    def _grow(self, n: int, span: Span) -> None:
        self.count += n
        if self.count > MAX_LAYERS:
            raise ArchError(f"the spec unrolls to more than {MAX_LAYERS:,} layers; check the repeat counts", span)

    def _given(self, call: S.Call, env: Mapping[str, Value]) -> list[Given]:
        """The call's arguments, evaluated; [ path ] arguments are the caller's business."""
        given = []
        for a in call.args:
            if isinstance(a, S.Tag):
                given.append(Given("tag", a.letter, a.value, a.span))
            elif isinstance(a, S.PathArg):
                continue
            else:
                key = a.name if isinstance(a, S.Keyword) else None
                value = evaluate(a.value, env)
                given.append(Given("keyword" if key else "positional", key, value, a.span, a.value.span))
        return given

    def _layer(self, call: S.Call, env: Mapping[str, Value]) -> LayerStep:
        ldef = REGISTRY.get(call.name)
        if ldef is None:
            names = list(REGISTRY) + list(self.blocks)
            hint = did_you_mean(call.name, names) or " (`archdsl layers` lists them)"
            raise ArchError(f"unknown layer '{call.name}'{hint}", call.name_span)
        path_args = [a for a in call.args if isinstance(a, S.PathArg)]
        if path_args and not ldef.takes_paths:
            raise ArchError(f"{call.name} takes no [ ... ] path arguments", path_args[0].span)
        if ldef.takes_paths and len(path_args) < 2:
            raise ArchError(f"{call.name} joins two or more paths: {call.name}([ ... ], [ ... ])", call.span)
        bound = bind(call.name, ldef.args, self._given(call, env), call.span)
        paths = tuple(PathStep(tuple(self._items(a.path.items, env)), a.span) for a in path_args)
        self._grow(1, call.span)
        return LayerStep(ldef, check_layer_args(ldef, bound), call.span, paths)

    def _block(self, call: S.Call, env: Mapping[str, Value]) -> BlockStep:
        bdef = self.blocks[call.name]
        if call.name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(call.name):] + [call.name])
            raise ArchError(f"block '{call.name}' calls itself ({chain}); recursion is not allowed", call.span)
        schema = [Arg(p.name, default=REQUIRED if p.default is None else p.default) for p in bdef.params]
        for a in call.args:
            if isinstance(a, S.PathArg):
                raise ArchError(f"block {call.name} takes no [ ... ] path arguments", a.span)
        given = self._given(call, env)
        for g in given:
            if g.how == "tag":
                raise ArchError(f"block {call.name} takes no tags; write {g.key}=... with one of its argument names",
                                g.span)
        bound = bind(call.name, schema, given, call.span, what="block")
        # Lexical scope: the block sees the spec's params and its own arguments, not the caller's.
        scope = {} if call.name in self.foreign else dict(self.globals)
        for p in bdef.params:
            scope[p.name] = bound.values[p.name] if p.name in bound.values else evaluate(p.default, scope)
        self.stack.append(call.name)
        try:
            steps = tuple(self._items(bdef.body.items, scope))
        except ArchError as e:
            # A mistake inside a block may depend on the arguments: say which call led there.
            e.notes += (f"in block {call.name}, called at {call.span.line}:{call.span.column}: "
                        f"{' '.join(call.span.text.split())}",)
            raise
        finally:
            self.stack.pop()
        return BlockStep(call.name, steps, call.span)
