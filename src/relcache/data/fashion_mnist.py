"""Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist`` layout).

The reader accepts gzip-compressed (``*.gz``) or raw IDX files and validates the magic number,
the declared dimensions against the payload size, and that images and labels have the same count.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "RELCACHE_FASHION_MNIST"

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def resolve_root(root: str | Path | None = None) -> Path:
    """The data directory: ``root`` if given, else ``$RELCACHE_FASHION_MNIST``, else Debian's."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_ROOT


def _find_file(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        path = root / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the data with "
        f"`sudo apt-get install dataset-fashion-mnist`, or set {ENV_VAR} / pass root= to a "
        "directory holding the four IDX files."
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read file ({exc})") from exc


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read one unsigned-byte IDX file and return its array; ``ValueError`` if it is corrupt."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated header ({len(data)} bytes)")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        raise ValueError(f"{path}: bad magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    expected = int(np.prod(dims))
    payload = len(data) - header
    if payload != expected:
        problem = "truncated" if payload < expected else "trailing bytes"
        raise ValueError(
            f"{path}: {problem}: header declares dims {dims} ({expected} bytes), "
            f"payload has {payload} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split as ``(images uint8 (N, 28, 28), labels int64 (N,))``."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be one of {sorted(_SPLIT_PREFIX)}, got {split!r}")
    directory = resolve_root(root)
    prefix = _SPLIT_PREFIX[split]
    images_path = _find_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(labels_path, LABELS_MAGIC)  # (N,)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} / {labels_path}: count mismatch, {images.shape[0]} images "
            f"but {labels.shape[0]} labels"
        )
    if int(labels.max(initial=0)) >= len(CLASS_NAMES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)  # (N, 1, H, W)
    if images.ndim != 4:
        raise ValueError(f"expected shape (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 in [0, 255] (clamped, rounded); shape is kept."""
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
