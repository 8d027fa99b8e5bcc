"""Is a spec the same network as a reference model? Test helpers, no tests.

Two models are the same network when they have the same parameters and compute the
same function of them. `assert_same_network` checks that: it copies the reference's
parameters and buffers into the spec's model and compares the outputs.

The copy pairs tensors by the order in which a forward pass first uses them, not by
`state_dict` order: a model may register a tensor long before (or after) the layers that
run around it (ViT's class_token, ConvNeXt's layer_scale), while a spec lists layers in
the order they run. Pairing by use makes the copy independent of registration order, and
a spec whose layers run in another order than the reference's shows up as a shape
mismatch or as different outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a call's arguments, looking inside lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by state_dict key, in registration order."""
    return dict(chain(model.named_parameters(), model.named_buffers()))


class _FirstUse(TorchFunctionMode):
    """Records the keys of a model's tensors in the order torch functions first receive them.

    Every torch function and tensor method passes through `__torch_function__` while the
    mode is active, so a parameter is seen whether a layer hands it to `F.conv2d`, to
    `torch.cat` in a list, or calls a method on it (`class_token.expand(...)`).
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._keys = {id(t): (key, t) for key, t in tensors.items()}
        self.order: dict[str, None] = {}  # an ordered set

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for t in _tensors((args, kwargs)):
            key, tensor = self._keys.get(id(t), (None, None))
            if tensor is t:
                self.order.setdefault(key)
        return func(*args, **kwargs)


def use_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The state_dict keys of the tensors a forward pass on x uses, in order of first use.

    Runs in eval mode under no_grad (so batch norm uses its running statistics), then
    puts the model back in the mode it was in.
    """
    training = model.training
    recorder = _FirstUse(_named_tensors(model))
    try:
        model.eval()
        with torch.no_grad(), recorder:
            model(x)
    finally:
        model.train(training)
    return list(recorder.order)


def copy_by_use(src: nn.Module, dst: nn.Module, x: torch.Tensor) -> None:
    """Copy every parameter and buffer of src into dst, paired by order of first use on x.

    Both models must use the same number of tensors, paired tensors must have the same
    shape, and every parameter of either model must be used: a parameter that never runs
    means the spec (or the reference) is not the network it claims to be. Buffers that
    eval mode does not use (batch norm's `num_batches_tracked`) are paired among the
    leftovers of each side in state_dict order, and must match in number and shape;
    when neither side has any, there is nothing more to copy.
    """
    src_tensors, dst_tensors = _named_tensors(src), _named_tensors(dst)
    src_used, dst_used = use_order(src, x), use_order(dst, x)
    sides = {"src": (src, src_tensors, src_used), "dst": (dst, dst_tensors, dst_used)}
    leftovers: dict[str, list[str]] = {}
    for side, (model, tensors, used) in sides.items():
        seen = set(used)
        idle = [key for key, _ in model.named_parameters() if key not in seen]
        assert not idle, f"{side} ({type(model).__name__}) never uses parameters {idle}"
        leftovers[side] = [key for key in tensors if key not in seen]
    assert len(src_used) == len(dst_used), f"src uses {len(src_used)} tensors, dst uses {len(dst_used)}"
    assert len(leftovers["src"]) == len(leftovers["dst"]), (
        f"the buffers eval mode leaves unused differ: src has {leftovers['src']}, dst has {leftovers['dst']}")

    with torch.no_grad():
        for a, b in zip(src_used + leftovers["src"], dst_used + leftovers["dst"]):
            ta, tb = src_tensors[a], dst_tensors[b]
            assert ta.shape == tb.shape, (
                f"src's {a} {tuple(ta.shape)} pairs with dst's {b} {tuple(tb.shape)}: the shapes differ")
            tb.copy_(ta)


def randomize_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give every norm layer random affine parameters and batch norm random running statistics.

    Freshly built batch norm in eval mode is nearly the identity (mean 0, variance 1,
    weight 1, bias 0), so a spec that puts it in the wrong place, or leaves it out, would
    still give the reference's output. Random values make each norm layer count.
    Running variances stay in [0.5, 1.5], so deep networks keep a sensible scale.
    """
    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(low + (high - low) * torch.rand(t.shape, generator=generator))

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(std * torch.randn(t.shape, generator=generator))

    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, NORMS):
                continue
            if m.weight is not None:
                uniform(m.weight, 0.5, 1.5)
            if m.bias is not None:
                normal(m.bias, 0.2)
            if isinstance(m, BATCH_NORMS) and m.running_mean is not None:
                normal(m.running_mean, 0.2)
                uniform(m.running_var, 0.5, 1.5)


def count_params(model: nn.Module) -> int:
    """Parameters in all, as torchvision's docs count them."""
    return sum(p.numel() for p in model.parameters())


def assert_same_network(theirs: nn.Module, ours: nn.Module, x: torch.Tensor,
                        rtol: float = 1e-4, atol: float = 1e-5) -> float:
    """Assert that ours is theirs: same parameter count, same eval-mode output on x.

    Randomizes the norm layers of `theirs` (seeded, so a failure repeats), copies
    everything into `ours` by order of use, and returns the largest absolute difference
    of the outputs, for reporting. x needs a batch of at least two examples: unless the
    reference's outputs for them differ by more than a thousandth of their scale, the
    input hardly reaches the output (weights drawn too small, say), and equal outputs
    would say little about the weights, so that is an error too.
    """
    assert count_params(ours) == count_params(theirs), (
        f"ours has {count_params(ours):,} parameters, theirs {count_params(theirs):,}")
    assert x.shape[0] >= 2, "give x a batch of at least two examples"
    randomize_norms(theirs, torch.Generator().manual_seed(0))
    copy_by_use(theirs, ours, x)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    spread, scale = (want[0] - want[1]).abs().max().item(), want.abs().max().item()
    assert spread > 1e-3 * scale, (
        f"theirs hardly depends on its input: two examples give outputs {spread:.3g} apart at a scale of "
        f"{scale:.3g}; draw larger weights so that the comparison tests them")
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    return (got - want).abs().max().item()
