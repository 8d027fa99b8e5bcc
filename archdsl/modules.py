"""The two modules archdsl adds to plain torch: joins of parallel paths.

Each takes its paths as modules (usually nn.Sequential), runs every one on the same
input, and joins the results. Their state_dict keys read `<index>.paths.<path>.<layer>...`.
"""

from __future__ import annotations

import torch
from torch import nn


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


class Add(nn.Module):
    """Run each path on the input and add the outputs elementwise: a residual connection.

    ResNet: `add([conv(64, k3, p1) batchnorm relu conv(64, k3, p1) batchnorm], [identity])`.
    """

    def __init__(self, *paths: nn.Module) -> None:
        super().__init__()
        self.paths = nn.ModuleList(paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.paths[0](x)
        for path in self.paths[1:]:
            out = out + path(x)
        return out
