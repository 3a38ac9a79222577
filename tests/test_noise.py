"""Tests of jaxue.noise: EM crafting, random noise and release."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models
from jaxue import noise
from jaxue import train


def _dataset(n=96, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % classes).astype(np.int32)
  images = rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)
  return images, labels


@pytest.fixture(scope="module")
def model():
  return models.make_model("small_cnn", num_classes=3, widths=(8, 8, 8))


def _state(model, lr=0.1):
  return train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                  train.make_optimizer(lr))


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_em_reaches_stop_condition_on_random_labels(model, mode):
  # Random images with arbitrary labels are unlearnable without noise;
  # error-minimizing noise makes them easy, so the stop condition is met.
  images, labels = _dataset()
  result = noise.error_minimizing_noise(
      jax.random.key(1), _state(model), images, labels, num_classes=3,
      mode=mode, epsilon=32 / 255, batch_size=32, max_rounds=40,
      progress=False)
  assert result.converged, result.history["accuracy"]
  target = 0.99 if mode == "samplewise" else 0.9
  assert result.history["accuracy"][-1] >= target
  expected = (96 if mode == "samplewise" else 3, 8, 8, 1)
  assert result.noise.shape == expected
  assert np.abs(result.noise).max() <= 32 / 255 + 1e-6
  if mode == "classwise":
    assert np.abs(result.noise).max() > 0
  assert result.info["method"] == "em" and result.info["mode"] == mode
  assert result.info["rounds"] == len(result.history["accuracy"])
  released = noise.release(images, labels, result.noise,
                           mode=result.info["mode"])
  assert released.shape == images.shape


def test_craft_result_defaults_are_fresh():
  a = noise.CraftResult(np.zeros((1, 2, 2, 1), np.float32))
  b = noise.CraftResult(np.zeros((1, 2, 2, 1), np.float32))
  assert a.surrogate is None and a.converged and a.history == {}
  a.info["x"] = 1
  assert b.info == {}
  # Four positional fields, as before `info` was added.
  c = noise.CraftResult(a.noise, None, {"accuracy": [1.0]}, False)
  assert c.info == {} and not c.converged
  assert c._replace(converged=True).converged


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_uniform_noise_is_a_craft_result(mode):
  images, labels = _dataset(20)
  result = noise.uniform_noise(jax.random.key(0), images, labels,
                               num_classes=3, mode=mode, epsilon=0.1)
  lead = 20 if mode == "samplewise" else 3
  assert result.noise.shape == (lead, 8, 8, 1)
  assert result.surrogate is None and result.converged
  assert result.info == {"method": "random", "mode": mode, "epsilon": 0.1}
  assert np.abs(result.noise).max() <= 0.1
  if mode == "samplewise":
    np.testing.assert_array_equal(
        result.noise,
        noise.random_noise(jax.random.key(0), images.shape, epsilon=0.1))
  with pytest.raises(ValueError, match="mode must be one of"):
    noise.uniform_noise(jax.random.key(0), images, labels, num_classes=3,
                        mode="pixelwise")


def test_samplewise_noise_is_indexed_by_position(model):
  # With theta frozen (eval mode) the noise crafted for image i depends only
  # on image i: sweeping a permuted copy permutes the noise the same way,
  # also when the sweep batch does not divide the dataset (padding).
  images, labels = _dataset(64)
  cfg = noise.EMConfig(mode="samplewise", epsilon=16 / 255, batch_size=32,
                       sweep_batch_size=24, pgd_steps=3).resolved()
  state = _state(model)
  step = functools.partial(noise.pgd_noise_step, cfg=cfg,
                           noise_loss=noise.eval_loss)
  x = jnp.asarray(images, jnp.float32) / 255
  perm = np.random.default_rng(0).permutation(64)
  sweep = jax.jit(functools.partial(noise._sweep_samplewise, cfg=cfg,  # pylint: disable=protected-access
                                    noise_step=step))
  a = sweep(state, jnp.zeros_like(x), x, jnp.asarray(labels),
            jax.random.key(0))
  b = sweep(state, jnp.zeros_like(x), x[perm], jnp.asarray(labels[perm]),
            jax.random.key(0))
  assert float(jnp.abs(a).max()) > 0
  np.testing.assert_allclose(np.asarray(a)[perm], b, atol=1e-6)


def test_em_noise_lowers_surrogate_loss(model):
  images, labels = _dataset()
  result = noise.error_minimizing_noise(
      jax.random.key(1), _state(model), images, labels, num_classes=3,
      mode="samplewise", epsilon=16 / 255, batch_size=32, max_rounds=3,
      progress=False)
  x = images.astype(np.float32) / 255
  variables = result.surrogate.variables

  def loss(inputs):
    logits, _ = model.apply(variables, inputs, False)
    return float(train.cross_entropy(logits, jnp.asarray(labels)))

  assert loss(np.clip(x + result.noise, 0, 1)) < loss(x)


def test_resume_equals_uninterrupted(model):
  images, labels = _dataset(64)
  cfg = noise.EMConfig(mode="classwise", epsilon=16 / 255, batch_size=32,
                       max_rounds=4, stop_error=0.0)
  full = noise.craft(jax.random.key(5), _state(model), images, labels, cfg,
                     num_classes=3, progress=False)
  first = noise.craft(jax.random.key(5), _state(model), images, labels,
                      cfg._replace(max_rounds=2), num_classes=3,
                      progress=False)
  resumed = noise.craft(jax.random.key(5), first.surrogate, images, labels,
                        cfg, num_classes=3, noise=first.noise, start_round=2,
                        history=first.history, progress=False)
  np.testing.assert_allclose(resumed.noise, full.noise, atol=1e-6)
  assert resumed.history["accuracy"] == pytest.approx(
      full.history["accuracy"])


def test_classwise_update_is_clipped_class_mean():
  # The fake step returns each sample's image as its stepped noise.
  deltas = jnp.array([0.1, 0.3, -0.2, 0.05]).reshape(4, 1, 1, 1)
  labels = jnp.array([0, 0, 1, 2])

  def step(state, x, y, delta, key):
    del state, y, delta, key
    return x

  cfg = noise.EMConfig(mode="classwise", epsilon=0.15, batch_size=4)
  cfg = cfg.resolved()
  out = noise._sweep_classwise(  # pylint: disable=protected-access
      None, jnp.zeros((4, 1, 1, 1)), deltas, labels,
      jnp.arange(4), jax.random.key(0), cfg=cfg, noise_step=step)
  np.testing.assert_allclose(out.ravel(), [0.15, -0.15, 0.05, 0.0],
                             atol=1e-7)


def test_random_noise_bounds_and_determinism():
  a = noise.random_noise(jax.random.key(0), (100, 4, 4, 1), epsilon=0.1)
  b = noise.random_noise(jax.random.key(0), (100, 4, 4, 1), epsilon=0.1)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a).max()) <= 0.1
  assert float(a.min()) < -0.09 and float(a.max()) > 0.09
  with pytest.raises(ValueError, match="epsilon"):
    noise.random_noise(jax.random.key(0), (2, 2), epsilon=0)


def test_release_rounds_and_keeps_sign():
  images = np.array([[[[0]], [[100]], [[250]], [[128]]]], np.uint8)
  images = images.reshape(1, 2, 2, 1)
  labels = np.array([0], np.int32)
  delta = np.array([-3, -2.4, 7, 0.6], np.float32).reshape(1, 2, 2, 1) / 255
  out = noise.release(images, labels, delta)
  assert out.dtype == np.uint8
  # 0-3 clips to 0; 100-2.4 rounds to 98; 250+7 clips to 255; 128.6 -> 129.
  np.testing.assert_array_equal(out.ravel(), [0, 98, 255, 129])


def test_release_classwise_picks_label_noise():
  images = np.full((3, 2, 2, 1), 100, np.uint8)
  labels = np.array([0, 1, 1], np.int32)
  delta = np.stack([np.full((2, 2, 1), 5 / 255), np.full((2, 2, 1), -5 /
                                                          255)])
  out = noise.release(images, labels, delta.astype(np.float32))
  np.testing.assert_array_equal(out[:, 0, 0, 0], [105, 95, 95])


def test_release_classwise_when_images_equal_classes():
  # Two images of classes 1, 0 and two class noises: only the explicit
  # mode tells class-wise from sample-wise.
  images = np.full((2, 1, 1, 1), 100, np.uint8)
  labels = np.array([1, 0], np.int32)
  delta = np.array([5, -5], np.float32).reshape(2, 1, 1, 1) / 255
  by_class = noise.release(images, labels, delta, mode="classwise")
  by_sample = noise.release(images, labels, delta, mode="samplewise")
  np.testing.assert_array_equal(by_class.ravel(), [95, 105])
  np.testing.assert_array_equal(by_sample.ravel(), [105, 95])
  np.testing.assert_array_equal(noise.release(images, labels, delta),
                                by_sample)
  with pytest.raises(ValueError, match="mode='samplewise' needs one noise"):
    noise.release(np.full((3, 1, 1, 1), 9, np.uint8),
                  np.array([0, 1, 1], np.int32), delta, mode="samplewise")
  with pytest.raises(ValueError, match="mode='classwise' needs one noise"):
    noise.release(images, np.array([2, 0], np.int32), delta,
                  mode="classwise")
  with pytest.raises(ValueError, match="mode must be one of"):
    noise.release(images, labels, delta, mode="class-wise")


def test_release_errors():
  images = np.zeros((4, 2, 2, 1), np.uint8)
  labels = np.zeros(4, np.int32)
  with pytest.raises(ValueError, match="shape"):
    noise.release(images, labels, np.zeros((4, 3, 3, 1), np.float32))
  with pytest.raises(ValueError, match="0-255"):
    noise.release(images, labels, np.full((4, 2, 2, 1), 8.0, np.float32))
  with pytest.raises(ValueError, match="budget"):
    noise.release(images, labels, np.full((4, 2, 2, 1), 0.1, np.float32),
                  epsilon=8 / 255)
  with pytest.raises(ValueError, match="neither"):
    noise.release(images, np.arange(4, dtype=np.int32),
                  np.zeros((3, 2, 2, 1), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    noise.release(images.astype(np.float32), labels,
                  np.zeros((4, 2, 2, 1), np.float32))
  with pytest.raises(ValueError, match="NaN"):
    noise.release(images, labels, np.full((4, 2, 2, 1), np.nan, np.float32))


@pytest.mark.parametrize("bad", [0.0, -1.0, 1.5, float("nan")])
def test_bad_epsilon(model, bad):
  images, labels = _dataset(40)
  with pytest.raises(ValueError, match="epsilon"):
    noise.error_minimizing_noise(jax.random.key(0), _state(model), images,
                                 labels, num_classes=3, epsilon=bad)


def test_bad_config(model):
  images, labels = _dataset(40)
  with pytest.raises(ValueError, match="mode"):
    noise.EMConfig(mode="pixelwise").resolved()
  with pytest.raises(ValueError, match="stop_error"):
    noise.EMConfig(stop_error=1.0).resolved()
  with pytest.raises(ValueError, match="labels"):
    noise.error_minimizing_noise(jax.random.key(0), _state(model), images,
                                 labels[:-1], num_classes=3)
  with pytest.raises(ValueError, match="batch_size"):
    noise.error_minimizing_noise(jax.random.key(0), _state(model),
                                 images[:10], labels[:10], num_classes=3)
