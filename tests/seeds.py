"""Golden data from the seed notebooks (shared/seeds/): d2l's printed shapes and models.

The shapes are copied from the notebooks' output cells; the hand-written models are
the notebooks' own nn.Sequential definitions, the oracle for parameter counts and init.
"""

from torch import nn

# (module class, output shape) per layer, as the seeds print them for one 1xHxW image.
LENET = [  # d2l's LeNet; the seed's Reshape row is the spec's `input 1x28x28`
    ("Conv2d", (1, 6, 28, 28)), ("Sigmoid", (1, 6, 28, 28)), ("AvgPool2d", (1, 6, 14, 14)),
    ("Conv2d", (1, 16, 10, 10)), ("Sigmoid", (1, 16, 10, 10)), ("AvgPool2d", (1, 16, 5, 5)),
    ("Flatten", (1, 400)), ("Linear", (1, 120)), ("Sigmoid", (1, 120)),
    ("Linear", (1, 84)), ("Sigmoid", (1, 84)), ("Linear", (1, 10)),
]

ALEXNET = [
    ("Conv2d", (1, 96, 54, 54)), ("ReLU", (1, 96, 54, 54)), ("MaxPool2d", (1, 96, 26, 26)),
    ("Conv2d", (1, 256, 26, 26)), ("ReLU", (1, 256, 26, 26)), ("MaxPool2d", (1, 256, 12, 12)),
    ("Conv2d", (1, 384, 12, 12)), ("ReLU", (1, 384, 12, 12)),
    ("Conv2d", (1, 384, 12, 12)), ("ReLU", (1, 384, 12, 12)),
    ("Conv2d", (1, 256, 12, 12)), ("ReLU", (1, 256, 12, 12)), ("MaxPool2d", (1, 256, 5, 5)),
    ("Flatten", (1, 6400)), ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)),
    ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)), ("Linear", (1, 10)),
]

VGG11 = [  # the seed iterates the top level: one row per vgg_block
    ("Sequential", (1, 64, 112, 112)), ("Sequential", (1, 128, 56, 56)), ("Sequential", (1, 256, 28, 28)),
    ("Sequential", (1, 512, 14, 14)), ("Sequential", (1, 512, 7, 7)),
    ("Flatten", (1, 25088)), ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)),
    ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)), ("Linear", (1, 10)),
]


def vgg11_ratio(ratio: int) -> list:
    """The seed's shapes with channels divided by ratio (its `small_conv_arch`)."""
    out = []
    for cls, shape in VGG11:
        if cls == "Sequential":
            shape = (1, shape[1] // ratio, *shape[2:])
        elif cls == "Flatten":
            shape = (1, shape[1] // ratio)
        out.append((cls, shape))
    return out


PARAMS = {"lenet": 61_706, "alexnet": 46_764_746, "vgg": 128_806_154, "vgg-ratio4": 43_093_322}


def lenet() -> nn.Sequential:
    """d2l's LeNet (with the sigmoid after linear(84)), without the seed's Reshape."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def alexnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(), nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=0.5), nn.Linear(4096, 10))


def vgg(ratio: int = 1) -> nn.Sequential:
    def vgg_block(num_convs, in_channels, out_channels):
        layers = []
        for _ in range(num_convs):
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = out_channels
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        return nn.Sequential(*layers)

    blocks, in_channels = [], 1
    for num_convs, out_channels in ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)):
        blocks.append(vgg_block(num_convs, in_channels, out_channels // ratio))
        in_channels = out_channels // ratio
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(in_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 10))


# d2l's modern CNNs (chapter 8), as their notebooks print them at the top level.
NIN = [
    ("Sequential", (1, 96, 54, 54)), ("MaxPool2d", (1, 96, 26, 26)),
    ("Sequential", (1, 256, 26, 26)), ("MaxPool2d", (1, 256, 12, 12)),
    ("Sequential", (1, 384, 12, 12)), ("MaxPool2d", (1, 384, 5, 5)),
    ("Dropout", (1, 384, 5, 5)), ("Sequential", (1, 10, 5, 5)),
    ("AdaptiveAvgPool2d", (1, 10, 1, 1)), ("Flatten", (1, 10)),
]
GOOGLENET = [
    ("Sequential", (1, 64, 24, 24)), ("Sequential", (1, 192, 12, 12)), ("Sequential", (1, 480, 6, 6)),
    ("Sequential", (1, 832, 3, 3)), ("Sequential", (1, 1024)), ("Linear", (1, 10)),
]
RESNET18 = [
    ("Sequential", (1, 64, 24, 24)), ("Sequential", (1, 64, 24, 24)), ("Sequential", (1, 128, 12, 12)),
    ("Sequential", (1, 256, 6, 6)), ("Sequential", (1, 512, 3, 3)),
    ("AdaptiveAvgPool2d", (1, 512, 1, 1)), ("Flatten", (1, 512)), ("Linear", (1, 10)),
]
DENSENET = [  # channels: 64 + 4 * 32 = 192, halved to 96, + 128 = 224, 112, 240, 120, 248
    ("Sequential", (1, 64, 24, 24)),
    ("Sequential", (1, 192, 24, 24)), ("Sequential", (1, 96, 12, 12)),
    ("Sequential", (1, 224, 12, 12)), ("Sequential", (1, 112, 6, 6)),
    ("Sequential", (1, 240, 6, 6)), ("Sequential", (1, 120, 3, 3)),
    ("Sequential", (1, 248, 3, 3)), ("BatchNorm2d", (1, 248, 3, 3)), ("ReLU", (1, 248, 3, 3)),
    ("AdaptiveAvgPool2d", (1, 248, 1, 1)), ("Flatten", (1, 248)), ("Linear", (1, 10)),
]
LENET_BN = [
    ("Conv2d", (1, 6, 24, 24)), ("BatchNorm2d", (1, 6, 24, 24)), ("Sigmoid", (1, 6, 24, 24)),
    ("AvgPool2d", (1, 6, 12, 12)), ("Conv2d", (1, 16, 8, 8)), ("BatchNorm2d", (1, 16, 8, 8)),
    ("Sigmoid", (1, 16, 8, 8)), ("AvgPool2d", (1, 16, 4, 4)), ("Flatten", (1, 256)),
    ("Linear", (1, 120)), ("BatchNorm1d", (1, 120)), ("Sigmoid", (1, 120)),
    ("Linear", (1, 84)), ("BatchNorm1d", (1, 84)), ("Sigmoid", (1, 84)), ("Linear", (1, 10)),
]

# d2l's recipes for them: (resize, batch, lr, epochs)
MODERN_RECIPES = {
    "nin": (224, 128, 0.1, 10), "googlenet": (96, 128, 0.1, 10), "resnet18": (96, 256, 0.05, 10),
    "densenet": (96, 256, 0.1, 10), "lenet-bn": (None, 256, 1.0, 10),
}
