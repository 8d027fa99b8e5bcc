"""torchvision's classic CNNs written as specs, each the very network torchvision builds;
and the parity harness (tests/parity.py) that says so, shown to fail where a spec is not."""

from pathlib import Path

import pytest
import torch
from torch import nn

import archdsl
import parity

TORCHVISION_SPECS = Path(__file__).resolve().parent.parent / "specs" / "torchvision"

torchvision = pytest.importorskip("torchvision")

# (spec and torchvision name, torchvision keyword arguments, side of the parity input).
# The parity forward runs at 64x64, which keeps this file fast: every one of these networks
# ends in adaptive pooling, and at 64x64 the map before it is still 2x2 (SqueezeNet: 3x3),
# so every layer sees spatial structure. The parameter count is checked at 224x224.
CLASSICS = [
    ("resnet50", {}, 64),
    ("densenet121", {}, 64),
    ("squeezenet1_1", {}, 64),
    # aux_logits=False: the auxiliary heads only run in training; init_weights=True is the
    # default without weights, stated to silence torchvision's FutureWarning.
    ("googlenet", {"aux_logits": False, "init_weights": True}, 64),
    ("regnet_x_400mf", {}, 64),
    ("vgg16_bn", {}, 64),
]
# torchvision draws GoogLeNet's weights with std 0.01 and nothing carries the input past
# its 22 plain layers: the outputs for two inputs differ by 1e-7 of their size. Redrawn.
SMALL_WEIGHTS = {"googlenet"}


def redraw_weights(model: nn.Module) -> None:
    """Kaiming-normal weights for every conv and linear layer: a scale at which the input
    reaches the output through a deep plain network."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, (2 / fan_in) ** 0.5, generator=generator)


@pytest.mark.parametrize("name, kwargs, size", CLASSICS, ids=[c[0] for c in CLASSICS])
def test_spec_is_torchvisions_network(name: str, kwargs: dict, size: int) -> None:
    theirs = getattr(torchvision.models, name)(weights=None, **kwargs)
    if name in SMALL_WEIGHTS:
        redraw_weights(theirs)
    spec = TORCHVISION_SPECS / f"{name}.arch"
    assert archdsl.trace(spec).total_params == parity.count_params(theirs)
    ours = archdsl.build(spec, input_shape=(3, size, size))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    parity.assert_same_network(theirs, ours, x)


# The harness itself ---------------------------------------------------------------

def test_harness_pairs_by_use_not_by_registration() -> None:
    """A model that registers its head before its body (as ViT registers class_token)."""
    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4 * 3 * 3, 5)
            self.body = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).flatten(1))

    ours = archdsl.build("input 2x5x5; conv(4, k3) batchnorm relu flatten linear(5)")
    assert parity.assert_same_network(HeadFirst(), ours, torch.randn(2, 2, 5, 5)) < 1e-5


def test_harness_catches_a_missing_layer() -> None:
    """torchvision's ResNet-18 against its spec less the ReLU after each residual add:
    the same parameters, another function."""
    text = (TORCHVISION_SPECS / "resnet18.arch").read_text()
    without_relu = text.replace("])\n    relu\n}", "])\n}")
    assert without_relu != text
    ours = archdsl.build(without_relu, input_shape=(3, 64, 64))
    with pytest.raises(AssertionError, match="not close"):
        parity.assert_same_network(torchvision.models.resnet18(weights=None), ours, torch.randn(2, 3, 64, 64))


def test_harness_catches_a_misplaced_norm_that_default_statistics_would_hide() -> None:
    """ReLU before batch norm instead of after: with fresh statistics batch norm is almost
    the identity and the two agree, so only randomized norms tell them apart."""
    theirs = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten())
    ours = archdsl.build("input 3x4x4; conv(6, k3, p1) relu batchnorm flatten")
    x = torch.randn(2, 3, 4, 4)
    parity.copy_by_use(theirs, ours, x)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(AssertionError, match="not close"):
        parity.assert_same_network(theirs, ours, x)


def test_harness_catches_swapped_convolutions() -> None:
    """The same parameter count, but the 3x3 and the 1x1 convolution run in the other order."""
    theirs = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    ours = archdsl.build("input 4x6x6; conv(4, k1) relu conv(4, k3, p1)")
    with pytest.raises(AssertionError, match=r"src's 0.weight \(4, 4, 3, 3\) pairs with dst's 0.weight \(4, 4, 1, 1\)"):
        parity.assert_same_network(theirs, ours, torch.randn(2, 4, 6, 6))


def test_harness_refuses_a_reference_whose_output_ignores_the_input() -> None:
    theirs = nn.Linear(4, 3)
    nn.init.zeros_(theirs.weight)
    with pytest.raises(AssertionError, match="theirs hardly depends on its input"):
        parity.assert_same_network(theirs, archdsl.build("input 4; linear(3)"), torch.randn(2, 4))


def test_harness_catches_an_unused_parameter_and_a_different_count() -> None:
    theirs = nn.Sequential(nn.Linear(4, 3))
    theirs.register_parameter("spare", nn.Parameter(torch.zeros(3)))
    with pytest.raises(AssertionError, match=r"src \(Sequential\) never uses parameters \['spare'\]"):
        parity.copy_by_use(theirs, archdsl.build("input 4; linear(3)"), torch.randn(2, 4))
    with pytest.raises(AssertionError, match="ours has 12 parameters, theirs 15"):
        parity.assert_same_network(nn.Linear(4, 3), archdsl.build("input 4; linear(3, bias=false)"), torch.randn(2, 4))
