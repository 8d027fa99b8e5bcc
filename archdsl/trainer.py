"""The shared trainer: d2l's `train_ch6`, with its numbers, fast by construction.

Semantics, so the seeds' results are reproduced: Xavier-uniform weights for every Linear and
Conv (biases keep torch's default, as d2l's `init_weights`), plain SGD, cross-entropy; per epoch
the mean training loss, the training accuracy, and the accuracy on the *whole* test set with
the model in eval mode (one seed's `evaluate_accuracy_gpu` returns after the first batch; not
here). Images are scaled to [0, 1] like ToTensor, not normalized, and resized like
`transforms.Resize(n)`. Batches keep d2l's order of work and its last, partial batch.

Speed, without changing those numbers beyond float rounding:
- the data set sits on the device as uint8; a batch is a slice of a permutation that lives on
  the device, gathered there: no DataLoader, no workers, no per-batch host-to-device copy;
- resizing happens on the device per batch (bilinear + antialias: PIL's Resize within 1/255);
- loss and accuracy add up in device tensors, read once per epoch: no host sync per batch;
- on the CPU, denormal floats are flushed to zero while training: sigmoid nets such as LeNet
  make many in their first epoch, and each costs ~100x a normal multiply (measured: LeNet's first
  epoch 18 s -> 4 s on a 2-core CPU, same accuracy); the setting is put back afterwards;
- on the CPU with glibc, freed memory is kept for reuse (see `devices.keep_freed_memory`): without it
  every step's activations are unmapped and page-faulted back in (measured: 15-19% system time,
  epochs 25-35% slower for LeNet);
- on the CPU, each conv and average-pooling layer runs the fastest of a few equivalent
  formulations, timed on the first batch (see archdsl/tuning.py; measured: LeNet's pooling
  3x faster as a matrix product, a conv's weight gradient 2-3x faster in channels_last);
  `--no-tune` keeps torch's kernels;
- on CUDA, channels_last memory format and bf16 autocast by default; optional torch.compile.
  (Both are off on the CPU by default. There channels_last depends on the network: on a 2-core
  CPU it measured about 10% faster per step for LeNet, AlexNet and ResNet-18, and 30% slower for
  LeNet with batch norm; `--channels-last` turns it on. bf16 measured slower.)

The library never prints: progress goes to a `Reporter` (see archdsl/progress.py for the
CLI's and the notebook printer).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from . import memory as M
from . import tuning as T
from .devices import flush_denormals, keep_freed_memory, place, precision, resolve_device, sync
from .errors import ArchError
from .history import EpochRecord, History
from .plan import Recipe
from .recipe import DEFAULTS, EXAMPLES, FLAGS, NAMES, RECIPE_KEYS, expected
from .runs import DAMAGED_CHECKPOINT, RunDir, RunWriteError


@dataclass(frozen=True)
class TrainConfig:
    """A resolved run: the recipe (what the numbers depend on) and how it runs."""

    # recipe
    dataset: str = "fashion-mnist"
    batch_size: int = 256
    lr: float = 0.1
    epochs: int = 10
    resize: int | None = None
    seed: int = 0
    limit: int | None = None  # use only the first N training examples
    init: str = "xavier"  # xavier: d2l's init_weights; keep: the weights the model has
    # runtime: free to differ on resume
    device: str = "auto"
    amp: bool | None = None  # bf16 autocast; None: on for CUDA
    channels_last: bool | None = None  # None: on for image inputs on CUDA
    compile: bool = False
    tune: bool | None = None  # time faster layer formulations on the first batch; None: on for the CPU
    data_root: str | None = None
    download: bool = True

    def recipe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RECIPE_KEYS}


def resolve_config(recipe: Recipe | None, given: Mapping[str, Any], where: str | None = None,
                   **runtime: Any) -> tuple[TrainConfig, dict]:
    """Flags beat the spec's `train` line, which beats DEFAULTS. Returns the config and where each value came from.

    `where`: the spec's file, named when one of its `train` values is out of range.
    """
    values, sources = dict(DEFAULTS), {k: "default" for k in DEFAULTS}
    if recipe is not None:
        for k, v in recipe.to_dict().items():
            values[k], sources[k] = v, "spec"
    for k, v in given.items():
        values[k], sources[k] = v, FLAGS[k]
    config = TrainConfig(**values, **runtime)
    check_config(config, sources, where)
    return config, sources


# How the spec's `train` line spells each key (where it differs).
SPEC_OPTIONS = {"batch_size": "batch"}


def check_config(c: TrainConfig, sources: Mapping[str, str] | None = None, where: str | None = None) -> None:
    """Refuse values out of range (archdsl/recipe.py), naming where each came from and a value that works."""
    D.check_dataset(c.dataset)  # with its did-you-mean
    for key in RECIPE_KEYS:
        value = getattr(c, key)
        need = expected(key, value)
        if need is None:
            continue
        flag = f"{FLAGS[key]} {EXAMPLES[key]}"
        if (sources or {}).get(key) == "spec":
            raise ArchError(f"{SPEC_OPTIONS.get(key, key)}={value!r} in the spec's train line: {NAMES[key]} must be "
                            f"{need}", where=where, notes=(f"change it in the spec, or override it with {flag}",))
        raise ArchError(f"{NAMES[key]} must be {need}, such as {flag}, not {value!r}")


# Inputs: uint8 on the device -> the float batch the model takes --------------

def resized_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """The (H, W) `transforms.Resize(size)` gives: the smaller edge becomes `size`, the aspect ratio stays."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def images_to_input(x: torch.Tensor, size: tuple[int, int] | None = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float (B, C, H', W') in [0, 1], on their own device.

    Equal to PIL's `transforms.Resize` then `ToTensor` within 1/255: the same bilinear
    filter with antialias (which matters when shrinking), without PIL's rounding to 8 bits.
    """
    x = x.float().div_(255)  # (B, C, H, W), like ToTensor
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def init_weights(m: nn.Module) -> None:
    """d2l's init_weights: Xavier-uniform weights for Linear and Conv layers; biases untouched."""
    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.xavier_uniform_(m.weight)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training. The run directory's last checkpoint holds the last finished epoch."""

    def __init__(self, epoch: int, completed: int, history: History, run_dir: Path | None,
                 spec_path: str | None) -> None:
        super().__init__(f"interrupted during epoch {epoch}")
        self.epoch = epoch  # the epoch that was running
        self.completed = completed  # epochs in the last checkpoint
        self.history = history
        self.run_dir = run_dir
        self.spec_path = spec_path  # the spec file, for the resume command; None for inline text or a module


@dataclass(frozen=True)
class RunInfo:
    """What a reporter is told when a run starts."""

    name: str  # the spec's path, or a name for inline text / a module
    device: str
    config: TrainConfig
    sources: dict[str, str]  # recipe key -> "spec", "default", "--lr", "saved run"
    dataset: str
    data_source: str
    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    n_params: int
    amp: bool
    channels_last: bool
    run_dir: Path | None
    start_epoch: int  # epochs already done (resume)
    tuning: str | None = None  # what archdsl.tuning picked, in words; None when it did not run
    notes: tuple[str, ...] = ()  # what resuming noticed and repaired


class Reporter:
    """Receives a run's progress; the trainer itself never prints. Override what you need.

    `step` is called after every training step with `live()`, which returns the epoch's
    running (loss, accuracy) so far, or None when they cannot be read without stalling the
    device. Call it sparingly (a few times a second): on CUDA it reads a snapshot copied
    asynchronously, never forcing a sync.
    """

    def start(self, info: RunInfo) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...

    def step(self, batch: int, batches: int, live: Callable[[], tuple[float, float] | None]) -> None: ...

    def epoch_end(self, record: EpochRecord, epochs: int, best: bool) -> None: ...

    def end(self, history: History) -> None: ...

    def close(self) -> None:
        """Called last, whether the run finished, failed or was interrupted."""


class _Live:
    """The running (loss, acc) for a progress bar, read without a host sync.

    On CUDA, a read copies the device sums into pinned memory asynchronously and records an
    event; a later read returns that copy once the event has passed (event.query() never
    blocks). On the CPU the sums are read directly; other devices show no live values.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(2, dtype=torch.float64, pin_memory=self.cuda)
        self.reset(None)

    def reset(self, sums: torch.Tensor | None) -> None:
        self.sums, self.count, self.event, self.pending, self.value = sums, 0, None, 0, None

    def __call__(self) -> tuple[float, float] | None:
        if self.sums is None or self.count == 0:
            return None
        if self.device.type == "cpu":
            loss, correct = self.sums.tolist()
            return loss / self.count, correct / self.count
        if not self.cuda:
            return None
        if self.event is not None and self.event.query():
            loss, correct = self.host.tolist()
            self.value, self.event = (loss / self.pending, correct / self.pending), None
        if self.event is None:
            self.host.copy_(self.sums, non_blocking=True)
            self.event, self.pending = torch.cuda.Event(), self.count
            self.event.record()
        return self.value


# The network to train -------------------------------------------------------

@dataclass
class _Network:
    """A spec (parsed, with its params) or a ready nn.Module, and what a run directory records of it."""

    name: str  # run directory name
    display: str  # for messages: the spec's path, "<spec text>", or the module's class
    text: str | None  # spec text; None for a module
    path: str | None  # spec file, for the resume command
    tree: Any = None
    module: nn.Module | None = None
    params: dict[str, Any] = field(default_factory=dict)
    plan: Any = None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.plan.input_shape if self.plan is not None else None

    @property
    def recipe(self) -> Recipe | None:
        return self.plan.recipe if self.plan is not None else None


def _network(model_or_spec: Any, params: dict[str, Any], input_shape: Any) -> _Network:
    if isinstance(model_or_spec, nn.Module):
        if params:
            raise ArchError(f"params ({', '.join(params)}) are for specs; this is a ready {type(model_or_spec).__name__}")
        name = type(model_or_spec).__name__.lower()
        return _Network(name, type(model_or_spec).__name__, None, None, module=model_or_spec)
    from .api import plan as make_plan
    from .parser import parse

    tree = parse(model_or_spec)
    src = tree.source
    is_file = src.name != "<string>"
    name = Path(src.name).stem if is_file else "spec"
    net = _Network(name or "spec", src.name if is_file else "<spec text>", src.text, src.name if is_file else None,
                   tree=tree, params=dict(params))
    net.plan = make_plan(tree, input_shape, **params)
    return net


def _build(net: _Network, input_shape: tuple[int, ...]) -> nn.Module:
    if net.module is not None:
        return net.module
    from .api import build

    return build(net.tree, input_shape, **net.params)


# The trainer ----------------------------------------------------------------

def train(model_or_spec: Any = None, *, dataset: str | None = None, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, resize: int | None = None,
          seed: int | None = None, limit: int | None = None, init: str | None = None,
          device: str = "auto", amp: bool | None = None, channels_last: bool | None = None, compile: bool = False,
          tune: bool | None = None,
          data_root: str | os.PathLike[str] | None = None, download: bool = True, input_shape: Any = None,
          params: Mapping[str, Any] | None = None, out: str | os.PathLike[str] | bool | None = None,
          resume: str | os.PathLike[str] | None = None, progress: Reporter | bool | None = True,
          **spec_params: Any) -> History:
    """Train a spec (path or text) or an nn.Module on an image data set, d2l's train_ch6 style.

        history = archdsl.train("specs/lenet.arch")                    # the spec's own recipe
        history = archdsl.train("specs/vgg.arch", ratio=4, epochs=2, limit=2000, device="cuda")
        history = archdsl.train(net, dataset="fashion-mnist", lr=0.9, epochs=10, batch_size=256)

    Recipe values not given come from the spec's `train` line, then DEFAULTS. Keyword
    arguments not listed here set the spec's params (or pass `params={...}`).
    `out`: None/False writes no run directory, True writes runs/<name>/<timestamp>/, a path
    writes there. `resume=RUN_DIR` continues a run from its last checkpoint; the spec may then
    be left out. `progress`: True prints one line per epoch and the seed's summary lines (for
    notebooks), False is silent, or pass a Reporter.

    Returns the History; its `.model` is the trained network. Raises ArchError for any bad
    value, missing data or mismatch, and `Interrupted` (a KeyboardInterrupt) on Ctrl-C, after
    making sure the last finished epoch is saved.
    """
    reporter = _reporter(progress)
    try:
        return _Trainer(reporter).run(
            model_or_spec, {k: v for k, v in dict(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
                                                  resize=resize, seed=seed, limit=limit, init=init).items()
                            if v is not None},
            dict(device=str(device), amp=amp, channels_last=channels_last, compile=bool(compile), tune=tune,
                 data_root=None if data_root is None else str(data_root), download=bool(download)),
            {**dict(params or {}), **spec_params}, input_shape, out, resume)
    finally:
        reporter.close()


def _reporter(progress: Reporter | bool | None) -> Reporter:
    if isinstance(progress, Reporter):
        return progress
    if progress:
        from .progress import PlainReporter

        return PlainReporter()
    return Reporter()


class _Trainer:
    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def run(self, model_or_spec: Any, given: dict[str, Any], runtime: dict[str, Any], params: dict[str, Any],
            input_shape: Any, out: Any, resume: Any) -> History:
        with contextlib.ExitStack() as held:  # the run directory's lock, let go of however the run ends
            return self._run(held, model_or_spec, given, runtime, params, input_shape, out, resume)

    def _run(self, held: contextlib.ExitStack, model_or_spec: Any, given: dict[str, Any], runtime: dict[str, Any],
             params: dict[str, Any], input_shape: Any, out: Any, resume: Any) -> History:
        notes: list[str] = []  # what reading a resumed run noticed, for the reporter
        run = saved = state = None
        if resume is not None:
            if out not in (None, True, False):
                raise ArchError("--out and --resume both name a run directory; use one")
            run = RunDir.open(resume)
            run.take_lock()
            held.callback(run.release)
            if run.remove_temporary():
                notes.append("removed the temporary files a killed run had left")
            saved = run.read_config()
            state = run.load_checkpoint("last")
            model_or_spec, params, input_shape = _resume_inputs(run, saved, state, model_or_spec, params,
                                                                input_shape, notes)
        elif model_or_spec is None:
            raise ArchError("train needs a spec or a model (or resume=RUN_DIR to continue a run)")
        net = _network(model_or_spec, params, input_shape)

        if saved is not None:
            config, sources = _resumed_config(saved, state, given, runtime, notes)
        else:
            config, sources = resolve_config(net.recipe, given, net.display if net.path else None, **runtime)
        dev = resolve_device(config.device)
        if dev.type == "cpu":
            keep_freed_memory()

        # Whether it fits, before anything is allocated; then the data, held on the device as uint8.
        synth_shape = None
        if config.dataset == "synthetic":
            spec_in = net.input_shape or (1, 28, 28)
            synth_shape = spec_in if config.resize is None or len(spec_in) != 3 else (spec_in[0], 28, 28)
        image_shape, n_train, n_test = D.planned(config.dataset, synth_shape)
        _, shape = _input_size(image_shape, config.dataset, config, net)
        use_amp, use_cl = precision(dev, config.amp, config.channels_last, shape)
        _check_memory(net, shape, image_shape, n_train, n_test, config, dev, use_amp)
        data = D.load(config.dataset, config.data_root, download=config.download, shape=synth_shape)
        data = data.limit(config.limit)
        size, shape = _input_size(data.image_shape, data.name, config, net)

        # The model, seeded, with d2l's init; the RNG is restored from the checkpoint on resume.
        torch.manual_seed(config.seed)
        model = _build(net, shape)
        if config.init == "xavier" and saved is None:
            model.apply(init_weights)
        place(model, dev, use_cl)
        data = data.to(dev)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        loop = _Loop(model, data, config, dev, size, use_cl, use_amp, self.reporter)
        loop.check_model(net.display)
        arch = repr(model)

        records: list[EpochRecord] = []
        start = 0
        ckpt = None
        tuned = _tuning(loop, config, dev, use_amp, use_cl, state)
        if state is not None:
            _check_same_network(state, arch, run, net.display)
            _load_state(loop, state, run.checkpoint("last"))
            records = [EpochRecord.from_dict(r) for r in state["history"]]
            start = state["epoch"]
            if start >= config.epochs and run.weights.exists():
                raise ArchError(f"this run has already trained {start} of {config.epochs} epochs; "
                                f"to train longer, pass --epochs {start + 5} (or more)", where=str(run.path))
            _resume_files(run, saved, records, config, dev, use_amp, use_cl, tuned, notes)
            ckpt = _Checkpointer(run, loop, arch, net, config, tuned, shape, saved=start)
        elif out:
            run = RunDir.create(None if out is True else out, net.name)
            held.callback(run.release)
            ckpt = _Checkpointer(run, loop, arch, net, config, tuned, shape)
            try:  # until its first checkpoint, a run that fails is removed: it would block the same command again
                if net.text is not None:
                    run.write_spec(net.text)
                run.write_config(_config_json(net, config, sources, data, shape, model, arch, dev, use_amp, use_cl,
                                              tuned))
                ckpt.save(0, records)  # Ctrl-C in the first epoch can resume from here
            except BaseException as e:
                run.discard()
                if isinstance(e, RunWriteError):
                    raise _with_notes(e, "nothing was kept: the run directory was removed; run the same command "
                                         "again once it can be written") from None
                raise

        info = RunInfo(net.display, str(dev), config, sources, data.name, data.source, len(data.train_y),
                       len(data.test_y), shape, sum(p.numel() for p in model.parameters()), use_amp, use_cl,
                       run.path if run is not None else None, start, tuned.describe() if tuned is not None else None,
                       tuple(notes))
        history = History(records, model, str(dev), info.run_dir, config)
        self.reporter.start(info)

        unsaved, running = False, start + 1  # running: the epoch a Ctrl-C interrupts
        curves = _Curves(run, config.epochs, Path(net.display).name)
        try:
            try:
                with T.applied(model, tuned):  # the tuned layers' forward while training; torch's again after
                    for epoch in range(start + 1, config.epochs + 1):
                        running = epoch
                        self.reporter.epoch_start(epoch, config.epochs, loop.batches)
                        with flush_denormals(dev):
                            record = loop.epoch(epoch)
                        best = not records or record.test_acc > max(r.test_acc for r in records)
                        records.append(record)
                        unsaved = True
                        if ckpt is not None:
                            ckpt.save(epoch, records, best=best)
                            run.append_metrics(record.to_dict())
                            curves.draw(records, last=epoch == config.epochs)
                        unsaved, running = False, epoch + 1  # saved: a Ctrl-C from here on stops the next one
                        self.reporter.epoch_end(record, config.epochs, best)
                if run is not None:
                    curves.draw(records, last=True)  # a run completed on resume has drawn nothing yet
                    run.save_weights(model.state_dict())
            except KeyboardInterrupt:
                if ckpt is not None and unsaved:  # the epoch finished but was not saved yet
                    ckpt.save(len(records), records, best=records[-1] is history.best)
                curves.draw(records, last=True)
                raise Interrupted(running, len(records), history, history.run_dir, net.path) from None
        except RunWriteError as e:  # while training, or while saving after a Ctrl-C
            raise _with_notes(e, f"{run.checkpoint('last')} holds the state after epoch {ckpt.saved}: nothing "
                                 f"finished is lost", f"once it can be written, resume with: archdsl train --resume "
                                 f"{run.path}") from None
        self.reporter.end(history)
        return history


def _with_notes(e: ArchError, *notes: str) -> ArchError:
    """The same error with more notes: what is saved, and how to go on."""
    return type(e)(e.message, e.span, where=None if e.span else e.where, notes=(*e.notes, *notes))


def _check_memory(net: _Network, shape: tuple[int, ...], image_shape: tuple[int, ...], n_train: int, n_test: int,
                  config: TrainConfig, dev: torch.device, amp: bool) -> None:
    """Refuse a run that cannot fit the device, before its data or model exist (see archdsl/memory.py)."""
    if net.module is not None:
        summary, params = None, sum(p.numel() for p in net.module.parameters())
    else:
        from .api import trace

        summary = trace(net.tree, shape, **net.params)
        params = summary.total_params
    batch = min(config.batch_size, n_train if config.limit is None else min(n_train, config.limit))
    need = M.need(summary, params, image_shape, shape, n_train + n_test, batch, amp=amp,
                  synthetic=n_train if config.dataset == "synthetic" else 0)
    M.check(need, dev, "training", net.display if net.path else None, module=net.module is not None)


def _input_size(image_shape: tuple[int, ...], dataset: str, config: TrainConfig,
                net: _Network) -> tuple[tuple[int, int] | None, tuple]:
    """The resize target and the model's input shape (C, H, W); refuse a spec that disagrees with the data."""
    shape = tuple(image_shape)
    size = None
    if config.resize is not None:
        if len(shape) != 3:
            raise ArchError(f"resize applies to images (C, H, W); {dataset} items have shape "
                            f"{'x'.join(map(str, shape))}")
        size = resized_hw(shape[1], shape[2], config.resize)
        shape = (shape[0], *size)
    spec_in = net.input_shape
    if spec_in is not None and tuple(spec_in) != tuple(shape):
        have = "x".join(map(str, spec_in))
        got = "x".join(map(str, shape))
        how = f"resized to {config.resize}" if config.resize else "as stored, not resized"
        if len(spec_in) == len(shape) and spec_in[0] != shape[0]:
            why = (f"the spec's input {have} has {spec_in[0]} channel{'s' * (spec_in[0] != 1)} but {dataset} "
                   f"images have {shape[0]} ({got})")
            fix = f"use a data set with {spec_in[0]}-channel images, or change the spec's input to {got}"
        else:
            why = f"the spec's input is {have} but {dataset} images {how} are {got}"
            fix = (f"pass --input {got} to train at that size" + (
                f", or --resize {spec_in[-1]}" if len(spec_in) == 3 and spec_in[1] == spec_in[2] else ""))
        raise ArchError(why, where=net.display if net.path else None, notes=(fix,))
    return size, shape


class _Loop:
    """One epoch of d2l's loop, on device-resident data, with the metrics kept on the device."""

    def __init__(self, model: nn.Module, data: D.ImageData, config: TrainConfig, device: torch.device,
                 size: tuple[int, int] | None, channels_last: bool, amp: bool, reporter: Reporter) -> None:
        self.model, self.data, self.config, self.device = model, data, config, device
        self.size, self.channels_last, self.reporter = size, channels_last, reporter
        self.step_model = torch.compile(model) if config.compile else model
        self.opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        self.loss = nn.CrossEntropyLoss()
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        # The data order comes from its own CPU generator, so it is the same on every device and
        # its state can be checkpointed; the permutation is then moved to the device once an epoch.
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.n = len(data.train_y)
        self.batches = math.ceil(self.n / config.batch_size)
        self.acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.live = _Live(device)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return images_to_input(x, self.size, self.channels_last) if x.dim() == 4 else x.float().div_(255)

    def check_model(self, display: str) -> None:
        """Run two examples through the model first, so a mismatch is one clear sentence, not a traceback."""
        x = self.inputs(self.data.test_x[:2])
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                out = self.model(x)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArchError(f"{display} cannot take {self.data.name} batches of shape {tuple(x.shape)}: {reason}") from None
        classes = len(self.data.classes)
        if out.dim() != 2 or out.shape[1] != classes:
            raise ArchError(f"{display} gives outputs of shape {tuple(out.shape)}, but {self.data.name} has "
                            f"{classes} classes, so it needs (batch, {classes})",
                            notes=(f"end the network with linear({classes}) (after a flatten)",))

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng(self, state: Mapping[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        self.shuffle.set_state(state["shuffle"].cpu())
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), self.device)

    def epoch(self, epoch: int) -> EpochRecord:
        cfg, data, dev = self.config, self.data, self.device
        t0 = time.perf_counter()
        self.model.train()
        perm = torch.randperm(self.n, generator=self.shuffle)  # (N,)
        if dev.type == "cuda":  # from pinned memory the copy is queued like a kernel: no wait for the device
            perm = perm.pin_memory().to(dev, non_blocking=True)
        else:
            perm = perm.to(dev)
        sums = torch.zeros(2, dtype=self.acc_dtype, device=dev)  # (loss sum, correct) over the epoch
        self.live.reset(sums)
        for i in range(self.batches):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]  # (B,)
            x, y = self.inputs(data.train_x[idx]), data.train_y[idx]  # (B, C, H, W) float, (B,)
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                out = self.step_model(x)  # (B, classes)
                loss = self.loss(out, y)
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                sums += torch.stack((loss.detach().to(sums.dtype) * y.numel(),
                                     (out.argmax(dim=1) == y).sum().to(sums.dtype)))
            self.live.count += y.numel()
            self.reporter.step(i + 1, self.batches, self.live)
        sync(dev)  # the one wait of the training phase, so its time is real
        train_time = time.perf_counter() - t0
        correct = self.correct(data.test_x, data.test_y)
        loss_sum, n_correct, test_correct = torch.cat((sums, correct.to(sums.dtype).view(1))).tolist()  # one read
        epoch_time = time.perf_counter() - t0
        self.live.reset(None)
        return EpochRecord(epoch, loss_sum / self.n, n_correct / self.n, test_correct / len(data.test_y), self.n,
                           train_time, epoch_time)

    @torch.no_grad()
    def correct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How many of the test images the model gets right, as a device scalar (no sync)."""
        self.model.eval()
        total = torch.zeros((), dtype=torch.int64, device=self.device)
        bs = self.config.batch_size
        for i in range(0, len(y), bs):
            with self.autocast():
                out = self.step_model(self.inputs(x[i:i + bs]))
            total += (out.argmax(dim=1) == y[i:i + bs]).sum()
        return total


def _tuning(loop: _Loop, config: TrainConfig, dev: torch.device, amp: bool, channels_last: bool,
            state: Mapping[str, Any] | None) -> T.Tuning | None:
    """The layer formulations for this run: a resumed run keeps its own, a new one times them on its first batch.

    CPU only, and not with torch.compile (which writes its own kernels), bf16 autocast or
    channels_last (the candidates are timed in fp32 NCHW); `tune=False` keeps torch's kernels.
    """
    if config.tune is False or dev.type != "cpu" or config.compile or amp or channels_last:
        return None
    if state is not None:  # keep the interrupted run's arithmetic (none for runs saved without tuning)
        return T.Tuning(dict(state["tuning"])) if state.get("tuning") else None
    with flush_denormals(dev):
        return T.tune(loop.model, loop.inputs(loop.data.train_x[:config.batch_size]))


class _Curves:
    """Redraws the run's curves.png: after an epoch when the last drawing is CURVES_EVERY seconds old, and at the end.

    A drawing costs about 0.1 s (0.5 s with the first matplotlib import): every epoch would add 4%
    to LeNet's 2-second CPU epochs, while a run with long epochs still gets one per epoch.
    """

    CURVES_EVERY = 30.0

    def __init__(self, run: RunDir | None, epochs: int, title: str) -> None:
        self.run, self.epochs, self.title = run, epochs, title
        self.drawn_at, self.drawn = time.monotonic(), 0

    def draw(self, records: list[EpochRecord], last: bool = False) -> None:
        if self.run is None or not records or len(records) == self.drawn:
            return
        if last or time.monotonic() - self.drawn_at >= self.CURVES_EVERY:
            self.run.write_curves([r.to_dict() for r in records], self.epochs, self.title)
            self.drawn_at, self.drawn = time.monotonic(), len(records)


class _Checkpointer:
    """Writes checkpoints/last.pt (every epoch) and best.pt: tensors and plain containers only.

    best.pt is written after last.pt, as a hard link to it: a kill between the two leaves best.pt
    one epoch behind, which a resume repairs (the best epoch is known from last.pt's history).
    """

    def __init__(self, run: RunDir, loop: _Loop, arch: str, net: _Network, config: TrainConfig,
                 tuned: T.Tuning | None, shape: tuple[int, ...], saved: int = 0) -> None:
        self.run, self.loop, self.arch, self.net, self.config, self.tuned = run, loop, arch, net, config, tuned
        self.shape = shape
        self.saved = saved  # the epoch last.pt holds

    def save(self, epoch: int, records: list[EpochRecord], best: bool = False) -> None:
        state = {
            "format": 1,
            "epoch": epoch,
            "model": self.loop.model.state_dict(),
            "optimizer": self.loop.opt.state_dict(),
            "rng": self.loop.rng_state(),
            "history": [r.to_dict() for r in records],
            "arch": self.arch,
            "spec": self.net.text or "",
            "params": {k: str(v) for k, v in self.net.params.items()},
            "recipe": self.config.recipe(),
            "tuning": self.tuned.to_dict() if self.tuned is not None else None,
            "input_shape": list(self.shape),
        }
        self.run.save_checkpoint(state, "last")
        self.saved = epoch
        if best:
            self.run.link_best()


def _check_same_network(state: Mapping[str, Any], arch: str, run: RunDir, display: str) -> None:
    """Refuse to load a checkpoint into a different network, saying where they first differ."""
    if state.get("arch") == arch:
        return
    old, new = str(state.get("arch", "")).splitlines(), arch.splitlines()
    diff = [line for line in difflib.unified_diff(old, new, lineterm="", n=0) if line[:1] in "+-"
            and not line.startswith(("---", "+++"))]
    first = "; ".join(d.strip() for d in diff[:2]) if diff else "the layers differ"
    raise ArchError(f"the checkpoint was trained from a different network than {display} "
                    f"(checkpoint vs now: {first})", where=str(run.path),
                    notes=(f"resume with the run's own spec: archdsl train --resume {run.path}",))


def _load_model(model: nn.Module, weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """load_state_dict, with each tensor checked first: a damaged one is named, not a 'size mismatch' traceback."""
    own = model.state_dict()
    missing, extra = [k for k in own if k not in weights], [k for k in weights if k not in own]
    if missing or extra:
        what = (f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}")
        raise ArchError(f"model: expected the network's {len(own)} tensors, {what}", where=str(path),
                        notes=(DAMAGED_CHECKPOINT,))
    for k, v in own.items():
        w = weights[k]
        if w.shape != v.shape or w.dtype != v.dtype:
            raise ArchError(f"model.{k}: expected a {str(v.dtype).removeprefix('torch.')} tensor of shape "
                            f"{tuple(v.shape)}, got {str(w.dtype).removeprefix('torch.')} {tuple(w.shape)}",
                            where=str(path), notes=(DAMAGED_CHECKPOINT,))
    model.load_state_dict(weights)


def _load_state(loop: _Loop, state: Mapping[str, Any], path: Path) -> None:
    """The model, the optimizer and the RNG from a checkpoint; a field that does not fit is an ArchError naming it."""
    _load_model(loop.model, state["model"], path)
    fresh = loop.opt.state_dict()["param_groups"]
    for i, (old, new) in enumerate(zip(state["optimizer"]["param_groups"], fresh)):
        for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"):
            if (k in old or k != "maximize") and old.get(k, "missing") != new[k]:  # maximize: not before torch 1.13
                got = f"got {old[k]!r}" if k in old else "missing"
                raise ArchError(f"optimizer.param_groups[{i}].{k}: expected {new[k]!r} (this run's plain SGD), {got}",
                                where=str(path), notes=(DAMAGED_CHECKPOINT,))
    try:
        loop.opt.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise ArchError(f"optimizer: does not fit the network's parameters ({' '.join(str(e).split())[:200]})",
                        where=str(path), notes=(DAMAGED_CHECKPOINT,)) from None
    try:
        loop.set_rng(state["rng"])
    except (RuntimeError, ValueError, TypeError) as e:
        raise ArchError(f"rng: not a generator's state ({' '.join(str(e).split())[:200]})", where=str(path),
                        notes=(DAMAGED_CHECKPOINT,)) from None


def _resume_files(run: RunDir, saved: dict, records: list[EpochRecord], config: TrainConfig, dev: torch.device,
                  amp: bool, channels_last: bool, tuned: T.Tuning | None, notes: list[str]) -> None:
    """Bring a resumed run's files in line with its last checkpoint, which is the truth after any crash.

    metrics.jsonl is rewritten from the checkpoint's history; best.pt, when a kill fell between the
    writes of last.pt and best.pt, is linked again; model.pt, which holds a finished run's weights,
    is removed when the run goes on (it is written again at the end); config.json gets the recipe.
    """
    done = len(records)
    best = max(records, key=lambda r: r.test_acc, default=None)  # the first of equals, as History.best
    if best is not None and best.epoch == done:
        run.link_best()  # last.pt is the best state: best.pt must be it, whether or not a kill came between
    run.write_metrics(r.to_dict() for r in records)
    if done >= config.epochs:
        notes.append(f"all {config.epochs} epochs were trained before: writing the final weights and curves the "
                     f"run had not written")
    else:
        run.remove_weights()
        saved.setdefault("resumed", []).append({"at_epoch": done, "time": _now(), "device": str(dev)})
        saved["runtime"] = _runtime(config, dev, amp, channels_last, tuned)
    saved["recipe"] = config.recipe()
    run.write_config(saved)


def _spec_source(run: RunDir, state: Mapping[str, Any], notes: list[str], restore: bool = False) -> Path | str | None:
    """The run's spec: spec.arch; where it is missing, the text the checkpoint holds (written back when
    `restore`: a resume, which holds the lock); None for a run that trained a Python module."""
    if run.spec.exists():
        if not run.spec.is_file():
            raise ArchError("expected the run's spec here, found a directory", where=str(run.spec),
                            notes=("move it away; a resume then writes back the spec text the checkpoint holds",))
        return run.spec
    if not state["spec"]:
        return None
    notes.append(f"spec.arch is missing: using the spec text the checkpoint holds{' (written back)' * restore}")
    if restore:
        run.write_spec(state["spec"])
        return run.spec
    return state["spec"]


def _resume_inputs(run: RunDir, saved: dict, state: Mapping[str, Any], model_or_spec: Any, params: dict,
                   input_shape: Any, notes: list[str]):
    """The spec, params and input shape a resumed run is rebuilt with: the saved ones unless given."""
    spec_info = saved["spec"]
    if model_or_spec is None:
        model_or_spec = _spec_source(run, state, notes, restore=True)
        if model_or_spec is None:
            raise ArchError("this run trained a Python nn.Module (it has no spec.arch); pass the same module "
                            "to archdsl.train(module, resume=...) to continue it", where=str(run.path))
    saved_params = dict(spec_info["params"])
    if params:
        from .values import from_python

        for k, v in params.items():
            if k in saved_params and from_python(k, v) != from_python(k, saved_params[k]):
                raise ArchError(f"--set {k}={v} differs from the run's {k}={saved_params[k]}; a resumed run keeps "
                                f"its params (start a new run to change them)", where=str(run.path))
        saved_params.update({k: str(v) for k, v in params.items()})
    if input_shape is None:
        input_shape = tuple(spec_info["input_shape"])
    return model_or_spec, saved_params, input_shape


def _saved_recipe(saved: Mapping[str, Any], state: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """The recipe of a run: its checkpoint's, which trained the weights, with config.json's epochs (a resume
    with --epochs writes them there first). A config.json without a recipe, or with another one, gets a note."""
    recipe = dict(state["recipe"])
    on_file = saved.get("recipe")
    if on_file is None:
        notes.append("config.json has no recipe; using the checkpoint's")
        return recipe
    differ = [f"{k} {on_file[k]!r} in config.json, {recipe[k]!r} in the checkpoint" for k in RECIPE_KEYS
              if k != "epochs" and on_file[k] != recipe[k]]
    if differ:
        notes.append(f"config.json's recipe differs from the checkpoint's ({'; '.join(differ)}); using the "
                     f"checkpoint's, which trained these weights")
    recipe["epochs"] = on_file["epochs"]
    return recipe


def _resumed_config(saved: dict, state: Mapping[str, Any], given: Mapping[str, Any], runtime: dict[str, Any],
                    notes: list[str]) -> tuple[TrainConfig, dict]:
    """A resumed run keeps its recipe: a flag may only repeat it, except --epochs, which may grow."""
    recipe = _saved_recipe(saved, state, notes)
    for k, v in given.items():
        if k == "epochs":
            continue
        if recipe[k] != v:
            raise ArchError(f"{FLAGS[k]} {v} differs from the run's {k} {recipe[k]}; a resumed run keeps its "
                            f"recipe (start a new run to change it; only --epochs may change)")
    values = dict(recipe)
    sources = {k: "saved run" for k in RECIPE_KEYS}
    if "epochs" in given:
        values["epochs"], sources["epochs"] = given["epochs"], "--epochs"
    if runtime.get("data_root") is None and saved["runtime"]["data_root"]:
        runtime = {**runtime, "data_root": saved["runtime"]["data_root"]}
    config = TrainConfig(**values, **runtime)
    check_config(config, sources)
    return config, sources


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _runtime(config: TrainConfig, dev: torch.device, amp: bool, channels_last: bool,
             tuned: T.Tuning | None) -> dict[str, Any]:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {"device_requested": config.device, "device": str(dev), "device_name": name, "amp_bf16": amp,
            "channels_last": channels_last, "compile": config.compile, "data_root": config.data_root,
            "tuning": tuned.to_dict() if tuned is not None else None,
            "threads": torch.get_num_threads()}


def _versions() -> dict[str, Any]:
    from importlib import metadata

    from . import __version__

    try:  # its installed version, without the 2-second import
        tv = metadata.version("torchvision")
    except metadata.PackageNotFoundError:  # pragma: no cover - torchvision is a dependency
        tv = None
    return {"archdsl": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": tv, "cuda": torch.version.cuda, "platform": platform.platform()}


def _config_json(net: _Network, config: TrainConfig, sources: dict, data: D.ImageData, shape: tuple,
                 model: nn.Module, arch: str, dev: torch.device, amp: bool, channels_last: bool,
                 tuned: T.Tuning | None) -> dict[str, Any]:
    return {
        "spec": {"path": net.path, "name": net.display, "params": {k: str(v) for k, v in net.params.items()},
                 "input_shape": list(shape)},
        "recipe": config.recipe(),
        "sources": sources,
        "runtime": _runtime(config, dev, amp, channels_last, tuned),
        "data": {"name": data.name, "source": data.source, "train": len(data.train_y), "test": len(data.test_y),
                 "image_shape": list(data.image_shape), "classes": list(data.classes)},
        "model": {"params": sum(p.numel() for p in model.parameters()),
                  "arch_sha256": hashlib.sha256(arch.encode()).hexdigest()},
        "versions": _versions(),
        "argv": list(sys.argv),
        "created": _now(),
    }


# Evaluating a finished run -------------------------------------------------

@dataclass(frozen=True)
class EvalResult:
    test_acc: float
    examples: int
    epoch: int  # the checkpoint's epoch
    epochs: int  # the run's planned epochs
    recorded_test_acc: float | None  # what training measured at that epoch
    checkpoint: Path
    device: str
    dataset: str
    notes: tuple[str, ...] = ()  # what reading the run noticed (a recipe taken from the checkpoint, ...)


def evaluate_run(run_dir: str | os.PathLike[str], which: str = "best", *, device: str = "auto",
                 data_root: str | os.PathLike[str] | None = None, download: bool = True,
                 batch_size: int | None = None) -> EvalResult:
    """Test accuracy of a run's checkpoint (best by default) on the whole test set."""
    from .api import build, trace

    if which not in ("best", "last"):
        raise ArchError(f"checkpoint must be best or last, not {which!r}")
    if batch_size is not None and expected("batch_size", batch_size) is not None:
        raise ArchError(f"batch size must be {expected('batch_size', batch_size)}, such as --batch-size 256, "
                        f"not {batch_size!r}")
    run = RunDir.open(run_dir)
    saved = run.read_config()
    dev = resolve_device(device)
    notes: list[str] = []
    state, path = _checkpoint_to_measure(run, which, notes)
    spec = _spec_source(run, state, notes)
    if spec is None:
        raise ArchError("this run trained a Python nn.Module (it has no spec.arch); evaluate it in Python",
                        where=str(run.path))
    display = str(spec) if isinstance(spec, Path) else "<spec text>"
    recipe = _saved_recipe(saved, state, notes)
    shape = tuple(saved["spec"]["input_shape"])
    params = saved["spec"]["params"]
    root = data_root if data_root is not None else saved["runtime"]["data_root"]
    synth = shape if recipe["dataset"] == "synthetic" else None
    if synth is not None and recipe["resize"] and len(synth) == 3:
        synth = (synth[0], 28, 28)
    config = TrainConfig(**{k: recipe[k] for k in RECIPE_KEYS}, device=device)
    if batch_size is not None:
        config = replace(config, batch_size=batch_size)
    net = _Network("", display, None, None)
    image_shape, n_train, n_test = D.planned(recipe["dataset"], synth)
    summary = trace(spec, shape, **params)
    trained = saved["runtime"]
    same_kind = trained["device"].split(":")[0] == dev.type
    if same_kind:  # measure as training did
        use_amp, use_cl = precision(dev, trained["amp_bf16"], trained["channels_last"], shape)
    else:
        use_amp, use_cl = precision(dev, None, None, shape)
    need = M.need(summary, summary.total_params, image_shape, shape, n_train + n_test,
                  min(config.batch_size, n_test), amp=use_amp, training=False,
                  synthetic=n_train if recipe["dataset"] == "synthetic" else 0)
    M.check(need, dev, "evaluating", display if isinstance(spec, Path) else None)
    model = build(spec, shape, **params)
    _check_same_network(state, repr(model), run, display)
    _load_model(model, state["model"], path)
    data = D.load(recipe["dataset"], root, download=download, shape=synth)
    size, shape = _input_size(data.image_shape, data.name, config, net)
    place(model, dev, use_cl)
    data = data.to(dev)
    loop = _Loop(model, data, config, dev, size, use_cl, use_amp, Reporter())
    with flush_denormals(dev):
        acc = loop.correct(data.test_x, data.test_y).item() / len(data.test_y)
    epoch = state["epoch"]
    rec = next((r["test_acc"] for r in state["history"] if r["epoch"] == epoch), None)
    return EvalResult(acc, len(data.test_y), epoch, recipe["epochs"], rec, path, str(dev), data.name, tuple(notes))


def _checkpoint_to_measure(run: RunDir, which: str, notes: list[str]) -> tuple[dict[str, Any], Path]:
    """The checkpoint `which` names, except that a best.pt left behind by a kill between the writes of last.pt
    and best.pt is passed over for last.pt, which then holds the best epoch (with a note saying so)."""
    if which == "last":
        return run.load_checkpoint("last"), run.checkpoint("last")
    try:
        last = run.load_checkpoint("last")
    except ArchError as e:  # best.pt was asked for: a damaged last.pt only leaves nothing to compare it with
        notes.append(f"{e}; measuring best.pt without it")
        last = None
    best_path = run.checkpoint("best")
    best = run.load_checkpoint("best") if last is None or best_path.exists() else None
    if last is not None and last["history"]:
        top = max(last["history"], key=lambda r: r["test_acc"])["epoch"]  # the first of equals, as training marks it
        if top == last["epoch"] and (best is None or best["epoch"] < top):
            notes.append(f"best.pt does not hold the best epoch, {top}, which last.pt holds (a kill came between "
                         f"their writes): measuring last.pt; resuming the run repairs best.pt")
            return last, run.checkpoint("last")
    if best is None:
        return run.load_checkpoint("best"), best_path  # the message for a run with no best epoch yet
    return best, best_path
