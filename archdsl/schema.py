"""What config.json and a checkpoint must hold, and one checker that names the file and the field.

A run directory is read back by `--resume` and `archdsl eval`, perhaps after a crash, a full
disk or a hand edit. Every field is checked on read, so that damage is one message such as

    runs/lenet/T/config.json: error: runtime.amp_bf16: expected true or false, got 'yes' (a string)

and never a KeyError or a TypeError from deep inside the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import ArchError
from .recipe import RECIPE_KEYS, expected


class Mismatch(Exception):
    """A field that is not what the schema expects (raised inside `check`, turned into an ArchError by `validate`)."""

    def __init__(self, path: str, expected_text: str, got: Any, missing: bool = False) -> None:
        super().__init__(path)
        self.path, self.expected, self.got, self.missing = path, expected_text, got, missing


class Schema:
    """Checks a value; raises Mismatch naming the field's path and what was expected (`expected`, in words)."""

    expected: str

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Kind(Schema):
    """A value that passes `test`."""

    expected: str
    test: Callable[[Any], bool]

    def check(self, value: Any, path: str) -> None:
        if not self.test(value):
            raise Mismatch(path, self.expected, value)


@dataclass(frozen=True)
class Nullable(Schema):
    """None, or what `inner` accepts."""

    inner: Schema

    @property
    def expected(self) -> str:
        return f"{self.inner.expected} or null"

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.inner.check(value, path)


@dataclass(frozen=True)
class ListOf(Schema):
    item: Schema
    least: int = 0
    most: int | None = None

    @property
    def expected(self) -> str:
        size = f" of {self.least} to {self.most} items" if self.most is not None else ""
        return f"a list{size}, each {self.item.expected}"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, (list, tuple)) or len(value) < self.least or (
                self.most is not None and len(value) > self.most):
            raise Mismatch(path, self.expected, value)
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]")


@dataclass(frozen=True)
class MapOf(Schema):
    """An object whose keys are strings and whose values are all of one kind."""

    value: Schema

    @property
    def expected(self) -> str:
        return f"an object whose values are each {self.value.expected}"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise Mismatch(path, self.expected, value)
        for k, v in value.items():
            self.value.check(v, f"{path}.{k}" if path else k)


@dataclass(frozen=True)
class Obj(Schema):
    """An object with these fields; those in `optional` may be missing, others must not be. Unknown keys are kept."""

    fields: Mapping[str, Schema]
    optional: frozenset[str] = field(default_factory=frozenset)
    expected: str = "an object"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Mismatch(path, self.expected, value)
        for k, schema in self.fields.items():
            sub = f"{path}.{k}" if path else k
            if k not in value:
                if k in self.optional:
                    continue
                raise Mismatch(sub, schema.expected, None, missing=True)
            schema.check(value[k], sub)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


TEXT = Kind("a string", lambda v: isinstance(v, str))
FLAG = Kind("true or false", lambda v: isinstance(v, bool))
COUNT = Kind("a whole number >= 0", lambda v: _is_int(v) and v >= 0)
NUMBER = Kind("a number", _is_number)
TIME = Kind("a number >= 0", lambda v: _is_number(v) and (v >= 0 or math.isnan(v)))
FRACTION = Kind("a number from 0 to 1", lambda v: _is_number(v) and 0 <= v <= 1)
# An input shape without the batch: what `input` takes (C x H x W at most), each side in an int32.
SHAPE = ListOf(Kind("a whole number from 1 to 2,147,483,647", lambda v: _is_int(v) and 1 <= v < 2**31), 1, 4)


class Recipe(Schema):
    """The training recipe: every key, each in the range `archdsl.recipe` gives it."""

    expected = f"an object with {', '.join(RECIPE_KEYS)}"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Mismatch(path, self.expected, value)
        for k in RECIPE_KEYS:
            if k not in value:
                raise Mismatch(f"{path}.{k}", expected(k, object()) or "a value", None, missing=True)
            need = expected(k, value[k])
            if need is not None:
                raise Mismatch(f"{path}.{k}", need, value[k])


def _tensor(dtype: torch.dtype | None = None, numel: int | None = None) -> Kind:
    what = "a tensor" if dtype is None else f"a 1-D {str(dtype).removeprefix('torch.')} tensor"
    if numel is not None:
        what += f" of {numel:,} elements"
    return Kind(what, lambda v: isinstance(v, torch.Tensor) and (dtype is None or (
        v.dtype == dtype and v.dim() == 1)) and (numel is None or v.numel() == numel))


RNG_BYTES = torch.get_rng_state().numel()  # a CPU generator's state (the CUDA one is smaller)

EPOCH_RECORD = Obj({"epoch": Kind("a whole number >= 1", lambda v: _is_int(v) and v >= 1),
                    "train_loss": NUMBER, "train_acc": FRACTION, "test_acc": FRACTION, "examples": COUNT,
                    "train_time": TIME, "epoch_time": TIME, "step_examples_per_sec": NUMBER,
                    "wall_examples_per_sec": NUMBER},
                   optional=frozenset({"step_examples_per_sec", "wall_examples_per_sec"}),
                   expected="an object with one epoch's metrics")

CHECKPOINT = Obj({
    "format": Kind("1", lambda v: v == 1 and _is_int(v)),
    "epoch": COUNT,
    "model": MapOf(_tensor()),
    "optimizer": Obj({"state": Kind("an object", lambda v: isinstance(v, dict)),
                      "param_groups": ListOf(Kind("an object", lambda v: isinstance(v, dict)), 1)},
                     expected="an optimizer state_dict"),
    "rng": Obj({"torch": _tensor(torch.uint8, RNG_BYTES), "shuffle": _tensor(torch.uint8, RNG_BYTES),
                "cuda": _tensor(torch.uint8)}, optional=frozenset({"cuda"}),
               expected="an object with the torch and shuffle generators' states"),
    "history": ListOf(EPOCH_RECORD),
    "arch": TEXT,
    "spec": TEXT,
    "params": MapOf(TEXT),
    "recipe": Recipe(),
    "tuning": Nullable(MapOf(TEXT)),
    "input_shape": SHAPE,
}, optional=frozenset({"input_shape"}))  # input_shape: not in checkpoints written before it was added

CONFIG = Obj({
    "spec": Obj({"path": Nullable(TEXT), "name": TEXT, "params": MapOf(TEXT), "input_shape": SHAPE},
                optional=frozenset({"path", "name"}), expected="an object with params and input_shape"),
    "recipe": Recipe(),
    "sources": MapOf(TEXT),
    "runtime": Obj({"device_requested": TEXT, "device": TEXT, "device_name": Nullable(TEXT), "amp_bf16": FLAG,
                    "channels_last": FLAG, "compile": FLAG, "data_root": Nullable(TEXT),
                    "tuning": Nullable(MapOf(TEXT)), "threads": COUNT},
                   optional=frozenset({"device_requested", "device_name", "compile", "tuning", "threads"}),
                   expected="an object with device, amp_bf16, channels_last and data_root"),
    "data": Obj({"name": TEXT, "source": TEXT, "train": COUNT, "test": COUNT, "image_shape": SHAPE,
                 "classes": ListOf(TEXT)}, optional=frozenset({"name", "source", "train", "test", "image_shape",
                                                                "classes"})),
    "model": Obj({"params": COUNT, "arch_sha256": TEXT}, optional=frozenset({"params", "arch_sha256"})),
    "versions": MapOf(Nullable(TEXT)),
    "argv": ListOf(TEXT),
    "created": TEXT,
    "resumed": ListOf(Obj({"at_epoch": COUNT, "time": TEXT, "device": TEXT})),
}, optional=frozenset({"recipe", "sources", "data", "model", "versions", "argv", "created", "resumed"}),
    expected="a JSON object (a run's config)")
# config.json's recipe may be missing: the checkpoint holds the recipe too, and is what trained the weights.


def validate(value: Any, schema: Schema, file: Path, fix: str) -> None:
    """Check `value` (read from `file`) against `schema`; one ArchError naming the file and the field."""
    try:
        schema.check(value, "")
    except Mismatch as m:
        field_ = f"{m.path}: " if m.path else ""
        got = "missing" if m.missing else f"got {describe(m.got)}"
        raise ArchError(f"{field_}expected {m.expected}, {got}", where=str(file), notes=(fix,)) from None


def describe(v: Any) -> str:
    """A value as a message shows it: short, with its JSON kind."""
    if isinstance(v, torch.Tensor):
        return f"a {str(v.dtype).removeprefix('torch.')} tensor of shape {tuple(v.shape)}"
    kind = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)
    text = repr(v)
    if v is None or (isinstance(v, (list, tuple, dict)) and len(text) > 40):
        return kind
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({kind})"
