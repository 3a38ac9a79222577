"""Tests for jaxue.data: readers, loading, validation, batches, augmentation."""

import gzip
import pathlib
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from jaxue import data

FMNIST_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')


def write_idx(path, array, compress=False):
  """Writes a uint8 array as an IDX file (optionally gzip-compressed)."""
  array = np.asarray(array, np.uint8)
  payload = (struct.pack('>BBBB', 0, 0, 0x08, array.ndim)
             + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes())
  path = pathlib.Path(path)
  path.write_bytes(gzip.compress(payload) if compress else payload)
  return path


def write_idx_split(directory, prefix, images, labels, compress):
  suffix = '.gz' if compress else ''
  write_idx(directory / f'{prefix}-images-idx3-ubyte{suffix}', images, compress)
  write_idx(directory / f'{prefix}-labels-idx1-ubyte{suffix}', labels, compress)


def random_dataset(n, shape, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
          rng.integers(0, num_classes, n).astype(np.int32))


@pytest.fixture(autouse=True)
def no_default_dirs(monkeypatch, tmp_path):
  """Keeps the user's JAXUE_DATA_DIR and ~/.cache out of the tests."""
  monkeypatch.setenv('JAXUE_DATA_DIR', str(tmp_path / 'jaxue_data_dir'))
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))


# ------------------------------------------------------------------ IDX


@pytest.mark.parametrize('compress', [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
  array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  path = write_idx(tmp_path / 'x-idx3-ubyte', array, compress)
  out = data.read_idx(path)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, array)


def test_read_idx_gzip_by_suffix_and_plain_gz_name(tmp_path):
  array = np.arange(6, dtype=np.uint8)
  write_idx(tmp_path / 'a.gz', array, compress=True)
  np.testing.assert_array_equal(data.read_idx(tmp_path / 'a.gz'), array)


def test_read_idx_truncated_raises(tmp_path):
  path = write_idx(tmp_path / 'x', np.zeros((4, 3, 3), np.uint8))
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(ValueError, match=r'x: IDX payload has 31 bytes'):
    data.read_idx(path)


def test_read_idx_bad_magic_and_type(tmp_path):
  bad = tmp_path / 'bad'
  bad.write_bytes(b'\x12\x34\x08\x01\x00\x00\x00\x01\x00')
  with pytest.raises(ValueError, match='bad: not an IDX file'):
    data.read_idx(bad)
  floats = tmp_path / 'floats'
  floats.write_bytes(b'\x00\x00\x0d\x01\x00\x00\x00\x00')
  with pytest.raises(ValueError, match='type code 0x0d'):
    data.read_idx(floats)


def test_read_idx_truncated_gzip_raises(tmp_path):
  path = write_idx(tmp_path / 'x.gz', np.zeros((50, 3), np.uint8), True)
  path.write_bytes(path.read_bytes()[:12])
  with pytest.raises(ValueError, match='x.gz: corrupt gzip'):
    data.read_idx(path)


@pytest.mark.parametrize('compress', [False, True])
def test_load_idx_dir(tmp_path, compress):
  images, labels = random_dataset(12, (28, 28), 10)
  write_idx_split(tmp_path, 'train', images, labels, compress)
  write_idx_split(tmp_path, 't10k', images[:4], labels[:4], compress)
  for name in ('fashion-mnist', 'fashion_mnist', 'mnist'):
    x, y = data.load(name, 'train', data_dir=tmp_path)
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.uint8
    assert y.dtype == np.int32
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
  x, y = data.load('mnist', 'test', data_dir=tmp_path)
  np.testing.assert_array_equal(x[..., 0], images[:4])


def test_load_idx_dot_variant(tmp_path):
  images, labels = random_dataset(3, (28, 28), 10)
  write_idx(tmp_path / 't10k-images.idx3-ubyte', images)
  write_idx(tmp_path / 't10k-labels.idx1-ubyte', labels)
  x, y = data.load('mnist', 'test', data_dir=tmp_path)
  np.testing.assert_array_equal(x[..., 0], images)
  np.testing.assert_array_equal(y, labels)


def test_load_idx_labels_out_of_range(tmp_path):
  images, _ = random_dataset(3, (28, 28), 10)
  write_idx_split(tmp_path, 'train', images, np.array([0, 1, 11]), False)
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 10\)'):
    data.load('mnist', 'train', data_dir=tmp_path)


# ---------------------------------------------------------------- CIFAR


def cifar_bytes(images_hwc, *label_columns):
  chw = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1)
  cols = [np.asarray(c, np.uint8)[:, None] for c in label_columns]
  return np.concatenate([*cols, chw], axis=1).tobytes()


@pytest.mark.parametrize('subdir', ['', 'cifar-10-batches-bin'])
def test_load_cifar10_binary(tmp_path, subdir):
  root = tmp_path / subdir
  root.mkdir(exist_ok=True)
  images, labels = random_dataset(15, (32, 32, 3), 10)
  for i in range(5):
    sl = slice(3 * i, 3 * i + 3)
    (root / f'data_batch_{i + 1}.bin').write_bytes(
        cifar_bytes(images[sl], labels[sl]))
  (root / 'test_batch.bin').write_bytes(cifar_bytes(images[:2], labels[:2]))
  x, y = data.load('cifar10', 'train', data_dir=tmp_path)
  assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, labels)
  # First record byte is the label, then the red plane in row-major order.
  raw = np.frombuffer((root / 'data_batch_1.bin').read_bytes(), np.uint8)
  assert raw[0] == labels[0]
  np.testing.assert_array_equal(raw[1:1025].reshape(32, 32), x[0, :, :, 0])
  x, y = data.load('cifar10', 'test', data_dir=tmp_path)
  np.testing.assert_array_equal(x, images[:2])


def test_load_cifar100_fine_labels(tmp_path):
  root = tmp_path / 'cifar-100-binary'
  root.mkdir()
  images, fine = random_dataset(6, (32, 32, 3), 100)
  coarse = fine // 5
  (root / 'train.bin').write_bytes(cifar_bytes(images, coarse, fine))
  x, y = data.load('cifar100', 'train', data_dir=tmp_path)
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, fine)


def test_cifar_truncated_raises(tmp_path):
  images, labels = random_dataset(2, (32, 32, 3), 10)
  (tmp_path / 'test_batch.bin').write_bytes(cifar_bytes(images, labels)[:-1])
  with pytest.raises(ValueError, match='test_batch.bin: 6145 bytes'):
    data.load('cifar10', 'test', data_dir=tmp_path)


# ----------------------------------------------------------------- SVHN


def test_load_svhn_mat_maps_10_to_0(tmp_path):
  images, _ = random_dataset(4, (32, 32, 3), 10)
  y = np.array([[10], [1], [9], [10]], np.uint8)
  scipy.io.savemat(tmp_path / 'test_32x32.mat',
                   {'X': images.transpose(1, 2, 3, 0), 'y': y})
  x, labels = data.load('svhn', 'test', data_dir=tmp_path)
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(labels, [0, 1, 9, 0])
  assert labels.dtype == np.int32


# --------------------------------------------------------- load errors


def test_load_missing_files_names_dir_and_file(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    data.load('fashion_mnist', 'train', data_dir=tmp_path)
  msg = str(info.value)
  assert str(tmp_path) in msg
  assert 'train-images-idx3-ubyte' in msg
  assert 'apt-get install dataset-fashion-mnist' in msg
  with pytest.raises(FileNotFoundError, match='data_batch_1.bin'):
    data.load('cifar10', 'train', data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match='cifar-10-batches-bin'):
    data.load('cifar10', 'train', data_dir=tmp_path)


def test_load_unknown_name_or_split():
  with pytest.raises(ValueError, match=r"'imagenet'.*cifar10.*fashion_mnist"):
    data.load('imagenet', 'train')
  with pytest.raises(ValueError, match="unknown split 'val'"):
    data.load('mnist', 'val')


def test_load_searches_jaxue_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('JAXUE_DATA_DIR', str(tmp_path))
  (tmp_path / 'mnist').mkdir()
  images, labels = random_dataset(5, (28, 28), 10)
  write_idx_split(tmp_path / 'mnist', 't10k', images, labels, True)
  x, y = data.load('mnist', 'test')
  np.testing.assert_array_equal(y, labels)


def test_datasets_info():
  assert data.DATASETS['cifar100'].num_classes == 100
  assert data.DATASETS['mnist'].image_shape == (28, 28, 1)
  assert data.DATASETS['svhn']['image_shape'] == (32, 32, 3)
  assert set(data.DATASETS) == {'mnist', 'fashion_mnist', 'cifar10',
                                'cifar100', 'svhn'}


# ----------------------------------------------------------------- TFDS


def test_tfds_fallback_without_tensorflow(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(data, '_tensorflow_available', lambda: False)
  with tfds.testing.mock_data(num_examples=7):
    x, y = data.load('cifar100', 'train')
  assert x.shape == (7, 32, 32, 3) and x.dtype == np.uint8
  assert y.shape == (7,) and y.dtype == np.int32
  assert y.min() >= 0 and y.max() < 100


def test_tfds_fallback_with_tensorflow(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  images, labels = random_dataset(4, (32, 32, 3), 10)
  calls = []

  def fake_load(name, **kwargs):
    calls.append((name, kwargs))
    return images, labels.astype(np.int64)

  monkeypatch.setattr(data, '_tensorflow_available', lambda: True)
  monkeypatch.setattr(tfds, 'load', fake_load)
  monkeypatch.setattr(tfds, 'as_numpy', lambda tree: tree)
  x, y = data.load('svhn', 'test')
  assert calls == [('svhn_cropped', {'split': 'test', 'batch_size': -1,
                                     'as_supervised': True})]
  np.testing.assert_array_equal(x, images)
  assert y.dtype == np.int32


def test_tfds_failure_explains(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def failing(*args, **kwargs):
    raise ConnectionError('no network')

  monkeypatch.setattr(data, '_tensorflow_available', lambda: False)
  monkeypatch.setattr(tfds, 'data_source', failing)
  with pytest.raises(FileNotFoundError) as info:
    data.load('cifar10', 'test')
  msg = str(info.value)
  assert 'jaxue_data_dir/cifar10' in msg and '.cache/jaxue/cifar10' in msg
  assert 'ConnectionError: no network' in msg
  assert 'cifar-10-batches-bin' in msg
  assert isinstance(info.value.__cause__, ConnectionError)


def test_without_tfds_the_error_names_the_extra(monkeypatch):
  # The default install has no tensorflow_datasets; a None entry in
  # sys.modules makes its import fail as if it were absent.
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(FileNotFoundError) as info:
    data.load('cifar10', 'test')
  msg = str(info.value)
  assert '\n' not in msg
  assert 'pip install "jaxue[tfds]"' in msg
  assert 'jaxue_data_dir/cifar10' in msg and 'cifar-10-batches-bin' in msg
  assert info.value.__cause__ is None


# ------------------------------------------------------------ validation


def test_check_dataset_accepts_valid():
  data.check_dataset(np.zeros((4, 8, 8, 3), np.uint8),
                     np.arange(4, dtype=np.int32), num_classes=4)


def test_check_dataset_errors():
  x = np.zeros((4, 8, 8, 1), np.uint8)
  y = np.zeros(4, np.int32)
  with pytest.raises(ValueError,
                     match=r'4-D.*got a 3-D.*images\[\.\.\., None\]'):
    data.check_dataset(x[..., 0], y)
  with pytest.raises(ValueError, match=r'expected uint8 NHWC images, got '
                     r'float32.*\(x \* 255\)\.round\(\)\.astype\(np\.uint8\)'):
    data.check_dataset(x.astype(np.float32) + 0.5, y)
  with pytest.raises(ValueError, match='got float32') as info:
    data.check_dataset(x.astype(np.float32) + 7.0, y)
  assert 'round()' not in str(info.value)
  with pytest.raises(ValueError, match='1-D integer labels'):
    data.check_dataset(x, y.astype(np.float32))
  with pytest.raises(ValueError, match='one-hot'):
    data.check_dataset(x, np.eye(4, dtype=np.int32))
  with pytest.raises(ValueError, match='3 labels for 4 images'):
    data.check_dataset(x, y[:3])
  with pytest.raises(ValueError, match=r'\[0, 10\), got min 0, max 10'):
    data.check_dataset(x, np.array([0, 1, 2, 10]), num_classes=10)
  with pytest.raises(ValueError, match='got min -1'):
    data.check_dataset(x, np.array([0, -1, 2, 3]))


def test_to_float():
  x = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
  out = jax.jit(data.to_float)(x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 1.0], rtol=1e-6)


# ------------------------------------------------------ subsets, batches


def test_stratified_subset_exact_proportions(key):
  labels = np.repeat(np.arange(4), [500, 300, 150, 50])
  np.random.default_rng(0).shuffle(labels)
  idx = data.stratified_subset(key, labels, 0.2)
  assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [100, 60, 30, 10])
  np.testing.assert_array_equal(idx, data.stratified_subset(key, labels, 0.2))
  other = data.stratified_subset(jax.random.key(1), labels, 0.2)
  assert not np.array_equal(idx, other)


def test_stratified_subset_rounding_total(key):
  labels = np.array([0] * 7 + [1] * 7 + [2] * 7)
  idx = data.stratified_subset(key, labels, 10)
  counts = np.bincount(labels[idx], minlength=3)
  assert counts.sum() == 10 and sorted(counts) == [3, 3, 4]
  assert len(data.stratified_subset(key, labels, 1.0)) == 21


@pytest.mark.parametrize('bad', [0, -1, 22, 0.0, 1.5, True])
def test_stratified_subset_errors(key, bad):
  with pytest.raises(ValueError):
    data.stratified_subset(key, np.zeros(21, np.int32), bad)


def test_batches_cover_each_index_once(key):
  images = np.arange(10)[:, None, None, None].astype(np.uint8)
  labels = np.arange(10, dtype=np.int32)
  got = list(data.batches(key, images, labels, 4))
  assert [len(b[1]) for b in got] == [4, 4, 2]
  assert data.num_batches(10, 4) == 3
  seen = np.concatenate([b[1] for b in got])
  assert sorted(seen) == list(range(10)) and not np.array_equal(seen, labels)
  for xb, yb in got:
    np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)
  again = np.concatenate([b[1] for b in data.batches(key, images, labels, 4)])
  np.testing.assert_array_equal(seen, again)
  dropped = list(data.batches(key, images, labels, 4, drop_last=True))
  assert len(dropped) == data.num_batches(10, 4, drop_last=True) == 2
  ordered = np.concatenate(
      [b[1] for b in data.batches(None, images, labels, 3, shuffle=False)])
  np.testing.assert_array_equal(ordered, labels)
  with pytest.raises(ValueError, match='3 labels for 10 images'):
    data.batches(key, images, labels[:3], 4)


# ---------------------------------------------------------- augmentation


def test_random_crop_is_a_shifted_window(key):
  images = jnp.asarray(
      np.random.default_rng(0).uniform(0.1, 1.0, (16, 28, 28, 1)),
      jnp.float32)
  crop = jax.jit(data.random_crop, static_argnames='padding')
  out = np.asarray(crop(key, images, padding=2))
  assert out.shape == images.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, crop(key, images, padding=2))
  assert not np.array_equal(out, crop(jax.random.key(1), images, padding=2))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = set()
  for i in range(16):
    matches = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(out[i], padded[i, dy:dy + 28, dx:dx + 28])]
    assert len(matches) == 1
    offsets.add(matches[0])
  assert len(offsets) > 1  # Independent offsets per sample.
  np.testing.assert_array_equal(data.random_crop(key, images, padding=0),
                                images)


def test_random_flip_is_an_exact_mirror(key):
  images = np.asarray(jax.random.uniform(jax.random.key(7), (32, 4, 5, 3)))
  out = np.asarray(jax.jit(data.random_flip)(key, images))
  assert out.shape == images.shape
  flipped = [bool(np.array_equal(out[i], images[i, :, ::-1]))
             for i in range(32)]
  kept = [bool(np.array_equal(out[i], images[i])) for i in range(32)]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 0 < sum(flipped) < 32
  np.testing.assert_array_equal(out, data.random_flip(key, images))


def test_augment_and_defaults(key):
  images = jnp.ones((4, 32, 32, 3), jnp.float32)
  aug = jax.jit(data.augment, static_argnames=('padding', 'flip'))
  out = aug(key, images, padding=4, flip=True)
  assert out.shape == images.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, aug(key, images, padding=4, flip=True))
  gray = data.default_augmentation((28, 28, 1))
  assert gray.keywords == {'padding': 2, 'flip': False}
  assert data.default_augmentation('cifar10').keywords == {'padding': 4,
                                                           'flip': True}
  assert jax.jit(gray)(key, jnp.ones((2, 28, 28, 1))).shape == (2, 28, 28, 1)


# ------------------------------------------------------------- real data


@pytest.mark.skipif(not (FMNIST_DIR / 'train-images-idx3-ubyte.gz').exists(),
                    reason='dataset-fashion-mnist is not installed')
def test_real_fashion_mnist():
  for split, n in (('train', 60000), ('test', 10000)):
    x, y = data.load('fashion_mnist', split)
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.uint8
    assert y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [n // 10] * 10)
