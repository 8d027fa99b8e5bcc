"""The built-in layers. Each builder gets the incoming shape, batch first, and its
checked arguments, and returns a plain torch module.

Builders refuse shapes that cannot work with a `ShapeProblem` in words (a kernel
larger than its input, a linear on an image); anything subtler is left to torch.
Conv, pooling and batch norm pick 1d/2d/3d from the rank of their input.
"""

from __future__ import annotations

from types import SimpleNamespace as Args

from torch import nn

from .modules import Add, Concat
from .registry import Arg, ShapeProblem, layer, same_shape
from .values import Bool, Int, Real, show_shape

Shape = tuple[int, ...]

POSITIVE, NON_NEGATIVE, ANY_INT = Int(1), Int(0), Int(None)
PROBABILITY = Real(0.0, 1.0)  # [0, 1)
POSITIVE_REAL = Real(0.0, None, lo_open=True)
NON_NEGATIVE_REAL = Real(0.0, None)


def _spatial(x: Shape, name: str) -> int:
    """Number of spatial axes of a (B, C, *spatial) input: 1, 2 or 3."""
    n = len(x) - 2
    if not 1 <= n <= 3:
        raise ShapeProblem(f"{name} needs a (C, L), (C, H, W) or (C, D, H, W) input, but it gets {show_shape(x)}")
    return n


def _window(x: Shape, kernel: int, stride: int, padding: int, dilation: int = 1) -> None:
    """Refuse a sliding window that does not fit the (padded) input."""
    spatial = x[2:]
    reach = dilation * (kernel - 1) + 1
    if any(size + 2 * padding < reach for size in spatial):
        what = f"kernel {kernel}" + (f" (dilated to {reach})" if dilation > 1 else "")
        size = "x".join(map(str, spatial))
        padded = f" padded by {padding}" if padding else ""
        raise ShapeProblem(f"{what} is larger than the input {size}{padded}")


def _pool_padding(kernel: int, padding: int) -> None:
    if padding > kernel // 2:
        raise ShapeProblem(f"padding {padding} is more than half the kernel {kernel}")


@layer("conv",
       Arg("channels", POSITIVE, doc="output channels"),
       Arg("kernel", POSITIVE, tag="k", aliases=("kernel_size",)),
       Arg("stride", POSITIVE, 1, tag="s"),
       Arg("padding", NON_NEGATIVE, 0, tag="p"),
       Arg("dilation", POSITIVE, 1, tag="d"),
       Arg("groups", POSITIVE, 1, tag="g"),
       Arg("bias", Bool(), True))
def conv(x: Shape, a: Args) -> nn.Module:
    """Convolution (nn.Conv1d/2d/3d by input rank); in_channels come from the input."""
    n = _spatial(x, "conv")
    c = x[1]
    if c % a.groups or a.channels % a.groups:
        raise ShapeProblem(f"groups={a.groups} must divide the input channels ({c}) and the output channels ({a.channels})")
    _window(x, a.kernel, a.stride, a.padding, a.dilation)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
    return cls(c, a.channels, kernel_size=a.kernel, stride=a.stride, padding=a.padding,
               dilation=a.dilation, groups=a.groups, bias=a.bias)


@layer("linear", Arg("features", POSITIVE, aliases=("out_features",)), Arg("bias", Bool(), True),
       out_shape=lambda x, a: (*x[:-1], a.features))
def linear(x: Shape, a: Args) -> nn.Module:
    """Fully connected layer (nn.Linear) on the last axis; in_features come from the input."""
    if len(x) > 3:
        raise ShapeProblem(f"linear needs (features,) or (sequence, features), but it gets {show_shape(x)}; "
                           f"put flatten before it")
    return nn.Linear(x[-1], a.features, bias=a.bias)


def _pooling(name: str, classes: tuple[type[nn.Module], ...], what: str) -> None:
    """Register max or average pooling: the same arguments, checks and dimension choice."""

    def build(x: Shape, a: Args) -> nn.Module:
        n = _spatial(x, name)
        stride = a.stride or a.kernel  # torch's default: the kernel
        _pool_padding(a.kernel, a.padding)
        _window(x, a.kernel, stride, a.padding)
        return classes[n - 1](kernel_size=a.kernel, stride=stride, padding=a.padding, ceil_mode=a.ceil)

    build.__doc__ = f"{what} pooling (nn.{classes[1].__name__} and its 1d/3d kin); the stride defaults to the kernel."
    layer(name,
          Arg("kernel", POSITIVE, tag="k", aliases=("kernel_size",)),
          Arg("stride", POSITIVE, None, tag="s", shown_default="kernel"),
          Arg("padding", NON_NEGATIVE, 0, tag="p"),
          Arg("ceil", Bool(), False, aliases=("ceil_mode",)))(build)


_pooling("maxpool", (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "Max")
_pooling("avgpool", (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "Average")


@layer("adaptiveavgpool", Arg("size", POSITIVE, 1, aliases=("output_size",)),
       out_shape=lambda x, a: (*x[:2], *(a.size,) * (len(x) - 2)))
def adaptiveavgpool(x: Shape, a: Args) -> nn.Module:
    """Adaptive average pooling to size x size; the default size 1 is global average pooling."""
    n = _spatial(x, "adaptiveavgpool")
    return (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[n - 1](a.size)


@layer("flatten")
def flatten(x: Shape, a: Args) -> nn.Module:
    """Flatten all axes but the batch into one (nn.Flatten)."""
    return nn.Flatten()


@layer("dropout", Arg("p", PROBABILITY, 0.5), out_shape=same_shape)
def dropout(x: Shape, a: Args) -> nn.Module:
    """Dropout with probability p in [0, 1) (nn.Dropout)."""
    return nn.Dropout(a.p)


@layer("batchnorm", Arg("eps", POSITIVE_REAL, 1e-5), Arg("momentum", PROBABILITY, 0.1), out_shape=same_shape)
def batchnorm(x: Shape, a: Args) -> nn.Module:
    """Batch normalization over channels (nn.BatchNorm1d/2d/3d by input rank)."""
    if not 2 <= len(x) <= 5:
        raise ShapeProblem(f"batchnorm needs (features,), (C, L), (C, H, W) or (C, D, H, W), but it gets {show_shape(x)}")
    cls = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[len(x) - 2]
    return cls(x[1], eps=a.eps, momentum=a.momentum)


@layer("lrn", Arg("size", POSITIVE), Arg("alpha", NON_NEGATIVE_REAL, 1e-4), Arg("beta", NON_NEGATIVE_REAL, 0.75),
       Arg("k", NON_NEGATIVE_REAL, 1.0), out_shape=same_shape)
def lrn(x: Shape, a: Args) -> nn.Module:
    """Local response normalization across channels (nn.LocalResponseNorm), as in the AlexNet paper."""
    if len(x) < 3:
        raise ShapeProblem(f"lrn needs a (C, ...) input with spatial axes, but it gets {show_shape(x)}")
    return nn.LocalResponseNorm(a.size, alpha=a.alpha, beta=a.beta, k=a.k)


@layer("softmax", Arg("dim", ANY_INT, 1), out_shape=same_shape)
def softmax(x: Shape, a: Args) -> nn.Module:
    """Softmax over axis dim (1, the first after the batch, by default)."""
    if not -len(x) <= a.dim < len(x):
        raise ShapeProblem(f"softmax dim {a.dim} is out of range for {show_shape(x)}")
    return nn.Softmax(dim=a.dim)


def _activation(name: str, cls: type[nn.Module], what: str) -> None:
    def build(x: Shape, a: Args) -> nn.Module:
        return cls()
    build.__doc__ = f"{what} (nn.{cls.__name__})."
    layer(name, out_shape=same_shape)(build)


for _name, _cls, _what in (("relu", nn.ReLU, "ReLU"), ("sigmoid", nn.Sigmoid, "Sigmoid"), ("tanh", nn.Tanh, "Tanh"),
                           ("gelu", nn.GELU, "GELU"), ("identity", nn.Identity, "Identity: passes its input on")):
    _activation(_name, _cls, _what)


# Joins: several paths run on the same input --------------------------------

Paths = list[tuple[nn.Module, Shape]]  # each path's module and its output shape


def _paths_disagree(join: str, paths: Paths, what: str) -> ShapeProblem:
    shapes = ", ".join(f"path {i} gives {show_shape(shape)}" for i, (_, shape) in enumerate(paths, 1))
    return ShapeProblem(f"{join} needs paths that agree {what}: {shapes}")


def _concat_shape(x: Shape, a: Args, paths: Paths) -> Shape:
    first = paths[0][1]
    dim = a.dim % len(first)
    return (*first[:dim], sum(shape[dim] for _, shape in paths), *first[dim + 1:])


@layer("concat", Arg("dim", ANY_INT, 1), takes_paths=True, out_shape=_concat_shape)
def concat(x: Shape, a: Args, paths: Paths) -> nn.Module:
    """Runs each [ path ] on the input and concatenates the outputs along dim (channels): Inception, DenseNet."""
    ranks = {len(shape) for _, shape in paths}
    if len(ranks) > 1:
        raise _paths_disagree("concat", paths, "in rank")
    rank = ranks.pop()
    if not -rank <= a.dim < rank:
        raise ShapeProblem(f"concat dim {a.dim} is out of range for {show_shape(paths[0][1])}")
    dim = a.dim % rank
    if len({shape[:dim] + shape[dim + 1:] for _, shape in paths}) > 1:
        raise _paths_disagree("concat", paths, f"on every axis but {dim}")
    return Concat(*(m for m, _ in paths), dim=a.dim)


@layer("add", takes_paths=True, out_shape=lambda x, a, paths: paths[0][1])
def add(x: Shape, a: Args, paths: Paths) -> nn.Module:
    """Runs each [ path ] on the input and adds the outputs elementwise: a residual connection."""
    if len({shape for _, shape in paths}) > 1:
        raise _paths_disagree("add", paths, "in shape")
    return Add(*(m for m, _ in paths))
