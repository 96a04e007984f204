import gzip
import struct

import numpy as np
import pytest
import torch

from relcache.data import CLASS_NAMES, load_fashion_mnist, to_model_range, to_uint8
from relcache.data.fashion_mnist import DEFAULT_ROOT, IMAGES_MAGIC, LABELS_MAGIC, read_idx


def write_idx(path, magic, array, *, gz, drop_bytes=0):
    """Write an unsigned-byte IDX file (optionally gzip'd, optionally truncated)."""
    array = np.asarray(array, dtype=np.uint8)
    data = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    data += array.tobytes()
    if drop_bytes:
        data = data[:-drop_bytes]
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_split(root, prefix="t10k", n_images=5, n_labels=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n_labels,), dtype=np.uint8)
    img_path = write_idx(root / f"{prefix}-images-idx3-ubyte", IMAGES_MAGIC, images, gz=gz)
    lbl_path = write_idx(root / f"{prefix}-labels-idx1-ubyte", LABELS_MAGIC, labels, gz=gz)
    return images, labels, img_path, lbl_path


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_reads_synthetic_idx(tmp_path, gz, split, prefix):
    images, labels, _, _ = make_split(tmp_path, prefix, gz=gz)
    x, y = load_fashion_mnist(split, root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (5, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (5,)
    assert np.array_equal(x.numpy(), images)
    assert np.array_equal(y.numpy(), labels.astype(np.int64))


def test_root_from_env_var(tmp_path, monkeypatch):
    images, _, _, _ = make_split(tmp_path)
    monkeypatch.setenv("RELCACHE_FASHION_MNIST", str(tmp_path))
    x, _ = load_fashion_mnist("test")
    assert np.array_equal(x.numpy(), images)


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val", root=tmp_path)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("train", root=tmp_path)
    message = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "RELCACHE_FASHION_MNIST" in message


@pytest.mark.parametrize("gz", [True, False])
def test_bad_magic(tmp_path, gz):
    make_split(tmp_path, gz=gz)
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", IMAGES_MAGIC, np.zeros(5), gz=gz)
    with pytest.raises(ValueError, match="bad magic") as info:
        load_fashion_mnist("test", root=tmp_path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated(tmp_path, gz):
    make_split(tmp_path, gz=gz)
    images = np.zeros((5, 28, 28))
    path = write_idx(
        tmp_path / "t10k-images-idx3-ubyte", IMAGES_MAGIC, images, gz=gz, drop_bytes=100
    )
    with pytest.raises(ValueError, match="truncated") as info:
        load_fashion_mnist("test", root=tmp_path)
    assert path.name in str(info.value)


def test_truncated_header(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">i", IMAGES_MAGIC) + b"\x00\x00")
    with pytest.raises(ValueError, match="truncated header"):
        read_idx(path, IMAGES_MAGIC)


def test_count_mismatch(tmp_path):
    make_split(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(ValueError, match="count mismatch"):
        load_fashion_mnist("test", root=tmp_path)


def test_corrupt_gzip(tmp_path):
    make_split(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist("test", root=tmp_path)


def test_range_conversion_round_trip():
    x = torch.arange(256, dtype=torch.uint8).repeat(4)[: 28 * 28].reshape(1, 28, 28)
    y = to_model_range(x)
    assert y.shape == (1, 1, 28, 28) and y.dtype == torch.float32
    assert y.min() == -1.0 and y.max() == 1.0
    assert torch.equal(to_uint8(y), x.unsqueeze(1))
    assert torch.equal(
        to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8)
    )
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(y)


def test_class_names():
    assert (
        len(CLASS_NAMES) == 10
        and CLASS_NAMES[0] == "T-shirt/top"
        and CLASS_NAMES[9] == "Ankle boot"
    )


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist not installed",
)
def test_installed_test_split():
    x, y = load_fashion_mnist("test", root=DEFAULT_ROOT)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
