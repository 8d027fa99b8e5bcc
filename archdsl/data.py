"""Finding the training data offline first and loading it as uint8 tensors.

The trainer keeps a whole data set on its device as uint8 (Fashion-MNIST is 47 MB), so
this module's one job is to produce `(N, C, H, W)` uint8 images and `(N,)` int64 labels.

Where a data set is looked for, in order (the first that has it wins):

1. `--data-root DIR` (`data_root=` in Python),
2. the directory in the environment variable `ARCHDSL_DATA`,
3. the per-user cache, `$XDG_CACHE_HOME/archdsl/data` (default `~/.cache/archdsl/data`),
4. for fashion-mnist, Debian's `dataset-fashion-mnist` files in /usr/share/datasets/fashion-mnist,
5. torchvision's download, into `--data-root` if given, else into the per-user cache.

Each directory may hold torchvision's layout (`DIR/FashionMNIST/raw/*-ubyte`,
`DIR/cifar-10-batches-py/`) or the four MNIST-style files flat, gzipped or not. Flat files
are decompressed once into torchvision's raw layout in the cache (Debian recompresses the
.gz files, so torchvision's md5 check of them fails; the decompressed files need no check).

This is the only module that imports torchvision, and only inside functions and only for
CIFAR-10 and downloads, so that importing archdsl (or `archdsl --help`) stays cheap.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import ArchError
from .plan import check_dataset
from .cache import user_cache_dir

ENV_VAR = "ARCHDSL_DATA"
OFFLINE_ENV_VAR = "ARCHDSL_OFFLINE"  # set to 1 to never download

# Where system packages put data sets; tests replace this to simulate a bare machine.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

# name -> torchvision class name (also its folder under the root for the MNIST family)
_TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"

_HOW_TO_GET = {
    "fashion-mnist": ("on Debian/Ubuntu: sudo apt install dataset-fashion-mnist; or, on a machine with internet, "
                      "run once without --no-download to fetch it into the cache; or put torchvision's files in "
                      "DIR/FashionMNIST/raw/ (or the four *-ubyte.gz files in DIR) and pass --data-root DIR"),
    "mnist": ("on a machine with internet, run once without --no-download to fetch it into the cache; or put "
              "torchvision's files in DIR/MNIST/raw/ (or the four *-ubyte.gz files in DIR) and pass --data-root DIR"),
    "cifar10": ("on a machine with internet, run once without --no-download to fetch it into the cache; or put "
                "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) in DIR and pass --data-root DIR"),
}

SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_CLASSES = 2048, 512, 10
# Each data set's image shape and its train and test sizes, known before it is read: the memory
# check runs first.
SIZES: dict[str, tuple[tuple[int, ...], int, int]] = {
    "fashion-mnist": ((1, 28, 28), 60_000, 10_000),
    "mnist": ((1, 28, 28), 60_000, 10_000),
    "cifar10": ((3, 32, 32), 50_000, 10_000),
}


@dataclass(frozen=True)
class ImageData:
    """A labelled image set as tensors: uint8 images in [0, 255] and int64 labels."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    classes: tuple[str, ...]
    source: str  # where it was read from, for the run's config

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image's shape without the batch: (C, H, W)."""
        return tuple(self.train_x.shape[1:])

    def limit(self, n: int | None) -> ImageData:
        """Keep only the first n training examples (the test set stays whole)."""
        if n is None or n >= len(self.train_y):
            return self
        return replace(self, train_x=self.train_x[:n], train_y=self.train_y[:n])

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on `device`, still uint8: batches are then slices, never host copies."""
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))


def planned(name: str, shape: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], int, int]:
    """(image shape, train size, test size) of a data set, without reading it; `shape` as for `load`."""
    check_dataset(name)
    if name == "synthetic":
        return tuple(shape or (1, 28, 28)), SYNTHETIC_TRAIN, SYNTHETIC_TEST
    return SIZES[name]


def cache_dir() -> Path:
    """The per-user data cache: $XDG_CACHE_HOME/archdsl/data, or ~/.cache/archdsl/data."""
    return user_cache_dir() / "data"


def load(name: str, data_root: str | os.PathLike[str] | None = None, *, download: bool = True,
         shape: tuple[int, ...] | None = None) -> ImageData:
    """Load a data set as uint8 tensors on the CPU, looking offline first (see the module doc).

    `shape` is for `synthetic` only: the (C, H, W) of its images (default 1x28x28).
    Raises ArchError listing every place looked at, and how to get the data, when it is nowhere.
    """
    check_dataset(name)
    if name == "synthetic":
        return synthetic(shape or (1, 28, 28))
    root = torchvision_root(name, data_root, download=download)
    try:
        return _read_torchvision(name, root)
    except ArchError:
        raise
    except Exception as e:  # a truncated or damaged file: say which and what to do
        raise ArchError(f"cannot read {name} from {root}: {type(e).__name__}: {e}".rstrip(": "),
                        notes=(f"delete {_layout_path(name, root)} so it is found again or fetched anew",)) from None


def torchvision_root(name: str, data_root: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """A directory that holds `name` in torchvision's layout, so `torchvision.datasets.X(root)` loads it.

    Follows the lookup order of the module doc; flat files are decompressed into the cache.
    """
    check_dataset(name)
    if name == "synthetic":
        raise ArchError("the synthetic data set is made in memory; it has no files")
    looked: list[str] = []
    for label, path in _candidates(name, data_root):
        if path is None:
            looked.append(f"{label}: not set")
            continue
        path = Path(path).expanduser()
        if _has_layout(name, path):
            return path
        flat = _flat_source(name, path)
        if flat is not None:
            try:
                return _install(name, flat)
            except OSError as e:
                looked.append(f"{label} {path}: found files but could not unpack them ({e})")
                continue
        looked.append(f"{label} {path}: {_missing(name, path)}")

    offline = os.environ.get(OFFLINE_ENV_VAR, "").strip() not in ("", "0")
    if download and not offline:
        target = Path(data_root).expanduser() if data_root is not None else cache_dir()
        problem = _download(name, target)
        if problem is None:
            return target
        looked.append(f"download into {target}: failed ({problem})")
    else:
        why = f"${OFFLINE_ENV_VAR} is set" if offline else "--no-download"
        looked.append(f"download: not tried ({why})")
    raise ArchError(f"cannot find the {name} data set; looked in:\n" + "\n".join(f"    {w}" for w in looked),
                    notes=(f"to get it: {_HOW_TO_GET[name]}",))


def _candidates(name: str, data_root) -> list[tuple[str, Path | str | None]]:
    env = os.environ.get(ENV_VAR) or None
    out: list[tuple[str, Path | str | None]] = []
    if data_root is not None:
        out.append(("--data-root", data_root))
    out += [(f"${ENV_VAR}", env), ("per-user cache", cache_dir())]
    out += [("system package", d) for d in SYSTEM_DIRS.get(name, ())]
    return out


def _layout_path(name: str, root: Path) -> Path:
    if name == "cifar10":
        return root / _CIFAR_FOLDER
    return root / _TORCHVISION[name] / "raw"


def _has_layout(name: str, root: Path) -> bool:
    where = _layout_path(name, root)
    if name == "cifar10":
        return (where / "batches.meta").is_file() and (where / "test_batch").is_file()
    return all((where / f).is_file() for f in _MNIST_FILES)


def _missing(name: str, root: Path) -> str:
    if not root.is_dir():
        return "no such directory"
    if name == "cifar10":
        return f"no {_CIFAR_FOLDER}/ or {_CIFAR_ARCHIVE}"
    return f"no {_TORCHVISION[name]}/raw/{_MNIST_FILES[0]} (nor the *-ubyte.gz files)"


def _flat_source(name: str, root: Path) -> dict[str, Path] | Path | None:
    """Files that need unpacking before torchvision can read them, if `root` has them."""
    if name == "cifar10":
        archive = root / _CIFAR_ARCHIVE
        return archive if archive.is_file() else None
    for folder in (root, root / _TORCHVISION[name] / "raw"):
        found: dict[str, Path] = {}
        for f in _MNIST_FILES:
            for candidate in (folder / f, folder / f"{f}.gz"):
                if candidate.is_file():
                    found[f] = candidate
                    break
        if len(found) == len(_MNIST_FILES):
            return found
    return None


def _install(name: str, source: dict[str, Path] | Path) -> Path:
    """Unpack flat files into torchvision's layout in the cache (a temporary folder if it is read-only)."""
    try:
        return _install_into(name, source, cache_dir())
    except OSError:
        return _install_into(name, source, Path(tempfile.mkdtemp(prefix="archdsl-data-")))


def _install_into(name: str, source: dict[str, Path] | Path, root: Path) -> Path:
    if isinstance(source, Path):  # the CIFAR-10 archive
        from torchvision.datasets.utils import extract_archive

        root.mkdir(parents=True, exist_ok=True)
        extract_archive(str(source), str(root))
        return root
    raw = _layout_path(name, root)
    raw.mkdir(parents=True, exist_ok=True)
    for f, src in source.items():
        dest = raw / f
        tmp = raw / f".{f}.{os.getpid()}.tmp"
        try:
            with (gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.replace(tmp, dest)  # atomic: a concurrent run sees the whole file or none
        finally:
            tmp.unlink(missing_ok=True)
    return root


def _download(name: str, root: Path) -> str | None:
    """torchvision's download into `root`; None when it worked, else the reason in a few words."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION[name])
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # no network, refused, damaged: any of them means "not here"
        text = " ".join(str(e).split())
        if len(text) > 160:
            text = text[:160].rsplit(" ", 1)[0] + " ..."
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return None if _has_layout(name, root) else "the files did not appear"


# Class names, in label order, as torchvision names them.
_CLASSES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(f"{d} - {w}" for d, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))),
}


def _read_torchvision(name: str, root: Path) -> ImageData:
    """Read a data set from torchvision's layout under `root`.

    The MNIST family is read directly (its idx files are a header and raw bytes): importing
    torchvision costs about 2 s, most of it torch._dynamo pulled in by torchvision.ops.
    """
    raw = _layout_path(name, root)
    if name != "cifar10":
        train_x, train_y, test_x, test_y = (_read_idx(raw / f) for f in _MNIST_FILES)
        return ImageData(name, train_x.unsqueeze(1), train_y.to(torch.int64), test_x.unsqueeze(1),  # (N, 1, H, W)
                         test_y.to(torch.int64), _CLASSES[name], str(raw))
    import torchvision.datasets as tvd

    train, test = tvd.CIFAR10(str(root), train=True, download=False), tvd.CIFAR10(str(root), train=False, download=False)

    def images(ds):  # (N, H, W, C) numpy -> (N, C, H, W)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

    return ImageData(name, images(train), torch.as_tensor(train.targets, dtype=torch.int64), images(test),
                     torch.as_tensor(test.targets, dtype=torch.int64), tuple(train.classes), str(raw))


def _read_idx(path: Path) -> torch.Tensor:
    """An idx file of unsigned bytes (MNIST's format): magic 0x0000 08 NDIM, NDIM big-endian sizes, the data."""
    data = path.read_bytes()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise ValueError(f"{path.name} is not an idx file of unsigned bytes")
    ndim = data[3]
    head = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for d in dims:
        count *= d
    if len(data) != head + count:
        raise ValueError(f"{path.name} should hold {head + count:,} bytes for shape {tuple(dims)} but has {len(data):,}")
    return torch.frombuffer(bytearray(data[head:]), dtype=torch.uint8).view(*dims)


def synthetic(shape: tuple[int, ...] = (1, 28, 28), n_train: int = SYNTHETIC_TRAIN, n_test: int = SYNTHETIC_TEST,
              classes: int = SYNTHETIC_CLASSES, seed: int = 0) -> ImageData:
    """A small learnable data set made in memory, for smoke tests: no files, no download.

    Each class has a smooth random pattern; an example is its class pattern plus noise.
    The same arguments always give the same data (it has its own generator).
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, *shape, generator=g)  # (K, C, H, W) for images
    if len(shape) == 3:  # smooth patterns survive resizing and pooling
        coarse = torch.rand(classes, shape[0], 4, 4, generator=g)
        protos = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
        x = 0.7 * protos[y] + 0.3 * torch.rand(n, *shape, generator=g)
        return (x * 255).round_().clamp_(0, 255).to(torch.uint8), y

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    return ImageData("synthetic", train_x, train_y, test_x, test_y,
                     tuple(f"class {k}" for k in range(classes)), "made in memory")
