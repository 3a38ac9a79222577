"""Orthogonal projection (Sandoval-Segura et al. 2023, Algorithm 1)."""

import jax
import numpy as np
import pytest

from jaxue import defences
from jaxue import models
from jaxue import projection
from jaxue import train

K = 10


@pytest.fixture(scope="module")
def classwise():
  """Uninformative images plus a strong class-wise pattern (zero mean over
  the classes): a linearly separable shortcut and nothing else."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, K, 2000).astype(np.int32)
  base = rng.uniform(0, 1, (2000, 8, 8, 1)).astype(np.float32)
  delta = rng.normal(0, 1, (K, 8, 8, 1)).astype(np.float32)
  delta -= delta.mean(0)
  delta *= 0.25 / np.abs(delta).max()
  return np.clip(base + delta[labels], 0, 1), labels, delta


def test_projection_removes_the_learned_directions(classwise):
  images, labels, _ = classwise
  result = projection.orthogonal_projection(
      jax.random.key(0), images, labels, batch_size=100)
  q, w = result.directions, result.weights
  assert q.shape == (64, K) and w.shape == (K, 64)
  np.testing.assert_allclose(q.T @ q, np.eye(K), atol=1e-5)
  flat = result.images.reshape(len(images), -1)
  scale = np.abs(images).max()
  # Zero component along every learned direction (and W's rows).
  assert np.abs(flat @ q).max() < 1e-4 * scale
  assert np.abs(flat @ w.T).max() < 1e-4 * np.abs(w).max() * 64
  assert result.images.dtype == np.float32
  assert result.images.shape == images.shape


def test_projection_removes_classwise_noise(classwise):
  images, labels, delta = classwise
  result = projection.orthogonal_projection(
      jax.random.key(0), images, labels, batch_size=100)
  assert result.accuracy > 0.6  # The shortcut is linearly learnable.
  d = delta.reshape(K, -1)
  q = result.directions
  residual = np.linalg.norm(d - (d @ q) @ q.T) / np.linalg.norm(d)
  assert residual < 0.6
  # A fresh linear model finds (almost) nothing left to learn.
  _, after = projection.fit_linear(jax.random.key(1), result.images, labels,
                                   num_classes=K, batch_size=100)
  assert after < 0.3


def test_bad_input():
  x = np.zeros((4, 2, 2, 1), np.uint8)
  y = np.zeros(4, np.int32)
  with pytest.raises(ValueError, match="labels"):
    projection.fit_linear(jax.random.key(0), x, y[:3], num_classes=2)
  with pytest.raises(ValueError, match="num_classes"):
    projection.fit_linear(jax.random.key(0), x, y, num_classes=1)
  with pytest.raises(ValueError, match="directions"):
    projection.project(x, np.zeros((3, 2)))


def test_victims_train_on_float_images_as_they_are():
  model = models.make_model("small_cnn", num_classes=3, widths=(4, 4, 4))
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
  y = rng.integers(0, 3, 16).astype(np.int32)
  defence = defences.make_defence("orthogonal-projection", (8, 8, 1), 3)
  projected = defence.project(jax.random.key(0), x, y).images
  assert projected.dtype == np.float32
  assert projected.min() < 0 or projected.max() > 1  # Not clipped.
  np.testing.assert_array_equal(train.as_float(projected), projected)
  _, history = train.train_victim(
      jax.random.key(1), model, projected, y, test=(x, y), epochs=1,
      batch_size=8, allow_float=True, progress=False)
  assert len(history["test_accuracy"]) == 1
  with pytest.raises(ValueError, match="NaN"):
    train.fit(jax.random.key(1), None, projected * np.nan, y, epochs=1,
              allow_float=True)
  # Without allow_float, float images are refused (a [0, 255] slip).
  with pytest.raises(ValueError, match="uint8"):
    train.fit(jax.random.key(1), None, projected, y, epochs=1)
