"""A tiny Fashion-MNIST-shaped IDX dataset for the pipeline tests."""

import gzip
import pathlib
import struct

import numpy as np


def fake_idx_dir(path: pathlib.Path, n_train: int = 240, n_test: int = 60,
                 *, noise_max: int = 40, black_background: bool = False,
                 invert: bool = False) -> pathlib.Path:
  """Writes gzipped IDX train/t10k files under ``path`` and returns it.

  Every image has a class-dependent bright bar, so that a tiny model learns
  it in a few steps, over uniform noise in [0, ``noise_max``) that fills the
  image or, with ``black_background``, only its centre (a sparse image
  like Fashion-MNIST's). ``invert`` gives other images of the same shape.
  """
  path.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = (np.arange(n) % 10).astype(np.uint8)
    if black_background:
      images = np.zeros((n, 28, 28), np.uint8)
      images[:, 6:22, 6:22] = rng.integers(0, noise_max, (n, 16, 16))
      for c in range(10):
        images[labels == c, c + 6: c + 8, 6:22] = 220
    else:
      images = rng.integers(0, noise_max, (n, 28, 28)).astype(np.uint8)
      for c in range(10):
        images[labels == c, 2 * c + 2: 2 * c + 5, 4:24] = 220
    if invert:
      images = 255 - images
    with gzip.open(path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
      f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
      f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
  return path
