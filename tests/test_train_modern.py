"""`archdsl train` takes every network of specs/: joins, blocks, batch norm and global pooling
train, and batch norm keeps its running statistics for the eval-mode test pass."""

from pathlib import Path

import pytest
import torch
from torch import nn

import archdsl

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.mark.parametrize("name", ["lenet-bn", "resnet18", "densenet", "googlenet", "nin"])
def test_each_modern_spec_trains_a_step(name, tmp_path):
    torch.manual_seed(0)
    before = archdsl.build(SPECS / f"{name}.arch")  # what train builds with seed 0 and init="keep"
    h = archdsl.train(SPECS / f"{name}.arch", dataset="synthetic", limit=16, batch_size=8, epochs=1, lr=0.01,
                      seed=0, init="keep", out=tmp_path / "run", progress=False)
    assert len(h) == 1 and 0.0 <= h.test_acc <= 1.0 and h.train_loss == h.train_loss  # not NaN
    assert not h.model.training  # tested in eval mode
    norms = [m for m in h.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(int(m.num_batches_tracked) == 2 for m in norms)  # 16 examples in batches of 8
    # Every conv and linear weight, in every path, was trained. (A bias right before batch norm
    # may not move: batch norm takes out any per-channel constant, so its gradient is zero.)
    pairs = [(a, b) for (n, a), b in zip(h.model.named_parameters(), before.parameters()) if n.endswith("weight")
             and a.dim() > 1]
    assert pairs and all(not torch.equal(a, b) for a, b in pairs)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
