"""The peak memory of one training step, found by running the step on fake tensors.

"Will this train at batch 128 on my GPU?" `estimate_step` answers it without allocating: it runs
the trainer's step (zero_grad, forward under optional bf16 autocast, cross-entropy, backward, the
optimizer's step) on a copy of the model made of torch's fake tensors (`FakeTensorMode`: shapes,
dtypes and storage sizes, no data), and counts the bytes of the storages alive after each op
(`_Live`, a TorchDispatchMode: each op's new storages are counted when made and uncounted by a
weakref finalizer when they die, so views, in-place ops, autograd's saved tensors and
`zero_grad(set_to_none=True)` count as they do for the allocator). It is the second step that is
counted: the optimizer's state made by a first step is already there.

Why not torch's `torch.distributed._tools.mem_tracker.MemTracker`, which counts the same way: it
imports torch.distributed (4 s on a 2-core machine, where the whole estimate takes a tenth of that),
rounds only what is really on CUDA, and sees no memory that is not a tensor (below).

Memory that is not a tensor, measured against the allocator (tests/test_stepmemory.py,
tests/test_cuda.py) and modelled:
- on the CPU, a convolution's own buffers (`_cpu_scratch`): oneDNN's channel-blocked copies, or
  the unfolded input (im2col) where torch does without oneDNN;
- on CUDA, cuBLAS's workspaces (`_cublas_workspaces`), which stay from the first step on.
Not modelled: cuDNN's workspaces. On an H100 they were up to 151 MB (13% of AlexNet's float32 step
at batch 128; 16% of LeNet's bf16 step at batch 256), but torch skips the plans whose workspace
does not fit in the memory left and falls back to leaner ones, so they do not decide what fits.

`device="cuda"` works without a GPU, because the step always runs on fake *CPU* tensors: since
torch 2.11 the autograd engine asks the CUDA driver about the device of every fake CUDA tensor,
which fails where there is no GPU. CUDA is modelled where it differs from the CPU in bytes: the
caching allocator's 512-byte blocks, the optimizers' foreach kernels (torch's default for CUDA
weights; AdamW's keep a whole-model temporary), AdamW's step counts kept on the host, and the
workspaces above. What that leaves out: bf16 autocast follows the CPU's op lists (the same as
CUDA's for convolutions, linear layers, pooling, batch norm and cross-entropy; CUDA runs softmax
and layer_norm in float32, the CPU in bf16), and dropout keeps a float mask where CUDA keeps a byte.
"""

from __future__ import annotations

import copy
import math
import os
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .errors import ArchError
from .memory import show_bytes

CUDA_BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of this
CUBLAS_HOPPER = 32 * 2 ** 20  # torch's cuBLAS workspace per handle on sm_90 (CublasHandlePool.cpp)
CUBLAS_OTHER = 8 * 2 ** 20 + 128 * 2 ** 10  # and on other GPUs
CUBLASLT = 2 ** 20  # cuBLASLt's own workspace, for a matrix product with a bias (a linear layer's forward)
ONEDNN_BLOCK = 8  # channels: oneDNN's blocked layouts on the CPU (_cpu_scratch)
aten = torch.ops.aten
# Ops that run on cuBLAS on CUDA: each thread that runs one (the caller's, autograd's) gets a workspace.
MATMULS = frozenset({aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv, aten.dot,
                     aten.vdot})
MAX_BATCH = 2 ** 20  # largest_batch looks no further: a batch of a million fits only toy models


@dataclass(frozen=True)
class Optimizer:
    """An optimizer a user can name: how torch builds it, and which of its state stays on the CPU."""

    build: Callable[[list[nn.Parameter], bool | None], torch.optim.Optimizer]  # (trainable params, foreach)
    host_state: tuple[str, ...] = ()  # state entries torch keeps on the CPU when the weights are on CUDA


OPTIMIZERS: dict[str, Optimizer] = {
    # plain SGD, as the trainer runs it: no state
    "sgd": Optimizer(lambda params, foreach: torch.optim.SGD(params, lr=0.01, foreach=foreach)),
    # one momentum buffer per weight
    "momentum": Optimizer(lambda params, foreach: torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)),
    # two moment buffers per weight, and a one-element step count per parameter tensor, which torch
    # keeps on the CPU unless the optimizer is capturable or fused
    "adamw": Optimizer(lambda params, foreach: torch.optim.AdamW(params, lr=0.001, foreach=foreach), ("step",)),
}


@dataclass(frozen=True)
class StepMemory:
    """What one training step keeps alive, in bytes (CUDA's in 512-byte blocks)."""

    batch_size: int
    amp: bool
    optimizer: str
    device: str
    params: int  # weights and buffers (batch norm's running statistics)
    grads: int  # one gradient per trainable weight, after the backward pass
    optimizer_state: int
    batch: int  # the float32 input and the int64 targets
    activations: int  # what the forward pass leaves alive for the backward pass, the loss included
    workspaces: int  # cuBLAS's (CUDA only): kept from the first step on
    peak: int  # all of the above and the backward pass's buffers, at their highest together
    peak_in: str  # the phase that reaches the peak: forward, backward or optimizer step

    @property
    def standing(self) -> int:
        """What is alive before the step starts and after it ends: weights, optimizer state, batch, workspaces."""
        return self.params + self.optimizer_state + self.batch + self.workspaces

    def __str__(self) -> str:
        precision = "bf16 autocast" if self.amp else "float32"
        return (f"training step at batch {self.batch_size:,} ({precision}, {self.optimizer}, {self.device}): "
                f"peak {show_bytes(self.peak)} = weights {show_bytes(self.params)} + optimizer state "
                f"{show_bytes(self.optimizer_state)} + batch {show_bytes(self.batch)} + "
                + (f"cuBLAS workspaces {show_bytes(self.workspaces)} + " if self.workspaces else "")
                + f"{show_bytes(self.peak - self.standing)} at its height in the {self.peak_in} (the forward pass "
                f"keeps {show_bytes(self.activations)} for the backward, freed as its {show_bytes(self.grads)} of "
                f"gradients are made)")


Scratch = Callable[[Any, tuple, Any], int]  # (op, its arguments, its outputs) -> bytes it holds while it runs


class _Live(TorchDispatchMode):
    """The bytes of the storages alive, and their peak: a storage counts from the op that made it until it dies.

    `scratch` adds, to the peak, what an op holds for itself while it runs; `blas` collects the phases
    that ran a matrix product (MATMULS), and `biased` those that ran one with a bias (addmm).
    """

    def __init__(self, block: int, scratch: Scratch | None) -> None:
        super().__init__()
        self.block, self.scratch = block, scratch
        self.now = self.peak = 0
        self.phase = self.peak_in = "forward"
        self.blas: set[str] = set()
        self.biased: set[str] = set()
        self._alive: dict[int, weakref.finalize] = {}  # id of a storage -> what uncounts it

    def size(self, tensors: Iterable[Any]) -> int:
        """The bytes of the distinct storages under `tensors` (other values are skipped)."""
        storages = {id(s): s for s in _storages(tensors)}
        return sum(self._rounded(s.nbytes()) for s in storages.values())

    def count(self, tensors: Iterable[Any], scratch: int = 0) -> None:
        for s in _storages(tensors):
            key = id(s)
            if key not in self._alive:
                n = self._rounded(s.nbytes())
                self.now += n
                self._alive[key] = weakref.finalize(s, self._free, key, n)
        if self.now + scratch > self.peak:
            self.peak, self.peak_in = self.now + scratch, self.phase

    def forget(self) -> None:
        """Stop uncounting: the storages may outlive this count."""
        for f in self._alive.values():
            f.detach()
        self._alive.clear()

    def _free(self, key: int, n: int) -> None:
        self.now -= n
        del self._alive[key]

    def _rounded(self, n: int) -> int:
        return -(-n // self.block) * self.block

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in MATMULS:
            self.blas.add(self.phase)
            if func.overloadpacket is aten.addmm:
                self.biased.add(self.phase)
        self.count(tree_flatten(out)[0], self._rounded(self.scratch(func, args, out)) if self.scratch else 0)
        return out


def _storages(values: Iterable[Any]) -> Iterator[torch.UntypedStorage]:
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v.untyped_storage()


def estimate_step(model: nn.Module, input_shape: tuple[int, ...], *, amp: bool = False, optimizer: str = "sgd",
                  device: str = "cpu") -> StepMemory:
    """The peak bytes of one steady-state training step of `model` on a float32 batch of `input_shape`.

    `input_shape` is batch first, e.g. (128, 1, 224, 224); `amp` runs the forward pass under bf16
    autocast; `optimizer` is a key of OPTIMIZERS; `device` is "cpu" or "cuda" (no GPU needed). The
    model is not touched: the step runs on a fake copy of it, so no memory of its size is taken
    and a model built on the meta device (archdsl's tracer) works as well as a real one.
    """
    shape = _batch_shape(input_shape)
    opt_kind = _optimizer(optimizer)
    dev = _device(device)
    on_cuda = dev == "cuda"
    live = _Live(CUDA_BLOCK, None) if on_cuda else _Live(1, _cpu_scratch)
    with FakeTensorMode():
        net = _fake_copy(model).train()
        trainable = [p for p in net.parameters() if p.requires_grad]
        if not trainable:
            raise ArchError("the model has no trainable parameters (all have requires_grad=False): a training step "
                            "would change nothing")
        x = torch.empty(shape)  # (B, ...) float32
        y = torch.zeros(shape[0], dtype=torch.long)  # (B,) class indices
        opt = opt_kind.build(trainable, True)
        _first_step(opt, trainable)
        opt.param_groups[0]["foreach"] = on_cuda  # the second step as torch would run it: foreach on CUDA only
        state = [t for entries in opt.state.values() for key, t in entries.items()
                 if not (on_cuda and key in opt_kind.host_state)]
        params = live.size([*net.parameters(), *net.buffers()])
        optimizer_state = live.size(state)
        batch = live.size([x, y])
        live.count([*net.parameters(), *net.buffers(), *state, x, y])
        with live:
            out, loss = _forward(net, x, y, amp)
            activations = live.now - params - optimizer_state - batch
            live.phase = "backward"
            loss.backward()
            grads = live.size([p.grad for p in trainable])
            live.phase = "optimizer step"
            opt.step()
        del out, loss
        live.forget()
    workspaces = _cublas_workspaces(live.blas, live.biased) if on_cuda else 0
    return StepMemory(shape[0], amp, optimizer, dev, params, grads, optimizer_state, batch, activations, workspaces,
                      live.peak + workspaces, live.peak_in)


def _cpu_scratch(func: Any, args: tuple, out: Any) -> int:
    """What a CPU convolution holds for itself while it runs, beyond its inputs and outputs.

    Read off the allocator (torch's profiler): oneDNN, which runs float32 convolutions (and bf16
    ones on CPUs with bf16 instructions), works in blocks of channels: the forward pass makes its
    output in blocks before copying it out, and the backward pass copies the incoming gradient, and
    the input when the weight needs a gradient, into blocks. On an AVX2 CPU (torch 2.14) the blocks
    are 8 channels, to the byte; on an AVX-512 one (torch 2.11) oneDNN chose 16 for some tensors,
    8 for others and copied no 1-channel input, and blocks of 8 still gave LeNet's peaks within 10%.
    Without oneDNN, torch unfolds the input for the whole batch (im2col: one column per output pixel).
    """
    backward = func is aten.convolution_backward.default
    if not backward and func is not aten.convolution.default:
        return 0
    if backward:  # (grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, ..., output_mask)
        grad, x, w, transposed, mask = args[0], args[1], args[2], args[7], args[-1]
    else:  # (input, weight, bias, stride, padding, dilation, transposed, ...)
        x, w, transposed, grad = args[0], args[1], args[6], out
    if _onednn(x.dtype):
        blocked = _blocked(grad, ONEDNN_BLOCK)
        return blocked + _blocked(x, ONEDNN_BLOCK) * bool(mask[1]) if backward else blocked
    if transposed:
        return 0  # torch's own transposed convolutions: not measured
    pixels = math.prod(grad.shape[2:])  # of the output
    return x.shape[0] * math.prod(w.shape[1:]) * pixels * x.element_size()  # (B, C/groups * kh * kw, H' * W')


def _onednn(dtype: torch.dtype) -> bool:
    """Whether torch runs a CPU convolution of `dtype` on oneDNN (ConvParams::use_mkldnn, for batches of images)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def _blocked(t: torch.Tensor, block: int) -> int:
    """The bytes of `t` with its channels (dim 1) padded to a multiple of `block`."""
    channels = t.shape[1]
    return t.numel() // max(channels, 1) * -(-channels // block) * block * t.element_size()


def _cublas_workspaces(blas: set[str], biased: set[str]) -> int:
    """The cuBLAS workspaces a CUDA step keeps: one per thread that runs matrix products (`blas`: the
    forward pass runs on the caller's thread, the backward on autograd's), and cuBLASLt's for a product
    with a bias (`biased`).

    A handle's workspace is sized as torch sizes it: CUBLAS_WORKSPACE_CONFIG's ":KiB:count" pairs
    when set, else 32 MiB on Hopper (sm_90) and 8 MiB + 128 KiB on other GPUs. Without a GPU to
    ask, Hopper's, the larger, so that the estimate errs high. Measured on an H100 (torch 2.11):
    2 x 32 MiB + 1 MiB after a step of a linear layer with a bias, 2 x 32 MiB without the bias,
    nothing for a network without matrix products.
    """
    if not blas:
        return 0
    pairs = re.findall(r":(\d+):(\d+)", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    if pairs:
        handle = sum(int(kib) * 1024 * int(count) for kib, count in pairs)
    elif torch.cuda.is_available():
        handle = CUBLAS_HOPPER if torch.cuda.get_device_capability() == (9, 0) else CUBLAS_OTHER
    else:
        handle = CUBLAS_HOPPER
    return handle * len(blas) + CUBLASLT * len(biased)


def _batch_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ArchError(f"an input shape is batch first and made of whole numbers of at least 1, such as "
                        f"(128, 1, 224, 224); got {input_shape!r}")
    return shape


def _optimizer(name: str) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ArchError(f"unknown optimizer {name!r}; choose {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def _device(name: str) -> str:
    """"cpu" or "cuda" ("cuda:1" counts as any GPU would)."""
    text = str(name).strip().lower()
    if text == "cpu" or text == "cuda" or re.fullmatch(r"cuda:\d+", text):
        return text[:4] if text.startswith("cuda") else text
    raise ArchError(f"the memory of a step can be estimated for cpu or cuda; got device {name!r}")


def _fake_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are fake CPU tensors of the same shapes and dtypes.

    Must run inside a FakeTensorMode. The copy's tensors are put in deepcopy's memo first, so the
    real ones are never copied.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_strided(p.shape, p.stride(), dtype=p.dtype), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_strided(b.shape, b.stride(), dtype=b.dtype)
    return copy.deepcopy(model, memo)


def _first_step(opt: torch.optim.Optimizer, trainable: list[nn.Parameter]) -> None:
    """Make the optimizer's state as a first step would, without a forward pass; leave no gradients.

    Its foreach kernels make the same state as a loop over the weights, in a tenth of the ops.
    """
    for p in trainable:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _forward(net: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's forward pass and loss: cross-entropy for (B, classes) outputs, else the output's mean."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(x)
            if out.dim() == 2 and out.shape[0] == x.shape[0]:
                return out, F.cross_entropy(out, y)  # (B, classes), (B,) -> ()
            return out, out.float().mean()
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ArchError(f"the model cannot take a batch of shape {tuple(x.shape)}: {reason}") from None


def largest_batch(model: nn.Module, sample_shape: tuple[int, ...], budget: int, **options: Any) -> int:
    """The largest batch whose training step's peak (estimate_step) fits in `budget` bytes; 0 if batch 1 does not.

    `sample_shape` is one example's shape, without the batch; `options` are estimate_step's. The
    peak is close to affine in the batch (the largest of a few affine pieces), so each guess is
    where the line through the nearest estimates meets the budget, and the answer is checked on
    both sides: a handful of estimates, not a search over every batch. It stops at MAX_BATCH
    (2**20): a model that fits a batch that large gets MAX_BATCH.
    """
    peaks: dict[int, int] = {}

    def fits(b: int) -> bool:
        if b not in peaks:
            peaks[b] = estimate_step(model, (b, *sample_shape), **options).peak
        return peaks[b] <= budget

    first = estimate_step(model, (1, *sample_shape), **options)
    peaks[1] = first.peak
    if first.peak > budget:
        return 0
    lo, hi = 1, MAX_BATCH + 1  # lo fits; hi does not (MAX_BATCH + 1: as if it did not)
    slope = max(1.0, first.peak - first.standing - first.grads)  # bytes per example, as batch 1 sees them
    while hi - lo > 1:
        if hi <= MAX_BATCH:  # the line through the estimates on either side of the budget
            slope = max(1.0, (peaks[hi] - peaks[lo]) / (hi - lo))
        elif lo > 1:  # none is over it yet: the line from batch 1, the widest span, so rounding does not tilt it
            slope = max(1.0, (peaks[lo] - peaks[1]) / (lo - 1))
        span = hi - lo
        guess = min(max(lo + int((budget - peaks[lo]) / slope), lo + 1), hi - 1)
        if fits(guess):  # then the batch just past it, which should not
            lo = guess
            if guess + 1 < hi:
                lo, hi = (guess + 1, hi) if fits(guess + 1) else (lo, guess + 1)
        else:
            hi = guess
            if guess - 1 > lo:
                lo, hi = (guess - 1, hi) if fits(guess - 1) else (lo, guess - 1)
        if hi - lo > max(1, span // 2):  # the line was far off: halve too, so that the search ends
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
