"""The built-in layers. Each builder gets the incoming shape, batch first, and its
checked arguments, and returns a plain torch module.

Builders refuse shapes that cannot work with a `ShapeProblem` in words (a kernel
larger than its input, a linear on an image); anything subtler is left to torch.
Conv, pooling and the norms pick 1d/2d/3d from the rank of their input.

Axes are numbered as torch numbers them, the batch being axis 0 (`concat(dim=1)` joins
channels, `permute(0, 2, 3, 1)` moves them last); shapes are written without the batch,
like `input`. No layer may move or merge the batch axis.
"""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace as Args
from typing import Any

from .registry import Arg, ShapeProblem, layer, same_shape
from .values import Bool, Int, Real, Sizes, Word, show, show_shape


class _OnFirstUse:
    """A module imported when one of its names is first used. Declaring the layers needs no
    torch, so `archdsl layers` and a spec's mistakes are reported without `import torch` (~2 s)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


nn, modules = _OnFirstUse("torch.nn"), _OnFirstUse(f"{__package__}.modules")

Shape = tuple[int, ...]

POSITIVE, NON_NEGATIVE, ANY_INT = Int(1), Int(0), Int(None)
PROBABILITY = Real(0.0, 1.0)  # [0, 1)
POSITIVE_REAL = Real(0.0, None, lo_open=True)
NON_NEGATIVE_REAL = Real(0.0, None)
ANY_REAL = Real()

CHANNELS_INFERRED = "its channel count comes from its input"


def _spatial(x: Shape, name: str) -> int:
    """Number of spatial axes of a (B, C, *spatial) input: 1, 2 or 3."""
    n = len(x) - 2
    if not 1 <= n <= 3:
        raise ShapeProblem(f"{name} needs a (C, L), (C, H, W) or (C, D, H, W) input, but it gets {show_shape(x)}")
    return n


def _per_axis(value: int | tuple[int, ...], n: int, name: str) -> tuple[int, ...]:
    """A window size for each of n spatial axes: 3 is (3, 3) on an image; (1, 7) must have n sizes."""
    if not isinstance(value, tuple):
        return (value,) * n
    if len(value) != n:
        sizes = f"{len(value)} size{'s' if len(value) != 1 else ''}"
        raise ShapeProblem(f"{name} {show(value)} has {sizes}, but the input has {n} spatial "
                           f"ax{'is' if n == 1 else 'es'}", arg=name)
    return value


def _window(x: Shape, kernel, stride, padding, dilation=1) -> None:
    """Refuse a sliding window that does not fit the (padded) input, on any axis."""
    n = len(x) - 2
    k, p, d = _per_axis(kernel, n, "kernel"), _per_axis(padding, n, "padding"), _per_axis(dilation, n, "dilation")
    _per_axis(stride, n, "stride")
    reach = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    if any(size + 2 * pi < r for size, pi, r in zip(x[2:], p, reach)):
        square = len(set(reach)) == 1 and len(set(k)) == 1
        what = f"kernel {show(kernel)}" + ((f" (dilated to {reach[0] if square else show(reach)})")
                                           if any(di > 1 for di in d) else "")
        size = "x".join(map(str, x[2:]))
        padded = f" padded by {show(padding)}" if any(p) else ""
        raise ShapeProblem(f"{what} is larger than the input {size}{padded}")


def _axis(dim: int, x: Shape, name: str, arg: str = "dim") -> int:
    """A torch axis of `x` (negative counts from the end), never the batch axis."""
    if not -len(x) <= dim < len(x):
        raise ShapeProblem(f"{name} axis {dim} is out of range for {show_shape(x)} (the batch is axis 0)", arg=arg)
    dim %= len(x)
    if dim == 0:
        raise ShapeProblem(f"{name} cannot use axis 0, the batch; the first axis of an example is 1", arg=arg)
    return dim


# Convolution, linear and pooling ---------------------------------------------

def _slide(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False) -> int:
    """How many windows fit along one axis, counted as torch counts them for convolution and pooling.

    With `ceil`, a last partial window counts, unless it would start in the right padding.
    The builders have checked that one window fits, so this is at least 1.
    """
    reach = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - reach + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _conv_shape(x: Shape, a: Args) -> Shape:
    n = len(x) - 2
    if a.padding == "same":
        return (x[0], a.channels, *x[2:])
    padding = 0 if a.padding == "valid" else a.padding
    windows = zip(x[2:], _per_axis(a.kernel, n, "kernel"), _per_axis(a.stride, n, "stride"),
                  _per_axis(padding, n, "padding"), _per_axis(a.dilation, n, "dilation"))
    return (x[0], a.channels, *(_slide(*w) for w in windows))


@layer("conv",
       Arg("channels", POSITIVE, aliases=("out_channels",), doc="output channels"),
       Arg("kernel", Sizes(1), tag="k", aliases=("kernel_size",)),
       Arg("stride", Sizes(1), 1, tag="s"),
       Arg("padding", Sizes(0, words=("same", "valid")), 0, tag="p"),
       Arg("dilation", Sizes(1), 1, tag="d"),
       Arg("groups", POSITIVE, 1, tag="g"),
       Arg("bias", Bool(), True, keyword_only=True),
       out_shape=_conv_shape, infers="in_channels come from its input")
def conv(x: Shape, a: Args) -> nn.Module:
    """Convolution (nn.Conv1d/2d/3d by input rank); in_channels come from the input.
    Windows may be rectangular (`k1x7 p0x3`, `kernel=(1, 7)`); `padding=same` keeps the size (stride 1)."""
    n = _spatial(x, "conv")
    c = x[1]
    if c % a.groups or a.channels % a.groups:
        raise ShapeProblem(f"groups={a.groups} must divide the input channels ({c}) and the output channels "
                           f"({a.channels})")
    if a.padding == "same" and any(s != 1 for s in _per_axis(a.stride, n, "stride")):
        raise ShapeProblem(f"padding=same needs stride 1 (torch pads 'same' only for unstrided convolutions), "
                           f"but the stride is {show(a.stride)}; give the padding as a number", arg="padding")
    padding = 0 if a.padding == "valid" else a.padding
    if padding != "same":
        try:
            _window(x, a.kernel, a.stride, padding, a.dilation)
        except ShapeProblem as e:
            if a.channels != c:
                raise
            raise ShapeProblem(f"{e}; conv takes no input channels, they come from the input: is this torch's "
                               f"Conv2d(in, out, kernel)? Write conv(out, kernel)") from None
    else:
        _per_axis(a.kernel, n, "kernel"), _per_axis(a.dilation, n, "dilation")
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
    return cls(c, a.channels, kernel_size=a.kernel, stride=a.stride, padding=padding,
               dilation=a.dilation, groups=a.groups, bias=a.bias)


@layer("linear", Arg("features", POSITIVE, aliases=("out_features",)), Arg("bias", Bool(), True, keyword_only=True),
       Arg("pointwise", Bool(), False, keyword_only=True),
       out_shape=lambda x, a: (*x[:-1], a.features), infers="in_features come from its input")
def linear(x: Shape, a: Args) -> nn.Module:
    """Fully connected layer (nn.Linear) on the last axis; in_features come from the input.
    On an image it needs pointwise=true, said on purpose: at each position, over features put last by permute."""
    if len(x) < 2:
        raise ShapeProblem(f"linear needs (features,) or (sequence, features), but it gets {show_shape(x)}: "
                           f"only the batch axis is left")
    if len(x) > 3 and not a.pointwise:
        raise ShapeProblem(f"linear needs (features,) or (sequence, features), but it gets {show_shape(x)}; "
                           f"put flatten before it (or, to apply it at each position to the last axis, "
                           f"write linear({a.features}, pointwise=true))")
    return nn.Linear(x[-1], a.features, bias=a.bias)


def _pool_shape(x: Shape, a: Args) -> Shape:
    n = len(x) - 2
    windows = zip(x[2:], _per_axis(a.kernel, n, "kernel"), _per_axis(a.stride or a.kernel, n, "stride"),
                  _per_axis(a.padding, n, "padding"))
    return (*x[:2], *(_slide(*w, ceil=a.ceil) for w in windows))


def _pooling(name: str, cls: str, what: str) -> None:
    """Register max or average pooling: the same arguments, checks and dimension choice (nn.{cls}1d/2d/3d)."""

    def build(x: Shape, a: Args) -> nn.Module:
        n = _spatial(x, name)
        stride = a.stride or a.kernel  # torch's default: the kernel
        kernel, padding = _per_axis(a.kernel, n, "kernel"), _per_axis(a.padding, n, "padding")
        if any(p > k // 2 for p, k in zip(padding, kernel)):
            raise ShapeProblem(f"padding {show(a.padding)} is more than half the kernel {show(a.kernel)}", arg="padding")
        _window(x, a.kernel, stride, a.padding)
        if cls == "AvgPool" and n == 3 and any(size < k for size, k in zip(x[2:], kernel)):  # torch's AvgPool3d
            raise ShapeProblem(f"kernel {show(a.kernel)} is larger than the input {'x'.join(map(str, x[2:]))}: 3d "
                               f"average pooling needs it to fit without the padding")
        return getattr(nn, f"{cls}{n}d")(kernel_size=a.kernel, stride=stride, padding=a.padding, ceil_mode=a.ceil)

    build.__doc__ = f"{what} pooling (nn.{cls}2d and its 1d/3d kin); the stride defaults to the kernel."
    layer(name,
          Arg("kernel", Sizes(1), tag="k", aliases=("kernel_size",)),
          Arg("stride", Sizes(1), None, tag="s", shown_default="kernel"),
          Arg("padding", Sizes(0), 0, tag="p"),
          Arg("ceil", Bool(), False, aliases=("ceil_mode",)), out_shape=_pool_shape)(build)


_pooling("maxpool", "MaxPool", "Max")
_pooling("avgpool", "AvgPool", "Average")


def _adaptive_shape(x: Shape, a: Args) -> Shape:
    return (*x[:2], *_per_axis(a.size, len(x) - 2, "size"))


@layer("adaptiveavgpool", Arg("size", Sizes(1), 1, aliases=("output_size",)), out_shape=_adaptive_shape)
def adaptiveavgpool(x: Shape, a: Args) -> nn.Module:
    """Adaptive average pooling to size x size (or a tuple); the default size 1 is global average pooling."""
    n = _spatial(x, "adaptiveavgpool")
    _per_axis(a.size, n, "size")
    return (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[n - 1](a.size)


@layer("dropout", Arg("p", PROBABILITY, 0.5), out_shape=same_shape)
def dropout(x: Shape, a: Args) -> nn.Module:
    """Dropout with probability p in [0, 1) (nn.Dropout)."""
    return nn.Dropout(a.p)


# Normalisation ----------------------------------------------------------------

def _channels(x: Shape, name: str) -> int:
    if len(x) < 2:
        raise ShapeProblem(f"{name} needs an input with channels, but it gets {show_shape(x)}")
    return x[1]


@layer("batchnorm", Arg("eps", POSITIVE_REAL, 1e-5, keyword_only=True),
       Arg("momentum", PROBABILITY, 0.1, keyword_only=True), Arg("affine", Bool(), True, keyword_only=True),
       out_shape=same_shape, infers=CHANNELS_INFERRED)
def batchnorm(x: Shape, a: Args) -> nn.Module:
    """Batch normalization over channels (nn.BatchNorm1d/2d/3d by input rank)."""
    if not 2 <= len(x) <= 5:
        raise ShapeProblem(f"batchnorm needs (features,), (C, L), (C, H, W) or (C, D, H, W), but it gets {show_shape(x)}")
    cls = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[len(x) - 2]
    return cls(x[1], eps=a.eps, momentum=a.momentum, affine=a.affine)


@layer("instancenorm", Arg("eps", POSITIVE_REAL, 1e-5, keyword_only=True),
       Arg("momentum", PROBABILITY, 0.1, keyword_only=True), Arg("affine", Bool(), False, keyword_only=True),
       Arg("track", Bool(), False, keyword_only=True, aliases=("track_running_stats",)),
       out_shape=same_shape, infers=CHANNELS_INFERRED)
def instancenorm(x: Shape, a: Args) -> nn.Module:
    """Instance normalization: each example's channels over their positions (nn.InstanceNorm1d/2d/3d)."""
    n = _spatial(x, "instancenorm")
    cls = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[n - 1]
    return cls(x[1], eps=a.eps, momentum=a.momentum, affine=a.affine, track_running_stats=a.track)


@layer("groupnorm", Arg("groups", POSITIVE), Arg("eps", POSITIVE_REAL, 1e-5, keyword_only=True),
       Arg("affine", Bool(), True, keyword_only=True), out_shape=same_shape, infers=CHANNELS_INFERRED)
def groupnorm(x: Shape, a: Args) -> nn.Module:
    """Group normalization: the channels in `groups` groups, each normalized over its channels and positions."""
    c = _channels(x, "groupnorm")
    if c % a.groups:
        raise ShapeProblem(f"groups={a.groups} must divide the channels ({c})")
    return nn.GroupNorm(a.groups, c, eps=a.eps, affine=a.affine)


@layer("layernorm", Arg("over", Int(1, words=("last", "channels")), "last", keyword_only=True),
       Arg("eps", POSITIVE_REAL, 1e-5, keyword_only=True), Arg("affine", Bool(), True, keyword_only=True),
       out_shape=same_shape, infers="its normalized shape comes from its input")
def layernorm(x: Shape, a: Args) -> nn.Module:
    """Layer normalization (nn.LayerNorm) over the last axis, the last N axes (over=N), or the
    channels of an image at each position (over=channels, ConvNeXt's LayerNorm2d)."""
    if a.over == "channels":
        _spatial(x, "layernorm over=channels")
        return modules.ChannelLayerNorm(x[1], eps=a.eps, elementwise_affine=a.affine)
    n = 1 if a.over == "last" else a.over
    if n > len(x) - 1:
        raise ShapeProblem(f"over={n} needs {n} axes besides the batch, but the input is {show_shape(x)}", arg="over")
    return nn.LayerNorm(x[-n:], eps=a.eps, elementwise_affine=a.affine)


@layer("lrn", Arg("size", POSITIVE), Arg("alpha", NON_NEGATIVE_REAL, 1e-4), Arg("beta", NON_NEGATIVE_REAL, 0.75),
       Arg("k", NON_NEGATIVE_REAL, 1.0), out_shape=same_shape)
def lrn(x: Shape, a: Args) -> nn.Module:
    """Local response normalization across channels (nn.LocalResponseNorm), as in the AlexNet paper."""
    if len(x) < 3:
        raise ShapeProblem(f"lrn needs a (C, ...) input with spatial axes, but it gets {show_shape(x)}")
    return nn.LocalResponseNorm(a.size, alpha=a.alpha, beta=a.beta, k=a.k)


# Activations --------------------------------------------------------------------

# The activations without arguments: name -> (torch module class, name in words).
ACTIVATIONS: dict[str, tuple[str, str]] = {
    "relu": ("ReLU", "ReLU"), "relu6": ("ReLU6", "ReLU capped at 6, as in MobileNet"),
    "sigmoid": ("Sigmoid", "Sigmoid"), "tanh": ("Tanh", "Tanh"), "silu": ("SiLU", "SiLU, also called swish"),
    "hardswish": ("Hardswish", "Hard swish, as in MobileNetV3"),
    "hardsigmoid": ("Hardsigmoid", "Hard sigmoid, as in MobileNetV3's squeeze-excitation"),
    "mish": ("Mish", "Mish"), "identity": ("Identity", "Identity: passes its input on"),
}


def _activation(name: str, cls: str, what: str) -> None:
    def build(x: Shape, a: Args) -> nn.Module:
        return getattr(nn, cls)()
    build.__doc__ = f"{what} (nn.{cls})."
    layer(name, out_shape=same_shape)(build)


for _name, (_cls, _what) in ACTIVATIONS.items():
    _activation(_name, _cls, _what)


@layer("activation", Arg("name", Word(tuple(ACTIVATIONS) + ("gelu",))), out_shape=same_shape)
def activation(x: Shape, a: Args) -> nn.Module:
    """The activation named by a value: a block takes `act = relu` and writes `activation(act)`."""
    return nn.GELU() if a.name == "gelu" else getattr(nn, ACTIVATIONS[a.name][0])()


@layer("gelu", Arg("approximate", Word(("none", "tanh")), "none"), out_shape=same_shape)
def gelu(x: Shape, a: Args) -> nn.Module:
    """GELU (nn.GELU); approximate=tanh for the tanh approximation."""
    return nn.GELU(approximate=a.approximate)


@layer("leakyrelu", Arg("slope", NON_NEGATIVE_REAL, 0.01, aliases=("negative_slope",)), out_shape=same_shape)
def leakyrelu(x: Shape, a: Args) -> nn.Module:
    """Leaky ReLU (nn.LeakyReLU): slope for negative inputs."""
    return nn.LeakyReLU(a.slope)


@layer("elu", Arg("alpha", NON_NEGATIVE_REAL, 1.0), out_shape=same_shape)
def elu(x: Shape, a: Args) -> nn.Module:
    """ELU (nn.ELU)."""
    return nn.ELU(a.alpha)


@layer("softplus", Arg("beta", POSITIVE_REAL, 1.0), Arg("threshold", POSITIVE_REAL, 20.0), out_shape=same_shape)
def softplus(x: Shape, a: Args) -> nn.Module:
    """Softplus (nn.Softplus)."""
    return nn.Softplus(a.beta, a.threshold)


@layer("prelu", Arg("per_channel", Bool(), False, keyword_only=True), Arg("init", ANY_REAL, 0.25, keyword_only=True),
       out_shape=same_shape, infers="with per_channel=true, its channel count comes from its input")
def prelu(x: Shape, a: Args) -> nn.Module:
    """PReLU (nn.PReLU): a learned slope for negative inputs, one in all or one per channel."""
    return nn.PReLU(_channels(x, "prelu") if a.per_channel else 1, init=a.init)


def _softmax(name: str, cls: str, what: str) -> None:
    def build(x: Shape, a: Args) -> nn.Module:
        if not -len(x) <= a.dim < len(x):
            raise ShapeProblem(f"{name} dim {a.dim} is out of range for {show_shape(x)}", arg="dim")
        return getattr(nn, cls)(dim=a.dim)
    build.__doc__ = f"{what} over axis dim (1, the first after the batch, by default)."
    layer(name, Arg("dim", ANY_INT, 1), out_shape=same_shape)(build)


_softmax("softmax", "Softmax", "Softmax")
_softmax("logsoftmax", "LogSoftmax", "Log-softmax (the log of softmax, computed stably)")


# Tensor plumbing --------------------------------------------------------------------

def _flatten_shape(x: Shape, a: Args) -> Shape:
    start, end = _axis(a.start, x, "flatten", "start"), _axis(a.end, x, "flatten", "end")
    if start > end:
        raise ShapeProblem(f"flatten start {a.start} comes after end {a.end}", arg="start")
    return (*x[:start], math.prod(x[start:end + 1]), *x[end + 1:])


@layer("flatten", Arg("start", ANY_INT, 1, aliases=("start_dim",)), Arg("end", ANY_INT, -1, aliases=("end_dim",)),
       out_shape=_flatten_shape)
def flatten(x: Shape, a: Args) -> nn.Module:
    """Flatten axes start..end into one (nn.Flatten); by default all axes but the batch."""
    _flatten_shape(x, a)
    return nn.Flatten(a.start, a.end)


def _worked_out(sizes: tuple[int, ...], x: Shape, axes: slice, where: str, arg: str) -> tuple[int, ...]:
    """`sizes` with its one -1 worked out so that they hold the values of x's `axes`, as torch's reshape does."""
    if any(s < -1 or s == 0 for s in sizes) or sizes.count(-1) > 1:
        raise ShapeProblem(f"{arg} {show(sizes)} must be positive sizes, with at most one -1 (worked out)", arg=arg)
    total, known = math.prod(x[axes]), math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ShapeProblem(f"{show_shape(x)} has {total} values {where}; no size times {known} holds them",
                               arg=arg)
        return tuple(total // known if s == -1 else s for s in sizes)
    if known != total:
        raise ShapeProblem(f"{show_shape(x)} has {total} values {where}, but {arg} {show(sizes)} holds {known}",
                           arg=arg)
    return sizes


def _unflatten_sizes(x: Shape, a: Args) -> tuple[int, tuple[int, ...]]:
    """The axis unflatten splits, and the sizes it splits it into (a -1 worked out)."""
    dim = _axis(a.dim, x, "unflatten")
    sizes = a.sizes if isinstance(a.sizes, tuple) else (a.sizes,)
    return dim, _worked_out(sizes, x, slice(dim, dim + 1), f"on axis {dim}", "sizes")


def _unflatten_shape(x: Shape, a: Args) -> Shape:
    dim, sizes = _unflatten_sizes(x, a)
    return (*x[:dim], *sizes, *x[dim + 1:])


@layer("unflatten", Arg("dim", ANY_INT), Arg("sizes", Sizes(-1)), out_shape=_unflatten_shape)
def unflatten(x: Shape, a: Args) -> nn.Module:
    """Split axis dim into sizes (nn.Unflatten): `unflatten(1, (16, 49))` takes (784,) to (16, 49); one may be -1."""
    return nn.Unflatten(*_unflatten_sizes(x, a))


def _reshape_shape(x: Shape, a: Args) -> Shape:
    return (x[0], *_worked_out(tuple(a.shape), x, slice(1, None), "per example", "shape"))


@layer("reshape", Arg("shape", Int(None), many=True), out_shape=_reshape_shape)
def reshape(x: Shape, a: Args) -> nn.Module:
    """Reshape each example to the sizes given, without the batch (like `input`); one may be -1."""
    _reshape_shape(x, a)
    return modules.Reshape(a.shape)


def _permute_shape(x: Shape, a: Args) -> Shape:
    dims = tuple(d % len(x) if -len(x) <= d < len(x) else d for d in a.dims)
    if sorted(dims) != list(range(len(x))):
        batchless = sorted(dims) == list(range(len(x) - 1))
        hint = (f"; axes count as torch counts them, with the batch as axis 0: "
                f"permute({', '.join(map(str, (0, *(d + 1 for d in dims))))})") if batchless else ""
        raise ShapeProblem(f"permute{show(a.dims)} is not an order of the {len(x)} axes of {show_shape(x)}{hint}",
                           arg="dims")
    if dims[0] != 0:
        raise ShapeProblem("permute must keep the batch, axis 0, first", arg="dims")
    return tuple(x[d] for d in dims)


@layer("permute", Arg("dims", ANY_INT, many=True), out_shape=_permute_shape)
def permute(x: Shape, a: Args) -> nn.Module:
    """Reorder the axes, torch's way with the batch as axis 0: `permute(0, 2, 3, 1)` moves channels last."""
    _permute_shape(x, a)
    return modules.Permute(tuple(d % len(x) for d in a.dims))


def _transpose_shape(x: Shape, a: Args) -> Shape:
    d0, d1 = _axis(a.dim0, x, "transpose", "dim0"), _axis(a.dim1, x, "transpose", "dim1")
    out = list(x)
    out[d0], out[d1] = x[d1], x[d0]
    return tuple(out)


@layer("transpose", Arg("dim0", ANY_INT), Arg("dim1", ANY_INT), out_shape=_transpose_shape)
def transpose(x: Shape, a: Args) -> nn.Module:
    """Swap two axes (torch's numbering, batch 0): `transpose(1, 2)` takes (C, L) to (L, C)."""
    _transpose_shape(x, a)
    return modules.Transpose(a.dim0, a.dim1)


def _mean_shape(x: Shape, a: Args) -> Shape:
    axes = [_axis(d, x, "mean", "dims") for d in a.dims]
    if len(set(axes)) < len(axes):
        raise ShapeProblem(f"mean{show(a.dims)} names an axis twice", arg="dims")
    dims = set(axes)
    return tuple(1 if i in dims else s for i, s in enumerate(x)) if a.keepdim else \
        tuple(s for i, s in enumerate(x) if i not in dims)


@layer("mean", Arg("dims", ANY_INT, many=True), Arg("keepdim", Bool(), False, keyword_only=True),
       out_shape=_mean_shape)
def mean(x: Shape, a: Args) -> nn.Module:
    """Average over axes: `mean(2, 3)` pools an image's positions, `mean(1)` a sequence's tokens."""
    _mean_shape(x, a)
    return modules.Mean(a.dims, a.keepdim)


@layer("channelshuffle", Arg("groups", POSITIVE), out_shape=same_shape)
def channelshuffle(x: Shape, a: Args) -> nn.Module:
    """Interleave the channels of `groups` groups (nn.ChannelShuffle), as in ShuffleNet."""
    c = _channels(x, "channelshuffle")
    if len(x) < 3 or c % a.groups:
        raise ShapeProblem(f"channelshuffle needs (C, ...) with C divisible by groups={a.groups}, but it gets "
                           f"{show_shape(x)}", arg="groups")
    return nn.ChannelShuffle(a.groups)


# Training-only layers ------------------------------------------------------------------

@layer("droppath", Arg("p", PROBABILITY), out_shape=same_shape)
def droppath(x: Shape, a: Args) -> nn.Module:
    """Stochastic depth: drops a whole residual path per example with probability p in training;
    the identity in eval mode. Put it last in the path that is added to [identity]."""
    return modules.DropPath(a.p)


@layer("layerscale", Arg("init", ANY_REAL), Arg("dim", ANY_INT, 1), out_shape=same_shape)
def layerscale(x: Shape, a: Args) -> nn.Module:
    """A learned scale per channel (axis dim: 1 for an image's channels, -1 for a token's features), starting at init."""
    dim = _axis(a.dim, x, "layerscale")
    return modules.LayerScale((x[dim],) + (1,) * (len(x) - 1 - dim), a.init)


# Vision transformer ------------------------------------------------------------------

def _sequence(x: Shape, name: str) -> None:
    if len(x) != 3:
        raise ShapeProblem(f"{name} needs a sequence (tokens, features), but it gets {show_shape(x)}")


@layer("classtoken", out_shape=lambda x, a: (x[0], x[1] + 1, x[2]))
def classtoken(x: Shape, a: Args) -> nn.Module:
    """Prepend a learned class token (zeros at first) to a (tokens, features) sequence, as in ViT."""
    _sequence(x, "classtoken")
    return modules.ClassToken(x[2])


@layer("posembedding", Arg("std", NON_NEGATIVE_REAL, 0.02), out_shape=same_shape)
def posembedding(x: Shape, a: Args) -> nn.Module:
    """Add a learned embedding per position of a (tokens, features) sequence, normal(0, std) at first, as in ViT."""
    _sequence(x, "posembedding")
    return modules.PositionEmbedding(x[1], x[2], a.std)


@layer("attention", Arg("heads", POSITIVE), Arg("dropout", PROBABILITY, 0.0), Arg("bias", Bool(), True,
                                                                                  keyword_only=True),
       out_shape=same_shape, infers="its embedding size comes from its input")
def attention(x: Shape, a: Args) -> nn.Module:
    """Multi-head self-attention over a (tokens, features) sequence (nn.MultiheadAttention, batch first)."""
    _sequence(x, "attention")
    if x[2] % a.heads:
        raise ShapeProblem(f"heads={a.heads} must divide the features ({x[2]})", arg="heads")
    return modules.SelfAttention(x[2], a.heads, a.dropout, a.bias)


@layer("token", Arg("index", ANY_INT, 0), out_shape=lambda x, a: (x[0], x[2]))
def token(x: Shape, a: Args) -> nn.Module:
    """Take one token of a (tokens, features) sequence: `token(0)` is ViT's class token."""
    _sequence(x, "token")
    if not -x[1] <= a.index < x[1]:
        raise ShapeProblem(f"token {a.index} is out of range for {x[1]} tokens", arg="index")
    return modules.Token(a.index)


# Joins: several paths on the same input ------------------------------------------------

Paths = list[tuple[Any, Shape]]  # each path's module and its output shape


def _paths_disagree(join: str, paths: Paths, what: str) -> ShapeProblem:
    shapes = ", ".join(f"path {i} gives {show_shape(shape)}" for i, (_, shape) in enumerate(paths, 1))
    return ShapeProblem(f"{join} needs paths that agree {what}: {shapes}")


def _concat_check(join: str, a: Args, paths: Paths) -> int:
    """The axis `concat` (or `split`) joins on, once the paths' shapes agree on every other."""
    ranks = {len(shape) for _, shape in paths}
    if len(ranks) > 1:
        raise _paths_disagree(join, paths, "in rank")
    rank = ranks.pop()
    if not -rank <= a.dim < rank:
        raise ShapeProblem(f"{join} dim {a.dim} is out of range for {show_shape(paths[0][1])}", arg="dim")
    dim = a.dim % rank
    if dim == 0:
        raise ShapeProblem(f"{join} cannot join on axis 0, the batch; channels are axis 1", arg="dim")
    if len({shape[:dim] + shape[dim + 1:] for _, shape in paths}) > 1:
        raise _paths_disagree(join, paths, f"on every axis but {dim}")
    return dim


def _concat_shape(x: Shape, a: Args, paths: Paths) -> Shape:
    first = paths[0][1]
    dim = a.dim % len(first)
    return (*first[:dim], sum(shape[dim] for _, shape in paths), *first[dim + 1:])


@layer("concat", Arg("dim", ANY_INT, 1), takes_paths=True, out_shape=_concat_shape)
def concat(x: Shape, a: Args, paths: Paths) -> nn.Module:
    """Runs each [ path ] on the input and concatenates the outputs along dim (channels): Inception, DenseNet."""
    _concat_check("concat", a, paths)
    return modules.Concat(*(m for m, _ in paths), dim=a.dim)


@layer("add", takes_paths=True, out_shape=lambda x, a, paths: paths[0][1])
def add(x: Shape, a: Args, paths: Paths) -> nn.Module:
    """Runs each [ path ] on the input and adds the outputs elementwise: a residual connection."""
    if len({shape for _, shape in paths}) > 1:
        raise _paths_disagree("add", paths, "in shape")
    return modules.Add(*(m for m, _ in paths))


def _broadcast(paths: Paths) -> Shape:
    """The shape the paths' outputs multiply to: same rank (so the batch meets the batch), and on each
    axis equal sizes or 1. (torch.broadcast_shapes says the same, but imports sympy: ~1 s.)"""
    why = "in rank and, on each axis, in size (or be 1 there)"
    if len({len(shape) for _, shape in paths}) > 1:
        raise _paths_disagree("mul", paths, why)
    out = []
    for sizes in zip(*(shape for _, shape in paths)):
        others = set(sizes) - {1}
        if len(others) > 1:
            raise _paths_disagree("mul", paths, why)
        out.append(others.pop() if others else 1)
    return tuple(out)


@layer("mul", takes_paths=True, out_shape=lambda x, a, paths: _broadcast(paths))
def mul(x: Shape, a: Args, paths: Paths) -> nn.Module:
    """Runs each [ path ] on the input and multiplies the outputs, broadcasting: squeeze-and-excitation's gate."""
    _broadcast(paths)
    return modules.Mul(*(m for m, _ in paths))


def _split_sizes(x: Shape, a: Args, n: int) -> tuple[int, ...]:
    if not -len(x) <= a.dim < len(x) or a.dim % len(x) == 0:
        raise ShapeProblem(f"split dim {a.dim} must be an axis of {show_shape(x)} other than the batch (0)", arg="dim")
    total = x[a.dim]
    if a.sizes is None:
        if total % n:
            raise ShapeProblem(f"axis {a.dim % len(x)} has {total}, which does not split evenly into {n} paths; "
                               f"give sizes=(...), one per path", arg="dim")
        return (total // n,) * n
    sizes = a.sizes if isinstance(a.sizes, tuple) else (a.sizes,)
    if len(sizes) != n or sum(sizes) != total:
        raise ShapeProblem(f"sizes {show(sizes)} must give each of the {n} paths its part of the {total} along axis "
                           f"{a.dim % len(x)}", arg="sizes")
    return sizes


def _split_inputs(x: Shape, a: Args, n: int) -> list[Shape]:
    dim = a.dim % len(x)
    return [(*x[:dim], size, *x[dim + 1:]) for size in _split_sizes(x, a, n)]


@layer("split", Arg("dim", ANY_INT, 1), Arg("sizes", Sizes(1), None, keyword_only=True, shown_default="equal"),
       takes_paths=True, out_shape=_concat_shape, path_inputs=_split_inputs)
def split(x: Shape, a: Args, paths: Paths) -> nn.Module:
    """Splits the input along dim (channels) into one part per [ path ], equal unless sizes= says,
    runs each path on its part and concatenates the outputs: ShuffleNet V2's unit."""
    _concat_check("split", a, paths)
    return modules.Split(*(m for m, _ in paths), sizes=_split_sizes(x, a, len(paths)), dim=a.dim)
