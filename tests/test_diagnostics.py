"""Tests for jaxue.diagnostics."""

import jax
import numpy as np
import pytest

from jaxue import diagnostics
from jaxue import models
from jaxue import train



def _images(rng, n, shape=(8, 8, 1)):
  return rng.integers(0, 256, (n,) + shape).astype(np.uint8)


def test_effective_noise_is_the_released_change():
  rng = np.random.default_rng(0)
  clean = _images(rng, 5)
  released = np.clip(clean.astype(int) + rng.integers(-9, 10, clean.shape),
                     0, 255).astype(np.uint8)
  noise = diagnostics.effective_noise(clean, released)
  assert noise.dtype == np.float32
  np.testing.assert_allclose(noise * 255, released.astype(int) - clean,
                             atol=1e-4)
  with pytest.raises(ValueError, match="uint8"):
    diagnostics.effective_noise(clean / 255.0, released)
  with pytest.raises(ValueError, match="differ in shape"):
    diagnostics.effective_noise(clean[:4], released)


def test_class_directions_are_centred_class_means():
  rng = np.random.default_rng(1)
  images, labels = _images(rng, 60), np.arange(60) % 3
  directions = diagnostics.class_directions(images, labels, num_classes=3)
  assert directions.shape == (3, 8, 8, 1)
  x = images / 255.0
  np.testing.assert_allclose(directions[1], x[labels == 1].mean(0) - x.mean(0),
                             atol=1e-6)
  # Weighted by class size the directions cancel.
  np.testing.assert_allclose(
      np.tensordot(np.bincount(labels), directions, 1), 0, atol=1e-4)
  with pytest.raises(ValueError, match="every class"):
    diagnostics.class_directions(images, labels, num_classes=4)


def test_class_direction_cosine_signs():
  rng = np.random.default_rng(2)
  directions = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
  labels = np.arange(20) % 4
  towards = diagnostics.class_direction_cosine(
      0.1 * directions[labels], labels, directions)
  np.testing.assert_allclose(towards, 1.0, atol=1e-6)
  away = diagnostics.class_direction_cosine(
      -directions[labels], labels, directions)
  np.testing.assert_allclose(away, -1.0, atol=1e-6)
  none = diagnostics.class_direction_cosine(
      np.zeros((20, 8, 8, 1)), labels, directions)
  np.testing.assert_array_equal(none, 0.0)
  with pytest.raises(ValueError, match="do not match"):
    diagnostics.class_direction_cosine(np.zeros((20, 4, 4, 1)), labels,
                                       directions)


def test_nearest_class_mean_separates_shortcuts_from_independent_noise():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 10, 2000)
  patterns = rng.normal(size=(10, 8, 8, 1))
  classwise = patterns[labels] + 0.1 * rng.normal(size=(2000, 8, 8, 1))
  assert diagnostics.nearest_class_mean_accuracy(
      classwise, labels, num_classes=10) == 1.0
  # The split is per class, so images sorted by label work too.
  order = np.argsort(labels, kind="stable")
  assert diagnostics.nearest_class_mean_accuracy(
      classwise[order], labels[order], num_classes=10) == 1.0
  # Noise independent of the label: chance is 0.1; 1,000 held-out images
  # put the accuracy within +-0.05 of it with overwhelming probability.
  independent = rng.normal(size=(2000, 8, 8, 1))
  accuracy = diagnostics.nearest_class_mean_accuracy(
      independent, labels, num_classes=10)
  assert 0.05 < accuracy < 0.15
  with pytest.raises(ValueError, match="every class"):
    diagnostics.nearest_class_mean_accuracy(classwise[:5], labels[:5],
                                            num_classes=10)
  with pytest.raises(ValueError, match="fit_fraction"):
    diagnostics.nearest_class_mean_accuracy(classwise, labels,
                                            num_classes=10, fit_fraction=1)


def test_transfer_compares_clean_and_released():
  rng = np.random.default_rng(4)
  model = models.make_model("small_cnn", widths=(4, 4, 4))
  variables = model.init(jax.random.key(0), (28, 28, 1))
  clean = _images(rng, 23, (28, 28, 1))
  labels = np.arange(23) % 10
  same = diagnostics.transfer(model.apply, variables, clean, clean, labels)
  assert same["loss_clean"] == pytest.approx(same["loss_released"])
  assert same["accuracy_clean"] == same["accuracy_released"]
  released = 255 - clean
  whole = diagnostics.transfer(model.apply, variables, clean, released,
                               labels)
  assert whole["loss_released"] != pytest.approx(whole["loss_clean"])
  # Batching (with a padded tail) does not change the numbers.
  batched = diagnostics.transfer(model.apply, variables, clean, released,
                                 labels, batch_size=7)
  for name, value in whole.items():
    assert batched[name] == pytest.approx(value, rel=1e-5)
  with pytest.raises(ValueError, match="differ in shape"):
    diagnostics.transfer(model.apply, variables, clean, released[:, :27],
                         labels)


def test_describe_release_gathers_every_measurement():
  rng = np.random.default_rng(5)
  clean = _images(rng, 40, (28, 28, 1))
  labels = np.arange(40) % 10
  directions = diagnostics.class_directions(clean, labels, num_classes=10)
  # Class-wise noise: one +-4 pattern per class (a shortcut).
  pattern = rng.choice([-4, 4], (10, 28, 28, 1))
  released = np.clip(clean.astype(int) + pattern[labels], 0, 255).astype(
      np.uint8)
  plain = diagnostics.describe_release(clean, released, labels,
                                       directions=directions, num_classes=10)
  assert set(plain) == {"images", "noise_l2_mean", "noise_linf_max",
                        "class_direction_cosine",
                        "noise_nearest_class_mean_accuracy"}
  assert plain["images"] == 40
  assert plain["noise_linf_max"] == pytest.approx(4 / 255, abs=1e-6)
  noise = diagnostics.effective_noise(clean, released)
  assert plain["noise_l2_mean"] == pytest.approx(
      np.linalg.norm(noise.reshape(40, -1), axis=1).mean(), rel=1e-6)
  assert plain["class_direction_cosine"] == pytest.approx(np.mean(
      diagnostics.class_direction_cosine(noise, labels, directions)))
  assert plain["noise_nearest_class_mean_accuracy"] == 1.0
  model = models.make_model("small_cnn", widths=(4, 4, 4))
  variables = model.init(jax.random.key(0), (28, 28, 1))
  full = diagnostics.describe_release(
      clean, released, labels, directions=directions, num_classes=10,
      reference=(model.apply, variables))
  assert full["reference_model"] == diagnostics.transfer(
      model.apply, variables, clean, released, labels)
  assert {k: full[k] for k in plain} == plain
  with pytest.raises(ValueError, match="differ in shape"):
    diagnostics.describe_release(clean, released[:, :27], labels,
                                 directions=directions, num_classes=10)


def test_train_reference_uses_only_images_outside_the_releases(monkeypatch):
  rng = np.random.default_rng(6)
  images = _images(rng, 1300, (28, 28, 1))
  labels = (np.arange(1300) % 10).astype(np.int32)
  model = models.make_model("small_cnn", widths=(4, 4, 4))
  seen = {}

  def fake_train(key, model, x, y, **kwargs):
    seen.update(x=x, y=y, **kwargs)
    state = train.create_train_state(key, model, x.shape[1:],
                                     train.make_optimizer(0.1))
    return state, {"test_accuracy": [0.5]}

  monkeypatch.setattr(train, "train_victim", fake_train)
  test = (images[:10], labels[:10])
  variables, info = diagnostics.train_reference(
      jax.random.key(0), model, images, labels,
      exclude=[np.arange(200), np.arange(100, 300)], num_classes=10,
      test=test, epochs=3)
  assert info == {"train_images": 1000, "test_accuracy": 0.5}
  np.testing.assert_array_equal(seen["x"], images[300:])
  np.testing.assert_array_equal(seen["y"], labels[300:])
  assert seen["epochs"] == 3 and seen["test"] is test
  assert set(variables) == {"params", "batch_stats"}
  with pytest.raises(ValueError, match="only 999 clean training images"):
    diagnostics.train_reference(
        jax.random.key(0), model, images, labels, exclude=[np.arange(301)],
        num_classes=10, test=test)
  with pytest.raises(ValueError, match="with every class"):
    diagnostics.train_reference(
        jax.random.key(0), model, images, labels,
        exclude=[np.flatnonzero(labels == 3)], num_classes=11, test=test)
