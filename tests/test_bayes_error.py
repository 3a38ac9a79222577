"""Tests of jaxue.bayes_error: the kernel Bayes-error estimate and the
noise that raises it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import bayes_error
from jaxue import models
from jaxue import train


def _direct(features, labels, sigma, num_classes):
  """The leave-one-out Nadaraya-Watson estimate, written out in numpy."""
  z = features.astype(np.float64) / np.abs(features).max()
  n = len(labels)
  total = 0.0
  for i in range(n):
    weights = np.array([0.0 if j == i else np.exp(
        -np.sum((z[i] - z[j])**2) / (2 * sigma**2)) for j in range(n)])
    posterior = np.array([weights[labels == c].sum()
                          for c in range(num_classes)])
    total += 1 - (posterior / (weights.sum() + 1e-8)).max()
  return total / n


@pytest.mark.parametrize("sigma,chunk", [(0.3, 32), (0.3, 5), (1.0, 7)])
def test_estimate_matches_direct_computation(sigma, chunk):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(23, 4)).astype(np.float32)
  labels = rng.integers(0, 3, 23)
  got = bayes_error.kernel_bayes_error(features, labels, sigma=sigma,
                                       chunk=chunk)
  assert float(got) == pytest.approx(_direct(features, labels, sigma, 3),
                                     abs=1e-5)


def test_estimate_extremes():
  # Two tight clusters far apart: each point's neighbours share its label.
  rng = np.random.default_rng(1)
  labels = np.repeat([0, 1], 10)
  features = (np.where(labels[:, None] == 0, -1.0, 1.0)
              + 1e-3 * rng.normal(size=(20, 3))).astype(np.float32)
  assert float(bayes_error.kernel_bayes_error(features, labels)) < 1e-4
  # Identical features: the posterior is the other samples' label shares.
  same = np.ones((20, 3), np.float32)
  assert float(bayes_error.kernel_bayes_error(same, labels)) == (
      pytest.approx(1 - 10 / 19, abs=1e-5))


def test_gradient_matches_finite_differences():
  rng = np.random.default_rng(2)
  features = jnp.asarray(rng.normal(size=(15, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, 15))

  def estimate(f):
    return bayes_error.kernel_bayes_error(f, labels, sigma=1.0, chunk=4,
                                          num_classes=3)

  grad = jax.grad(estimate)(features)
  direction = jnp.asarray(rng.normal(size=(15, 3)), jnp.float32)
  # The largest |entry| sets the scale; keep it fixed along the direction.
  direction = direction.at[jnp.unravel_index(
      jnp.argmax(jnp.abs(features)), features.shape)].set(0.0)
  h = 1e-2
  numeric = (estimate(features + h * direction)
             - estimate(features - h * direction)) / (2 * h)
  assert float(jnp.vdot(grad, direction)) == pytest.approx(float(numeric),
                                                          rel=0.05, abs=1e-4)


def test_penultimate_features_feed_the_classifier():
  model = models.make_model("small_cnn", num_classes=3, widths=(4, 8, 8))
  variables = model.init(jax.random.key(0), (8, 8, 1))
  x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))
  feats = jax.jit(bayes_error.penultimate_features, static_argnums=0)(
      model.apply, variables, x)
  logits, _ = jax.jit(model.apply, static_argnums=2)(variables, x, False)
  dense = variables["params"]["Dense_0"]
  assert feats.shape == (5, 8)
  np.testing.assert_allclose(feats @ dense["kernel"] + dense["bias"][None],
                             logits, atol=1e-5)


def _dataset(n=128, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % classes).astype(np.int32)
  base = rng.integers(0, 200, (classes, 8, 8, 1))
  images = base[labels] + rng.integers(0, 56, (n, 8, 8, 1))
  return images.astype(np.uint8), labels


def test_class_centroid_step():
  images, labels = _dataset()
  eps = 16 / 255
  result = bayes_error.class_centroid_noise(images, labels, num_classes=3,
                                            epsilon=eps, components=5)
  delta = result.noise
  assert delta.shape == images.shape and result.surrogate is None
  assert np.abs(delta).max() <= eps + 1e-6 and np.abs(delta).max() > 0
  x = images.astype(np.float32) / 255
  assert (x + delta).min() >= -1e-6 and (x + delta).max() <= 1 + 1e-6
  target = result.info["target_class"]
  assert (target != labels).all()
  # Each image moves towards its target class's centroid.
  pca = bayes_error.fit_pca(images, 5)
  coords = lambda v: (v.reshape(len(v), -1) - pca.mean) @ pca.components
  before, after = coords(x), coords(x + delta)
  centroids = np.stack([before[labels == c].mean(0) for c in range(3)])
  dist = lambda c: np.linalg.norm(c - centroids[target], axis=1)
  assert (dist(after) < dist(before)).mean() > 0.95


def test_pca_ascent_raises_the_estimate_and_resumes():
  images, labels = _dataset()
  cfg = bayes_error.BayesConfig(epsilon=16 / 255, steps=4, retrain_every=2,
                                features="pca", pca_components=5, sigma=0.5)
  full = bayes_error.bayes_error_noise(jax.random.key(0), None, images,
                                       labels, num_classes=3, cfg=cfg,
                                       progress=False)
  assert full.info["method"] == "bayes-error" and full.surrogate is None
  assert np.abs(full.noise).max() <= 16 / 255 + 1e-6
  trace = full.history["bayes_error"] + [full.info["final_bayes_error"]]
  assert trace[-1] > trace[0]
  saved = {}
  first = bayes_error.bayes_error_noise(
      jax.random.key(0), None, images, labels, num_classes=3,
      cfg=cfg._replace(steps=2), progress=False,
      on_block=lambda step, noise, history: saved.update(step=step))
  assert saved["step"] == 2
  resumed = bayes_error.bayes_error_noise(
      jax.random.key(0), None, images, labels, num_classes=3, cfg=cfg,
      noise=first.noise, start_step=2, history=first.history,
      progress=False)
  np.testing.assert_array_equal(resumed.noise, full.noise)
  assert resumed.history["bayes_error"] == full.history["bayes_error"]


def test_retrained_features_ascent():
  images, labels = _dataset()
  model = models.make_model("small_cnn", num_classes=3, widths=(4, 8, 8))
  cfg = bayes_error.BayesConfig(epsilon=16 / 255, steps=2, retrain_every=1,
                                feature_epochs=1, sigma=1.0)
  result = bayes_error.bayes_error_noise(jax.random.key(0), model, images,
                                         labels, num_classes=3, cfg=cfg,
                                         progress=False)
  assert isinstance(result.surrogate, train.TrainState)
  assert len(result.history["feature_train_accuracy"]) == 2
  assert len(result.history["bayes_error"]) == 2
  assert 0 < np.abs(result.noise).max() <= 16 / 255 + 1e-6


def test_bad_input():
  images, labels = _dataset()
  with pytest.raises(ValueError, match="features must be one of"):
    bayes_error.BayesConfig(features="clip").resolved()
  with pytest.raises(ValueError, match="init must be one of"):
    bayes_error.BayesConfig(init="random").resolved()
  with pytest.raises(ValueError, match="steps must be"):
    bayes_error.BayesConfig(steps=-1).resolved()
  with pytest.raises(ValueError, match="epsilon must be in"):
    bayes_error.BayesConfig(epsilon=2.0).resolved()
  with pytest.raises(ValueError, match="sigma must be"):
    bayes_error.kernel_bayes_error(np.ones((3, 2)), np.arange(3), sigma=0)
  with pytest.raises(ValueError, match="features must be"):
    bayes_error.kernel_bayes_error(np.ones(3), np.arange(3))
  with pytest.raises(ValueError, match="start_step"):
    bayes_error.bayes_error_noise(
        jax.random.key(0), None, images, labels, num_classes=3,
        cfg=bayes_error.BayesConfig(features="pca", retrain_every=2),
        start_step=1, progress=False)
  with pytest.raises(ValueError, match="at least 2 classes"):
    bayes_error.class_centroid_noise(images, np.zeros_like(labels),
                                     num_classes=3)
