"""The modules archdsl adds to plain torch, where torch has no module for a layer.

Joins take their paths as modules (usually nn.Sequential), run each on the input (or,
for Split, on its part of the input) and join the results; their state_dict keys read
`<index>.paths.<path>.<layer>...`. The others are small layers of today's networks:
tensor plumbing, stochastic depth, layer scale, and the pieces of a vision transformer.
"""

from __future__ import annotations

import operator
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


# Joins ----------------------------------------------------------------------

class Concat(nn.Module):
    """Run each path on the input and concatenate the outputs along `dim` (the channels).

    Inception and DenseNet blocks: `concat([conv(64, k1)], [maxpool(3, s1, p1) conv(32, k1)])`.
    """

    def __init__(self, *paths: nn.Module, dim: int = 1) -> None:
        super().__init__()
        self.paths = nn.ModuleList(paths)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([path(x) for path in self.paths], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _Elementwise(nn.Module):
    """Run each path on the input and fold the outputs together with `combine`."""

    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __init__(self, *paths: nn.Module) -> None:
        super().__init__()
        self.paths = nn.ModuleList(paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.paths[0](x)
        for path in self.paths[1:]:
            out = self.combine(out, path(x))
        return out


class Add(_Elementwise):
    """Run each path on the input and add the outputs elementwise: a residual connection.

    ResNet: `add([conv(64, k3, p1) batchnorm relu conv(64, k3, p1) batchnorm], [identity])`.
    """

    combine = staticmethod(operator.add)


class Mul(_Elementwise):
    """Run each path on the input and multiply the outputs, broadcasting: squeeze-and-excitation.

    `mul([identity], [adaptiveavgpool(1) conv(16, k1) relu conv(64, k1) sigmoid])` scales each
    channel of the input by a gate computed from the whole image.
    """

    combine = staticmethod(operator.mul)


class Split(nn.Module):
    """Split the input along `dim` into `sizes`, run path i on part i, concatenate the outputs.

    ShuffleNet V2's unit keeps half the channels and transforms the other half:
    `split([identity], [conv(58, k1) ...])`.
    """

    def __init__(self, *paths: nn.Module, sizes: tuple[int, ...], dim: int = 1) -> None:
        super().__init__()
        self.paths = nn.ModuleList(paths)
        self.sizes = tuple(sizes)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.sizes, dim=self.dim)
        return torch.cat([path(part) for path, part in zip(self.paths, parts)], dim=self.dim)

    def extra_repr(self) -> str:
        return f"sizes={list(self.sizes)}, dim={self.dim}"


# Tensor plumbing ------------------------------------------------------------

class Permute(nn.Module):
    """Reorder the axes: `Permute((0, 2, 3, 1))` takes (B, C, H, W) to (B, H, W, C)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Transpose(nn.Module):
    """Swap two axes: `Transpose(1, 2)` takes (B, C, L) to (B, L, C)."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"dim0={self.dim0}, dim1={self.dim1}"


class Reshape(nn.Module):
    """Reshape each example, keeping the batch: `Reshape((196, 768))` gives (B, 196, 768)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Mean(nn.Module):
    """Average over axes: `Mean((2, 3))` is global average pooling of (B, C, H, W) to (B, C)."""

    def __init__(self, dims: tuple[int, ...], keepdim: bool = False) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(self.dims, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dims={self.dims}" + (", keepdim=True" if self.keepdim else "")


class Token(nn.Module):
    """Take one token of a sequence: (B, L, D) -> (B, D). ViT classifies from token 0, the class token."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"


# Normalisation and training-only layers --------------------------------------

class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of an image, at each position (ConvNeXt's LayerNorm2d).

    The parameters are those of `nn.LayerNorm(channels)`; the channels move last and back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)  # (B, C, H, W) -> (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): in training, zero a whole example's path with
    probability p and scale the survivors by 1 / (1 - p); in eval mode, the identity.

    Put it at the end of a residual path: `add([... droppath(0.1)], [identity])`.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """A learned scale per channel, starting at `init` (CaiT; ConvNeXt's layer_scale).

    `shape` is the parameter's shape, e.g. (C, 1, 1) to scale the channels of (B, C, H, W).
    """

    def __init__(self, shape: tuple[int, ...], init: float) -> None:
        super().__init__()
        self.init = init
        self.scale = nn.Parameter(torch.empty(shape))
        if not self.scale.is_meta:  # meta holds no values; `tracer.materialize` initialises it
            self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.scale, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"{tuple(self.scale.shape)}, init={self.init}"


# Vision transformer ---------------------------------------------------------

class ClassToken(nn.Module):
    """Prepend a learned token to a sequence: (B, L, D) -> (B, L + 1, D). Starts at zero, as in ViT."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.empty(1, 1, dim))
        if not self.token.is_meta:  # meta holds no values; `tracer.materialize` initialises it
            self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.token)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.token.shape[-1]}"


class PositionEmbedding(nn.Module):
    """Add a learned embedding to each position of a (B, L, D) sequence; normal(0, std) at first, as in ViT."""

    def __init__(self, length: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.std = std
        self.embedding = nn.Parameter(torch.empty(1, length, dim))
        if not self.embedding.is_meta:  # meta holds no values; `tracer.materialize` initialises it
            self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding, std=self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding

    def extra_repr(self) -> str:
        return f"length={self.embedding.shape[1]}, dim={self.embedding.shape[2]}, std={self.std}"


class SelfAttention(nn.MultiheadAttention):
    """Multi-head self-attention over a (B, L, D) sequence: torch's nn.MultiheadAttention,
    batch first, with the sequence as query, key and value, returning only the output."""

    resets_submodules = True  # torch initialises out_proj, then the rest: `reset_parameters` does both

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__(dim, heads, dropout=dropout, bias=bias, batch_first=True)

    def reset_parameters(self) -> None:
        self.out_proj.reset_parameters()
        self._reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, x, x, need_weights=False)[0]

    def extra_repr(self) -> str:
        return f"dim={self.embed_dim}, heads={self.num_heads}, dropout={self.dropout}"
