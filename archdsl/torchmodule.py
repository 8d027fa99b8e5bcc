"""Any nn.Module's shape table: load a module from a reference, copy it to meta, hook a forward.

A reference names a module as `python -m` would find it: `torchvision:resnet50` is
`torchvision.models.get_model("resnet50", weights=None)`; `package.module:name` imports
package.module (the current directory first on sys.path) and takes `name`: a module as it
is, or a class or function called with no arguments.

The forward runs on a copy whose parameters and buffers are meta tensors of the same shape,
dtype and requires_grad: the user's module is left as it was (weights, device, hooks, mode),
no weight is copied, and any input size costs nothing. The copy runs in eval mode, as archdsl
traces specs and torchinfo summarises: a training-only branch (GoogLeNet's aux heads) does
not run.

One row per module call, in call order, each before the rows of the calls made inside it:

- a module that is never called has no row; its parameters count in the row of the nearest
  container that is (the model's own row at worst), so the totals hold every parameter;
- a module called twice has two rows; its parameters count in the first (each parameter is
  counted once, shared ones too), its mult-adds in both;
- a functional op between modules has no row; the output shape of the container it is in
  shows its effect;
- input and output shapes are those of the first tensor passed in (positional, then by
  keyword) and of the first tensor in the output, looked for in tuples, lists and dict
  values in order: a (logits, aux) tuple shows the logits, {"out": .., "aux": ..} its "out".
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy

from .errors import ArchError, ShapeError, clip
from .limits import limit, raise_hint
from .measures import kernel, mult_adds, output_bytes
from .summary import Row, Summary
from .tracer import batched, one_line
from .values import did_you_mean, parse_shape, show_shape


def trace_module(model: nn.Module | str, input_shape: str | tuple[int, ...] | list[int] | None,
                 batch: int = 1) -> tuple[nn.Module, Summary]:
    """The meta copy of `model` and the rows of one forward of it (a module or a reference to one) on an input of
    `input_shape` (without the batch) at `batch`.

    Raises ShapeError when the forward fails, naming the innermost module that was running,
    with the rows traced up to it in `error.summary`.
    """
    label = model if isinstance(model, str) else type(model).__name__
    if input_shape is None:
        raise ArchError(f"{label} is a module, which says nothing of its input: pass --input CxHxW "
                        f"(input_shape= in Python), such as --input 3x224x224")
    shape = batched(parse_shape(input_shape), batch)
    module = load(model) if isinstance(model, str) else model
    if isinstance(module, torch.jit.ScriptModule):  # it takes no hooks
        raise ArchError(f"{label} is a TorchScript module, which archdsl cannot trace: pass the nn.Module it was "
                        f"scripted from")
    net = meta_copy(module)
    return net, _Recorder(net, label).run(torch.empty(shape, dtype=_input_dtype(net), device="meta"))


def _input_dtype(net: nn.Module) -> torch.dtype:
    """The model's floating dtype (a half-precision model gets a half input), else torch's default."""
    floats = (t.dtype for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())
    return next(floats, torch.get_default_dtype())


# Loading a reference -----------------------------------------------------------


def load(reference: str) -> nn.Module:
    """The module `package.module:name` or `torchvision:MODEL` refers to (see the module docstring)."""
    module_name, _, attr = reference.partition(":")
    if module_name == "torchvision":
        return _torchvision(attr)
    with _working_directory_importable():
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise ArchError(f"cannot import {module_name!r}: {_first_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - the user's code raised while being imported
            raise ArchError(f"cannot import {module_name!r}: it raised {_raised(e)}") from None
        where = module_name
        for part in attr.split("."):
            if not hasattr(found, part):
                names = [n for n in dir(found) if not n.startswith("_")]
                raise ArchError(f"{where} has no attribute {part!r}{did_you_mean(part, names)}")
            found, where = getattr(found, part), f"{where}.{part}"
        if isinstance(found, nn.Module):
            return found
        if not callable(found):
            raise ArchError(f"{reference} is a value of type {type(found).__name__}, not an nn.Module nor a class "
                            f"or function that makes one")
        try:
            made = found()
        except Exception as e:  # noqa: BLE001 - the user's factory: say what it raised
            raise ArchError(f"{reference} raised {_raised(e)}",
                            notes=_needs_arguments(found)) from None
    if not isinstance(made, nn.Module):
        raise ArchError(f"{reference} returned a value of type {type(made).__name__}, not an nn.Module")
    return made


@contextmanager
def _working_directory_importable() -> Iterator[None]:
    """The current directory first on sys.path while a reference is imported and called, as `python -m` has it."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def _needs_arguments(factory: Any) -> tuple[str, ...]:
    """A note for a factory that cannot be called with no arguments, which is how archdsl calls it."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return ()
    needed = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                                          p.KEYWORD_ONLY)]
    return (f"archdsl calls it with no arguments; it needs {', '.join(needed)}: give them defaults, or write a "
            f"function that makes the model",) if needed else ()


def _torchvision(name: str) -> nn.Module:
    """torchvision's model `name`, untrained, built on meta where it can be (no weights are made or downloaded)."""
    try:
        from torchvision import models  # only for a torchvision: reference
    except ImportError as e:
        raise ArchError(f"cannot import 'torchvision': {_first_line(e)}") from None
    names = models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else f"; torchvision.models.list_models() has {len(names)}"
        raise ArchError(f"torchvision has no model {name!r}{hint}")
    # Detection and segmentation models default to a pretrained backbone, which would be downloaded.
    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the default weight initialization will change": no weights are used here
        try:
            with torch.device("meta"):  # no real weights made, nor initialised
                return models.get_model(name, **kwargs)
        except (RuntimeError, NotImplementedError):  # RegNet reads values of tensors it makes: build it on the CPU
            return models.get_model(name, **kwargs)


# The meta copy ----------------------------------------------------------------


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose parameters, buffers and tensor attributes are meta tensors.

    The deepcopy memo maps each of them to its meta twin before the copy is made, so no
    tensor's data is ever copied: a model of any size costs only its Python objects.
    Parameters shared between modules stay shared; requires_grad and dtype are kept. A lazy
    module's (LazyLinear's) stay uninitialised, on meta: the forward gives them their sizes.
    """
    try:
        memo: dict[int, Any] = {}
        for m in module.modules():
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False),
                      *(v for v in vars(m).values() if isinstance(v, torch.Tensor))):
                if id(t) not in memo:
                    memo[id(t)] = _meta_twin(t)
        return copy.deepcopy(module, memo)
    except Exception as e:  # noqa: BLE001 - a module that refuses to be copied (it holds a lock, a file)
        raise ArchError(f"cannot copy {type(module).__name__} to trace it: {_raised(e)}") from None


def _meta_twin(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor that stands for `t`: a parameter for a parameter, uninitialised for uninitialised."""
    if is_lazy(t):
        kind = UninitializedParameter if isinstance(t, nn.Parameter) else UninitializedBuffer
        return kind(t.requires_grad, device="meta", dtype=t.dtype)
    twin = torch.empty_like(t, device="meta")
    return nn.Parameter(twin, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else twin


# Hooks -------------------------------------------------------------------------


@dataclass
class _Call:
    """A module call that has started and not yet returned: its row is rows[at], filled in when it returns."""

    at: int
    module: nn.Module
    depth: int
    input_shape: tuple[int, ...]


class _Recorder:
    """Forward hooks on every module of `net` that write one Row per call."""

    def __init__(self, net: nn.Module, label: str) -> None:
        self.net, self.label = net, label
        self.names = {id(m): name for name, m in net.named_modules()}
        self.rows: list[Row | None] = []
        self.running: list[_Call] = []  # the call stack, outermost first
        self.counted: set[int] = set()  # ids of parameters already in a row

    def run(self, x: torch.Tensor) -> Summary:
        self.net.eval()  # the copy's mode; the user's module keeps its own
        handles = []
        for m in self.net.modules():
            handles.append(m.register_forward_pre_hook(self.before, with_kwargs=True))
            handles.append(m.register_forward_hook(self.after, with_kwargs=True))
        try:
            with torch.no_grad():
                self.net(x)
        except ShapeError as e:  # the row limit, from a hook
            e.summary = self.so_far(x)
            raise
        except RecursionError:
            raise self.failure(x, "the forward recursed too deeply (RecursionError)") from None
        except Exception as e:  # noqa: BLE001 - whatever the forward raises is the user's model's doing
            raise self.failure(x, _reason(e), _meta_note(e)) from None
        finally:
            for h in handles:
                h.remove()
        return Summary(self.label, tuple(x.shape), tuple(r for r in self.rows if r is not None))

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(self.rows) >= limit("layers"):
            raise ShapeError(f"the forward called modules more than {limit('layers'):,} times; is it looping?"
                             f"{raise_hint('layers')}")
        self.running.append(_Call(len(self.rows), module, len(self.running), _shape(_first_tensor((args, kwargs)))))
        self.rows.append(None)  # placed before the rows of the calls inside it; filled in by `after`

    def after(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        while self.running and self.running[-1].module is not module:  # calls whose failure the forward caught
            self.running.pop()
        if not self.running:
            return
        call = self.running.pop()
        self.rows[call.at] = self.row(call, _first_tensor(output), *self.uncounted(module))

    def row(self, call: _Call, y: torch.Tensor | None, params: int = 0, trainable: int = 0) -> Row:
        """The row of `call`, whose output is `y` (None: it failed, or gave no tensor): its own counts, then
        those of the calls made inside it (the rows after its own, one level deeper)."""
        module, out = call.module, _shape(y)
        inner = [r for r in self.rows[call.at + 1:] if r is not None and r.depth == call.depth + 1]
        own_mult_adds = mult_adds(module, call.input_shape, out) if y is not None else 0
        return Row(call.at + 1, self.names[id(module)], call.depth, "block" if _has_children(module) else "layer",
                   self.layer_text(module), " ".join(one_line(module).split()), out,
                   params + sum(r.params for r in inner), None, call.input_shape,
                   trainable + sum(r.trainable for r in inner), own_mult_adds + sum(r.mult_adds for r in inner),
                   kernel(module), output_bytes(out, y.element_size()) if y is not None else 0)

    def uncounted(self, module: nn.Module) -> tuple[int, int]:
        """(parameters, trainable) of `module` and all it holds that no row has counted yet: those of the calls
        inside it are in their rows; these are its own and those of modules it holds but did not call."""
        new = [p for p in module.parameters() if id(p) not in self.counted]
        self.counted.update(id(p) for p in new)
        return sum(p.numel() for p in new), sum(p.numel() for p in new if p.requires_grad)

    def layer_text(self, module: nn.Module) -> str:
        """The layer column: the attribute name (the module column shows the class); the model's class for itself."""
        name = self.names[id(module)]
        return name.rsplit(".", 1)[-1] if name else type(module).__name__

    def failure(self, x: torch.Tensor, reason: str, notes: tuple[str, ...] = ()) -> ShapeError:
        """The forward failed: name the innermost module that was running and the shape that reached it."""
        call = self.running[-1] if self.running else None
        if call is None:
            where, shape = self.label, tuple(x.shape)
        else:
            name = self.names[id(call.module)]
            where = f"{name} ({type(call.module).__name__})" if name else type(call.module).__name__
            shape = call.input_shape
            reason = _channels(call.module, shape) or reason
        error = ShapeError(f"{where} gets {show_shape(shape)}: {reason}", notes=notes)
        error.summary = self.so_far(x)
        return error

    def so_far(self, x: torch.Tensor) -> Summary:
        """The rows traced before a failure. A call still running (the failing one and those around it) has its
        row, with the counts of what ran inside it and no output shape, so that the nesting reads as it did."""
        for call in reversed(self.running):
            self.rows[call.at] = self.row(call, None)
        return Summary(self.label, tuple(x.shape), tuple(r for r in self.rows if r is not None), complete=False)


def _has_children(module: nn.Module) -> bool:
    return any(True for _ in module.children())


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in `value`, looking into tuples, lists and dict values in order."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _shape(t: torch.Tensor | None) -> tuple[int, ...]:
    return tuple(t.shape) if t is not None else ()


# Messages ----------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return clip(text.splitlines()[0], 300) if text else type(e).__name__


def _raised(e: BaseException) -> str:
    """`ValueError: its message's first line`."""
    text = str(e).strip()
    return f"{type(e).__name__}: {_first_line(e)}" if text else type(e).__name__


def _reason(e: BaseException) -> str:
    """Why a forward failed: torch's RuntimeError in its own words, anything else with its type."""
    return _first_line(e) if type(e) is RuntimeError else _raised(e)


def _channels(module: nn.Module, shape: tuple[int, ...]) -> str | None:
    """A conv's channel mismatch in the words torch uses on the CPU: on meta it says only "Invalid channel
    dimensions", and this is the mistake most often made in a hand-written model."""
    if not isinstance(module, nn.modules.conv._ConvNd) or len(shape) < len(module.kernel_size) + 1:
        return None
    channels = shape[-len(module.kernel_size) - 1]  # (B, C, H, W) or unbatched (C, H, W)
    if channels == module.in_channels:
        return None
    return (f"expected input{list(shape)} to have {module.in_channels} channels, but got {channels} channels "
            f"instead")


def _meta_note(e: BaseException) -> tuple[str, ...]:
    if "meta" not in str(e):
        return ()
    return ("archdsl runs the forward on the meta device, where tensors have shapes but no values: a forward "
            "that reads a value (.item(), .tolist(), an `if` on a tensor) cannot be traced",)
