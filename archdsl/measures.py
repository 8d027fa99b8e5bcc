"""What a layer costs: mult-adds, kernel and output size from its module and shapes; FLOPs from torch.

Mult-adds follow torchinfo's convention, so that the two tools agree: a leaf module's weights
(and biases) each count once per output position, where a conv's positions are the batch times
the output's spatial size and any other layer's are the batch alone. Two cases where that
convention undercounts are counted as the arithmetic is done:

- a linear layer on a sequence, (B, L, D): each weight is used at every one of the B*L
  positions, not B (torchinfo counts B, so a ViT's mult-adds come out about 200x too low);
- self-attention: its input and output projections at every position, plus the two products
  of attention, Q K^T and the weighted sum of V, each B*L*L*D (torchinfo counts none of them:
  nn.MultiheadAttention uses its weights without calling the submodule that holds them).

FLOPs are torch's own count (`torch.utils.flop_counter`), which runs the network on meta
tensors: it costs a forward pass, so it is made only when asked for.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

import torch
from torch import nn


def mult_adds(module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """The mult-adds of one call of `module` (shapes batch first); 0 for a container (count its children)."""
    if isinstance(module, nn.MultiheadAttention):
        return _attention(module, input_shape)
    if any(True for _ in module.children()):
        return 0
    params = sum(_counted(name, p) for name, p in module.named_parameters())
    if not params:
        return 0
    batch = output_shape[0] if output_shape else 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return params * batch * math.prod(output_shape[2:])
    if isinstance(module, nn.Linear):
        return params * math.prod(output_shape[:-1])  # every position of a sequence, not just the batch
    return params * batch


def _counted(name: str, p: torch.Tensor) -> int:
    """torchinfo counts the parameters named weight or bias (and RNNs' weight_*/bias_*), nothing else."""
    leaf = name.rsplit(".", 1)[-1]
    return p.numel() if ("weight" in leaf or "bias" in leaf) else 0


def _attention(module: nn.MultiheadAttention, input_shape: tuple[int, ...]) -> int:
    """Projections in and out at every position, then Q K^T and the weighted sum of V."""
    if len(input_shape) != 3:
        return 0
    b, length, _ = input_shape  # (B, L, D), batch first as archdsl builds it
    projections = sum(p.numel() for p in module.parameters())  # in_proj and out_proj weights and biases
    return b * length * projections + 2 * b * length * length * module.embed_dim


def kernel(module: nn.Module) -> tuple[int, ...] | None:
    """A conv's or pool's kernel_size, as torchinfo shows it: (3, 3), or (3,) for a pool given one int."""
    k = getattr(module, "kernel_size", None)
    if isinstance(k, int):
        return (k,)
    if isinstance(k, Iterable) and all(isinstance(v, int) for v in k):
        return tuple(k)
    return None


def output_bytes(shape: tuple[int, ...], element_size: int = 4) -> int:
    """An activation's size in memory: float32 unless said otherwise."""
    return math.prod(shape) * element_size


def count_flops(net: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """FLOPs of one forward pass per module path ("" for the whole), by torch's flop counter, on meta.

    `net` must be on the meta device (archdsl's tracer builds there); nothing real is allocated.
    A module called twice counts both calls.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    flops: Counter[str] = Counter()
    started: dict[str, list[int]] = {}
    handles = []
    for name, module in net.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=name: started.setdefault(name, []).append(counter.get_total_flops())))
        handles.append(module.register_forward_hook(
            lambda m, args, out, name=name: flops.update({name: counter.get_total_flops() - started[name].pop()})))
    try:
        with counter, torch.no_grad():
            net(torch.empty(input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return dict(flops)
