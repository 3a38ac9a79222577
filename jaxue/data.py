"""Datasets, validation, batching and augmentation.

Images are stored as uint8 NHWC numpy arrays with int32 labels (see
docs/design.md, "Conventions"); inside jit they become float32 in [0, 1] via
`to_float`.

`load` reads the standard raw files offline (IDX for MNIST / Fashion-MNIST, the
CIFAR binary version, SVHN's .mat files; never Python pickles) and otherwise
falls back to `tensorflow_datasets`, which the optional ``tfds`` extra installs
(``pip install "jaxue[tfds]"``). Augmentations are pure, key-driven and
jit-compatible.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import math
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a supported dataset.

  Attributes:
    name: canonical jaxue name.
    num_classes: number of label classes.
    image_shape: (H, W, C) of one image.
    tfds_name: name of the dataset in `tensorflow_datasets`.
    file_format: offline reader: 'idx', 'cifar10', 'cifar100' or 'svhn'.
    system_dirs: standard locations searched when no data_dir is given.
    how_to_get: human-readable description of the raw files and their source.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  tfds_name: str
  file_format: str
  system_dirs: tuple[str, ...] = ()
  how_to_get: str = ''

  def __getitem__(self, field: str) -> Any:
    """Mapping-style access, e.g. `DATASETS['mnist']['num_classes']`."""
    return getattr(self, field)


_IDX_FILES = ('the IDX files train-images-idx3-ubyte(.gz), '
              'train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and '
              't10k-labels-idx1-ubyte(.gz)')

DATASETS: dict[str, DatasetInfo] = {
    'mnist': DatasetInfo(
        'mnist', 10, (28, 28, 1), 'mnist', 'idx',
        ('/usr/share/datasets/mnist',),
        f'{_IDX_FILES} of the MNIST distribution'),
    'fashion_mnist': DatasetInfo(
        'fashion_mnist', 10, (28, 28, 1), 'fashion_mnist', 'idx',
        ('/usr/share/datasets/fashion-mnist',),
        f'{_IDX_FILES} of Fashion-MNIST; on Debian/Ubuntu '
        '`apt-get install dataset-fashion-mnist` installs them in '
        '/usr/share/datasets/fashion-mnist'),
    'cifar10': DatasetInfo(
        'cifar10', 10, (32, 32, 3), 'cifar10', 'cifar10', (),
        'the CIFAR-10 binary version (cifar-10-batches-bin: data_batch_1.bin '
        '... data_batch_5.bin, test_batch.bin, from cifar-10-binary.tar.gz)'),
    'cifar100': DatasetInfo(
        'cifar100', 100, (32, 32, 3), 'cifar100', 'cifar100', (),
        'the CIFAR-100 binary version (cifar-100-binary: train.bin, test.bin, '
        'from cifar-100-binary.tar.gz)'),
    'svhn': DatasetInfo(
        'svhn', 10, (32, 32, 3), 'svhn_cropped', 'svhn', (),
        "SVHN's cropped-digits files train_32x32.mat and test_32x32.mat"),
}

SPLITS = ('train', 'test')


class MissingFilesError(FileNotFoundError):
  """Raised when a directory lacks the raw files of a dataset split."""


def get_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` of `name` ('-' is read as '_')."""
  key = name.strip().lower().replace('-', '_') if isinstance(name, str) else ''
  if key not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; supported: '
                     f'{", ".join(sorted(DATASETS))}')
  return DATASETS[key]


# ----------------------------------------------------------------- readers


def _read_bytes(path: pathlib.Path) -> bytes:
  raw = path.read_bytes()
  if raw[:2] == b'\x1f\x8b' or path.suffix == '.gz':
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f'{path}: corrupt gzip stream ({e})') from e
  return raw


def read_idx(path: PathLike) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (gzip-compressed or plain).

  Args:
    path: the file, e.g. `train-images-idx3-ubyte.gz`.

  Returns:
    A uint8 array with the dimensions stored in the header.

  Raises:
    ValueError: naming the file, if the magic number, type code, dimensions or
      payload length are wrong (truncated or corrupt file).
  """
  path = pathlib.Path(path)
  data = _read_bytes(path)
  if len(data) < 4 or data[:2] != b'\x00\x00':
    raise ValueError(f'{path}: not an IDX file (bad magic number)')
  if data[2] != 0x08:
    raise ValueError(f'{path}: IDX type code 0x{data[2]:02x} is not supported '
                     '(expected 0x08, unsigned byte)')
  ndim = data[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(data) < header:
    raise ValueError(f'{path}: truncated or invalid IDX header ({ndim} dims)')
  dims = tuple(int(d) for d in np.frombuffer(data, '>u4', ndim, offset=4))
  expected = math.prod(dims)
  if len(data) - header != expected:
    raise ValueError(f'{path}: IDX payload has {len(data) - header} bytes but '
                     f'the header dims {dims} need {expected} (truncated or '
                     'corrupt file)')
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _find(directory: pathlib.Path, candidates: Sequence[str]) -> pathlib.Path:
  for name in candidates:
    if (directory / name).is_file():
      return directory / name
  raise MissingFilesError(f'{directory}: none of {", ".join(candidates)}')


def _idx_names(prefix: str, kind: str, dims: int) -> list[str]:
  return [f'{prefix}-{kind}{sep}idx{dims}-ubyte{gz}'
          for sep in ('-', '.') for gz in ('.gz', '')]


def read_idx_dir(directory: PathLike, split: str) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """Reads an MNIST-style IDX split (`train-*` or `t10k-*`) from a directory."""
  directory = pathlib.Path(directory)
  prefix = 'train' if split == 'train' else 't10k'
  files, missing = {}, []
  for kind, dims in (('images', 3), ('labels', 1)):
    try:
      files[kind] = _find(directory, _idx_names(prefix, kind, dims))
    except MissingFilesError:
      missing.append(f'{prefix}-{kind}-idx{dims}-ubyte[.gz]')
  if missing:
    raise MissingFilesError(f'{directory}: missing {" and ".join(missing)}')
  images, labels = read_idx(files['images']), read_idx(files['labels'])
  if images.ndim != 3 or labels.ndim != 1:
    raise ValueError(f'{directory}: expected 3-D images and 1-D labels, got '
                     f'shapes {images.shape} and {labels.shape}')
  return images[..., None], labels.astype(np.int32)


def _read_cifar_records(path: pathlib.Path, label_bytes: int) -> tuple[
    np.ndarray, np.ndarray]:
  data = np.frombuffer(path.read_bytes(), np.uint8)
  record = label_bytes + 3 * 32 * 32
  if data.size == 0 or data.size % record:
    raise ValueError(f'{path}: {data.size} bytes is not a whole number of '
                     f'{record}-byte CIFAR records (truncated or corrupt)')
  data = data.reshape(-1, record)
  images = data[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), data[:, label_bytes - 1].astype(np.int32)


def _cifar_dir(directory: pathlib.Path, subdir: str,
               names: Sequence[str]) -> list[pathlib.Path]:
  for root in (directory, directory / subdir):
    if all((root / n).is_file() for n in names):
      return [root / n for n in names]
  missing = [n for n in names if not (directory / n).is_file()]
  raise MissingFilesError(f'{directory} (or its {subdir}/ subdirectory): '
                          f'missing {", ".join(missing)}')


def read_cifar10_dir(directory: PathLike, split: str) -> tuple[np.ndarray,
                                                              np.ndarray]:
  """Reads the CIFAR-10 binary version from `directory` or its
  `cifar-10-batches-bin` subdirectory (records: label, 3072 bytes CHW)."""
  names = ([f'data_batch_{i}.bin' for i in range(1, 6)] if split == 'train'
           else ['test_batch.bin'])
  parts = [_read_cifar_records(p, 1) for p in
           _cifar_dir(pathlib.Path(directory), 'cifar-10-batches-bin', names)]
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))


def read_cifar100_dir(directory: PathLike, split: str) -> tuple[np.ndarray,
                                                               np.ndarray]:
  """Reads the CIFAR-100 binary version from `directory` or its
  `cifar-100-binary` subdirectory; returns the fine labels."""
  (path,) = _cifar_dir(pathlib.Path(directory), 'cifar-100-binary',
                       [f'{split}.bin'])
  return _read_cifar_records(path, 2)


def read_svhn_dir(directory: PathLike, split: str) -> tuple[np.ndarray,
                                                           np.ndarray]:
  """Reads SVHN `{split}_32x32.mat` (X is HWCN; label 10 means digit 0)."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  path = _find(pathlib.Path(directory), [f'{split}_32x32.mat'])
  try:
    mat = scipy.io.loadmat(path)
    x, y = mat['X'], mat['y']
  except (KeyError, ValueError, OSError, TypeError) as e:
    raise ValueError(f'{path}: not a readable SVHN .mat file with X and y '
                     f'({e!r})') from e
  if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
    raise ValueError(f'{path}: X has shape {x.shape}, expected (32, 32, 3, N)')
  labels = np.asarray(y).reshape(-1).astype(np.int32)
  labels[labels == 10] = 0
  return np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8)), labels


_READERS = {'idx': read_idx_dir, 'cifar10': read_cifar10_dir,
            'cifar100': read_cifar100_dir, 'svhn': read_svhn_dir}


# ------------------------------------------------------------------ loading


def _default_dirs(info: DatasetInfo) -> list[pathlib.Path]:
  bases = []
  if os.environ.get('JAXUE_DATA_DIR'):
    bases.append(pathlib.Path(os.environ['JAXUE_DATA_DIR']))
  bases.append(pathlib.Path('~/.cache/jaxue').expanduser())
  names = dict.fromkeys([info.name, info.name.replace('_', '-')])
  dirs = [b / n for b in bases for n in names]
  return dirs + [pathlib.Path(d) for d in info.system_dirs]


_TFDS_EXTRA = 'pip install "jaxue[tfds]"'


def _tensorflow_available() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _import_tfds() -> Any:
  """`tensorflow_datasets`, or None when it is not installed.

  Imported only on this path: the default install leaves TFDS (and the
  tensorflow it downloads with) out; the ``tfds`` extra brings them.
  """
  try:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tensorflow_datasets


def _load_tfds(tfds: Any, info: DatasetInfo,
               split: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split with TFDS, with or without tensorflow installed."""
  if _tensorflow_available():
    images, labels = tfds.as_numpy(tfds.load(
        info.tfds_name, split=split, batch_size=-1, as_supervised=True))
    return np.asarray(images, np.uint8), np.asarray(labels, np.int32)
  # TF-free path: random access to an array_record copy of the dataset.
  source = tfds.data_source(info.tfds_name, split=split)
  n = len(source)
  images = np.empty((n, *info.image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    example = source[i]
    images[i], labels[i] = example['image'], example['label']
  return images, labels


def load(name: str, split: str,
         data_dir: PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole dataset split as uint8 NHWC images and int32 labels.

  With `data_dir`, only that directory is read (raw files, no download).
  Otherwise the raw files are looked for in `$JAXUE_DATA_DIR/<name>`,
  `~/.cache/jaxue/<name>` and the system location (e.g.
  /usr/share/datasets/fashion-mnist), then `tensorflow_datasets` is used.
  Without tensorflow installed, TFDS can only read a copy already prepared in
  the array_record format (`tfds.data_source`); with it, `tfds.load` downloads
  and prepares the dataset. TFDS is the optional ``tfds`` extra
  (``pip install "jaxue[tfds]"``); without it, data found nowhere is a
  one-line `FileNotFoundError` that names the extra.

  Args:
    name: one of `DATASETS` ('fashion-mnist' is accepted for 'fashion_mnist').
    split: 'train' or 'test'.
    data_dir: directory holding the raw files (see `DatasetInfo.how_to_get`).

  Returns:
    (images, labels): uint8 (N, H, W, C) and int32 (N,) arrays.

  Raises:
    ValueError: unknown name or split, or corrupt files.
    FileNotFoundError: the data was found nowhere; the message lists where it
      was looked for and how to get it.
  """
  info = get_info(name)
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')
  reader = _READERS[info.file_format]
  if data_dir is not None:
    try:
      images, labels = reader(data_dir, split)
    except MissingFilesError as e:
      raise FileNotFoundError(
          f'{info.name} ({split}): looked in {e}. Needed: '
          f'{info.how_to_get}. Put them there, or pass data_dir=None to '
          'search the standard locations and let tensorflow_datasets '
          f'download it ({_TFDS_EXTRA}).') from None
  else:
    searched = []
    directories = _default_dirs(info)
    for directory in directories:
      try:
        images, labels = reader(directory, split)
        break
      except MissingFilesError as e:
        searched.append(str(e))
    else:
      tfds = _import_tfds()
      if tfds is None:
        raise FileNotFoundError(
            f'{info.name} ({split}): no raw files in '
            f'{", ".join(map(str, directories))}, and tensorflow_datasets '
            f'is not installed. Needed: {info.how_to_get}; put them there '
            f'(or pass data_dir), or install the TFDS extra to download it: '
            f'{_TFDS_EXTRA}') from None
      try:
        images, labels = _load_tfds(tfds, info, split)
      except Exception as e:  # pylint: disable=broad-except
        where = '\n'.join(f'  - {s}' for s in searched)
        raise FileNotFoundError(
            f'{info.name} ({split}) not found. Searched:\n{where}\n'
            f'  - tensorflow_datasets {info.tfds_name!r} failed: '
            f'{type(e).__name__}: {e}\n'
            f'Needed: {info.how_to_get}. Put them in one of these '
            'directories (or set JAXUE_DATA_DIR, or pass data_dir); or give '
            f'TFDS network access with tensorflow installed ({_TFDS_EXTRA}), '
            'or a copy prepared with `tfds build --file_format=array_record`.'
        ) from e
  check_dataset(images, labels, num_classes=info.num_classes)
  if images.shape[1:] != info.image_shape:
    raise ValueError(f'{info.name}: images have shape {images.shape[1:]}, '
                     f'expected {info.image_shape}')
  return images, labels


# --------------------------------------------------------------- validation


def check_dataset(images: Any, labels: Any, *,
                  num_classes: int | None = None) -> None:
  """Checks that (images, labels) follow the uint8 NHWC / integer convention.

  Raises:
    ValueError: with a message saying what is wrong and how to fix it.
  """
  if not hasattr(images, 'ndim') or not hasattr(images, 'dtype'):
    images = np.asarray(images)
  if not hasattr(labels, 'ndim') or not hasattr(labels, 'dtype'):
    labels = np.asarray(labels)
  if images.ndim != 4:
    hint = (' (add a channel axis: images[..., None])' if images.ndim == 3
            else '')
    raise ValueError(f'expected uint8 NHWC images (4-D), got a {images.ndim}-D '
                     f'array of shape {images.shape}{hint}')
  if images.dtype != np.uint8:
    msg = (f'expected uint8 NHWC images, got {images.dtype} of shape '
           f'{images.shape}')
    if jnp.issubdtype(images.dtype, jnp.floating) and images.size:
      lo, hi = float(images.min()), float(images.max())
      if 0.0 <= lo and hi <= 1.0:
        msg += ('; the values lie in [0, 1]: convert with '
                '(x * 255).round().astype(np.uint8)')
    raise ValueError(msg)
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    hint = ' (one-hot? use labels.argmax(-1))' if labels.ndim == 2 else ''
    raise ValueError(f'expected 1-D integer labels, got {labels.dtype} of '
                     f'shape {labels.shape}{hint}')
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f'{labels.shape[0]} labels for {images.shape[0]} images')
  if labels.size:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
      bound = f'[0, {num_classes})' if num_classes is not None else '[0, ...)'
      raise ValueError(f'labels must lie in {bound}, got min {lo}, max {hi}')


def to_float(images: Any) -> jnp.ndarray:
  """uint8 images -> float32 in [0, 1] (jit-friendly)."""
  return jnp.asarray(images).astype(jnp.float32) / 255.0


# ----------------------------------------------------- subsets and batching


def stratified_subset(key: jax.Array, labels: Any,
                      size_or_fraction: int | float, *,
                      num_classes: int | None = None) -> np.ndarray:
  """Draws a stratified random subset without replacement.

  Per-class counts are proportional to class frequency, rounded by largest
  remainder so that they sum exactly to the requested size.

  Args:
    key: PRNG key; the same key gives the same subset.
    labels: 1-D integer labels.
    size_or_fraction: an int count in [1, N] or a float fraction in (0, 1].
    num_classes: if given, labels are checked to lie in [0, num_classes).

  Returns:
    Sorted int64 indices into `labels`.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'expected 1-D integer labels, got {labels.dtype} of '
                     f'shape {labels.shape}')
  n = labels.shape[0]
  if isinstance(size_or_fraction, (bool, np.bool_)):
    raise ValueError('size_or_fraction must be an int or a float, got a bool')
  if isinstance(size_or_fraction, (int, np.integer)):
    size = int(size_or_fraction)
  elif isinstance(size_or_fraction, (float, np.floating)):
    if not 0.0 < size_or_fraction <= 1.0:
      raise ValueError(f'fraction must be in (0, 1], got {size_or_fraction}')
    size = int(round(size_or_fraction * n))
  else:
    raise ValueError(f'size_or_fraction must be an int or a float, got '
                     f'{type(size_or_fraction).__name__}')
  if not 1 <= size <= n:
    raise ValueError(f'subset size {size} (from {size_or_fraction!r}) must be '
                     f'in [1, {n}]')
  if n and labels.min() < 0:
    raise ValueError(f'labels must be non-negative, got min {labels.min()}')
  if num_classes is not None and labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}), got max '
                     f'{labels.max()}')
  counts = np.bincount(labels).astype(np.int64)
  quota, remainder = np.divmod(counts * size, n)
  order = np.argsort(-remainder, kind='stable')
  quota[order[:size - quota.sum()]] += 1
  perm = np.asarray(jax.random.permutation(key, n))
  by_class = perm[np.argsort(labels[perm], kind='stable')]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.arange(n) - np.repeat(starts, counts)
  keep = rank < np.repeat(quota, counts)
  return np.sort(by_class[keep]).astype(np.int64)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
  """Number of batches of `batch_size` in an epoch of `n` examples."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  return n // batch_size if drop_last else -(-n // batch_size)


def batches(key: jax.Array | None, images: np.ndarray, labels: np.ndarray,
            batch_size: int, *, shuffle: bool = True,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields one epoch of (images, labels) numpy batches, shuffled by `key`.

  Arguments are checked when called, not at the first `next`.
  """
  n = len(images)
  if len(labels) != n:
    raise ValueError(f'{len(labels)} labels for {n} images')
  count = num_batches(n, batch_size, drop_last)
  if shuffle:
    if key is None:
      raise ValueError('batches(shuffle=True) needs a key')
    order = np.asarray(jax.random.permutation(key, n))
  else:
    order = None

  def generate():
    for b in range(count):
      sl = slice(b * batch_size, (b + 1) * batch_size)
      if order is None:
        yield images[sl], labels[sl]
      else:
        idx = order[sl]
        yield images[idx], labels[idx]

  return generate()


# ------------------------------------------------------------- augmentation


def random_crop(key: jax.Array, images: jax.Array, *,
                padding: int = 4) -> jax.Array:
  """Zero-pads NHWC `images` by `padding` and takes a random crop per sample."""
  if padding < 0:
    raise ValueError(f'padding must be >= 0, got {padding}')
  if images.ndim != 4:
    raise ValueError(f'expected NHWC images, got shape {images.shape}')
  if padding == 0:
    return images
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips each NHWC image horizontally with probability 0.5."""
  if images.ndim != 4:
    raise ValueError(f'expected NHWC images, got shape {images.shape}')
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(key: jax.Array, images: jax.Array, *, padding: int = 4,
            flip: bool = True) -> jax.Array:
  """Random crop (zero padding) then, if `flip`, random horizontal flip."""
  crop_key, flip_key = jax.random.split(key)
  images = random_crop(crop_key, images, padding=padding)
  return random_flip(flip_key, images) if flip else images


def default_augmentation(image_shape: Sequence[int] | str) -> functools.partial:
  """The standard augmentation for an image shape (H, W, C) or dataset name.

  Grayscale (28x28x1) data: crop with padding 2, no flip; colour (CIFAR-like)
  data: crop with padding 4 and horizontal flip.
  """
  if isinstance(image_shape, str):
    image_shape = get_info(image_shape).image_shape
  if len(image_shape) not in (3, 4):
    raise ValueError(f'expected an image shape (H, W, C), got {image_shape}')
  if image_shape[-1] == 1:
    return functools.partial(augment, padding=2, flip=False)
  return functools.partial(augment, padding=4, flip=True)
