"""Finding and loading data sets offline first, and resizing on the device like PIL."""

import gzip
import os
import struct
from pathlib import Path

import pytest
import torch

from archdsl import data as D
from archdsl.errors import ArchError
from archdsl.trainer import images_to_input, resized_hw

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
HAVE_DEBIAN = (DEBIAN / "train-images-idx3-ubyte.gz").is_file()
NO_DEBIAN = "real Fashion-MNIST is absent: install Debian's dataset-fashion-mnist to run this test"


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A machine with no data anywhere: empty cache, no $ARCHDSL_DATA, no system package, no network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setenv(D.OFFLINE_ENV_VAR, "1")
    monkeypatch.setattr(D, "SYSTEM_DIRS", {})
    return tmp_path


def write_mnist(folder: Path, n_train: int, n_test: int, fill: int, gz: bool = False) -> Path:
    """Tiny idx files in MNIST's format; every pixel is `fill`, labels count 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = struct.pack(">IIII", 0x0803, n, 28, 28) + bytes([fill]) * (n * 28 * 28)
        labels = struct.pack(">II", 0x0801, n) + bytes(i % 10 for i in range(n))
        for name, blob in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (folder / name).write_bytes(blob)
    return folder


def test_synthetic_is_deterministic_balanced_and_uint8():
    a, b = D.synthetic(), D.synthetic()
    assert a.train_x.shape == (D.SYNTHETIC_TRAIN, 1, 28, 28) and a.test_x.shape == (D.SYNTHETIC_TEST, 1, 28, 28)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.bincount(a.train_y).tolist() == [D.SYNTHETIC_TRAIN // 10 + (k < D.SYNTHETIC_TRAIN % 10)
                                                  for k in range(10)]
    assert not torch.equal(a.train_x[:100], D.synthetic(seed=1).train_x[:100])
    assert int(a.train_x.max()) > 200 and int(a.train_x.min()) < 50  # spans the range, like real images


def test_synthetic_takes_the_requested_shape():
    d = D.load("synthetic", shape=(3, 32, 40))
    assert d.image_shape == (3, 32, 40) and d.test_x.shape[1:] == (3, 32, 40)
    assert D.planned("synthetic", (3, 32, 40)) == ((3, 32, 40), len(d.train_y), len(d.test_y))  # known unread


def test_each_data_sets_size_is_known_before_it_is_read(bare):
    """What the memory check counts on before reading (the real Fashion-MNIST test checks it against the files)."""
    assert D.planned("fashion-mnist") == D.planned("mnist") == ((1, 28, 28), 60_000, 10_000)
    assert D.planned("cifar10") == ((3, 32, 32), 50_000, 10_000)
    with pytest.raises(ArchError, match="unknown dataset"):
        D.planned("imagenet")


def test_limit_keeps_the_first_training_examples_and_the_whole_test_set():
    d = D.synthetic()
    small = d.limit(100)
    assert torch.equal(small.train_x, d.train_x[:100]) and torch.equal(small.train_y, d.train_y[:100])
    assert small.test_x is d.test_x and d.limit(10**9) is d


def test_lookup_order_data_root_then_env_then_cache(bare, monkeypatch):
    for name, fill in (("root", 10), ("env", 20)):
        write_mnist(bare / name / "MNIST" / "raw", 12, 5, fill)
    write_mnist(D.cache_dir() / "MNIST" / "raw", 12, 5, 30)
    monkeypatch.setenv(D.ENV_VAR, str(bare / "env"))
    assert int(D.load("mnist", bare / "root").train_x[0, 0, 0, 0]) == 10
    assert int(D.load("mnist").train_x[0, 0, 0, 0]) == 20
    monkeypatch.delenv(D.ENV_VAR)
    d = D.load("mnist")
    assert int(d.train_x[0, 0, 0, 0]) == 30
    assert d.train_x.shape == (12, 1, 28, 28) and d.test_y.tolist() == [0, 1, 2, 3, 4]


def test_flat_gz_files_like_debians_are_unpacked_into_torchvisions_layout(bare, monkeypatch):
    system = write_mnist(bare / "usr-share", 8, 4, 77, gz=True)
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    d = D.load("fashion-mnist")
    raw = D.cache_dir() / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(D._MNIST_FILES)  # no temporary files left
    assert d.train_x.shape == (8, 1, 28, 28) and int(d.train_x.max()) == 77 and d.source == str(raw)
    for f in system.iterdir():  # from now on the cache has it
        f.unlink()
    assert torch.equal(D.load("fashion-mnist").train_x, d.train_x)


def test_flat_files_given_with_data_root_are_found_too(bare):
    write_mnist(bare / "mine", 6, 3, 5, gz=False)
    assert len(D.load("fashion-mnist", bare / "mine").train_y) == 6


def test_missing_data_is_one_error_listing_every_place_and_the_fix(bare, monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion-mnist": (bare / "nowhere",)})
    with pytest.raises(ArchError) as info:
        D.load("fashion-mnist", bare / "given", download=False)
    text = info.value.render()
    assert text.startswith("error: cannot find the fashion-mnist data set; looked in:")
    for place in (f"--data-root {bare / 'given'}: no such directory", f"${D.ENV_VAR}: not set",
                  f"per-user cache {D.cache_dir()}", f"system package {bare / 'nowhere'}", "download: not tried"):
        assert place in text
    assert "sudo apt install dataset-fashion-mnist" in text and "--data-root DIR" in text


def test_a_failed_download_is_listed_with_its_reason(bare, monkeypatch):
    monkeypatch.delenv(D.OFFLINE_ENV_VAR)
    calls = []
    monkeypatch.setattr(D, "_download", lambda name, root: calls.append((name, root)) or "URLError: no network")
    with pytest.raises(ArchError) as info:
        D.load("cifar10")
    assert calls == [("cifar10", D.cache_dir())]
    assert f"download into {D.cache_dir()}: failed (URLError: no network)" in str(info.value)
    assert "cifar-10-python.tar.gz" in info.value.render()


def test_offline_environment_never_downloads(bare, monkeypatch):
    monkeypatch.setattr(D, "_download", lambda name, root: pytest.fail("tried to download"))
    with pytest.raises(ArchError, match=rf"download: not tried \(\${D.OFFLINE_ENV_VAR} is set\)"):
        D.load("mnist")


def test_a_damaged_file_says_which_and_what_to_do(bare):
    raw = write_mnist(bare / "root" / "MNIST" / "raw", 10, 5, 1)
    data = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(data[:1000])  # truncated
    with pytest.raises(ArchError) as info:
        D.load("mnist", bare / "root")
    text = info.value.render()
    assert f"cannot read mnist from {bare / 'root'}" in text and f"delete {raw}" in text


def test_unknown_dataset_suggests_the_name():
    with pytest.raises(ArchError, match="unknown dataset 'fashion_mnist'; did you mean 'fashion-mnist'"):
        D.load("fashion_mnist")


@pytest.mark.skipif(not HAVE_DEBIAN, reason=NO_DEBIAN)
def test_real_fashion_mnist_loads_from_debians_files(real_fashion_mnist):
    d = real_fashion_mnist
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert D.planned("fashion-mnist") == (d.image_shape, len(d.train_y), len(d.test_y))
    assert d.train_x.dtype == torch.uint8 and int(d.train_x.max()) == 255
    assert d.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published order
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.classes[0] == "T-shirt/top" and len(d.classes) == 10


@pytest.fixture(scope="module")
def real_fashion_mnist(tmp_path_factory):
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return D.load("fashion-mnist", download=False)
    finally:
        if old is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = old


# Resizing on the device vs transforms.Resize + ToTensor in PIL -----------------

def pil_reference(images: torch.Tensor, size: int) -> torch.Tensor:
    """What the seeds' DataLoader gives: PIL Resize(size) then ToTensor, image by image."""
    from PIL import Image
    from torchvision import transforms

    t = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    mode = "L" if images.shape[1] == 1 else "RGB"
    out = []
    for x in images:
        arr = x[0].numpy() if mode == "L" else x.permute(1, 2, 0).numpy()
        out.append(t(Image.fromarray(arr, mode=mode)))
    return torch.stack(out)


ONE_LEVEL = 1 / 255 + 1e-6  # PIL rounds to 8 bits (twice, one pass per axis); we keep floats


def sample_images() -> torch.Tensor:
    if HAVE_DEBIAN:
        with gzip.open(DEBIAN / "t10k-images-idx3-ubyte.gz", "rb") as f:
            f.read(16)
            raw = f.read(32 * 28 * 28)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(32, 1, 28, 28)
    return D.synthetic(n_train=32, n_test=1).train_x


@pytest.mark.parametrize("size", [224, 96, 32, 20, 13])
def test_device_resize_matches_pil_within_one_level(size):
    images = sample_images()  # (32, 1, 28, 28) uint8: real Fashion-MNIST when installed
    ours = images_to_input(images, resized_hw(28, 28, size))
    ref = pil_reference(images, size)
    assert ours.shape == ref.shape == (32, 1, size, size) and ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= ONE_LEVEL
    assert (ours - ref).abs().mean().item() < 0.25 / 255  # mostly closer than the rounding


@pytest.mark.parametrize("size", [64, 24, 17])
def test_device_resize_matches_pil_for_rgb_and_non_square_images(size):
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(6, 3, 8, 12, generator=g)  # smooth images, and plain noise
    smooth = (torch.nn.functional.interpolate(coarse, size=(32, 48), mode="bilinear") * 255).round().to(torch.uint8)
    noise = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8, generator=g)
    images = torch.cat([smooth, noise])
    ref = pil_reference(images, size)
    ours = images_to_input(images, resized_hw(32, 48, size))
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= ONE_LEVEL


def test_no_resize_is_totensor_exactly():
    images = sample_images()
    from torchvision import transforms

    ref = torch.stack([transforms.ToTensor()(x[0].numpy()) for x in images])
    assert torch.equal(images_to_input(images), ref)


def test_resized_hw_is_transforms_resize_with_an_int():
    assert resized_hw(28, 28, 224) == (224, 224)
    assert resized_hw(32, 48, 24) == (24, 36) and resized_hw(48, 32, 24) == (36, 24)
    assert resized_hw(30, 47, 10) == (10, 15)  # int() truncates, as torchvision does


def test_the_mnist_family_loads_without_importing_torchvision(bare):
    """torchvision's import costs ~2 s (it pulls in torch._dynamo); idx files need none of it."""
    import subprocess
    import sys

    write_mnist(bare / "root" / "FashionMNIST" / "raw", 12, 5, 7)
    code = ("import sys; from archdsl import data as D; d = D.load('fashion-mnist', sys.argv[1]); "
            "print('torchvision' in sys.modules, tuple(d.train_x.shape), d.classes[0], d.classes[9])")
    out = subprocess.run([sys.executable, "-c", code, str(bare / "root")], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=1)
    assert out == ["False", "(12, 1, 28, 28) T-shirt/top Ankle boot\n"]


@pytest.mark.parametrize("damage", ["magic", "short"])
def test_a_damaged_idx_file_names_the_file_and_the_fix(bare, damage):
    raw = write_mnist(bare / "root" / "MNIST" / "raw", 12, 5, 7)
    f = raw / "t10k-labels-idx1-ubyte"
    data = f.read_bytes()
    f.write_bytes(b"\x00\x00\x09\x01" + data[4:] if damage == "magic" else data[:-2])
    with pytest.raises(ArchError) as info:
        D.load("mnist", bare / "root")
    text = info.value.render()
    why = "is not an idx file of unsigned bytes" if damage == "magic" else "should hold 13 bytes for shape (5,) but has 11"
    assert "cannot read mnist" in text and f"t10k-labels-idx1-ubyte {why}" in text
    assert f"delete {raw}" in text
