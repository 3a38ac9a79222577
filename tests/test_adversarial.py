"""Tests of Madry adversarial training (jaxue.train) and error-maximizing
noise (jaxue.noise)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models
from jaxue import noise
from jaxue import train

EPS = 16 / 255
CFG = train.AdversarialConfig(epsilon=EPS, steps=3)


def _toy(n=64, seed=0):
  """Two classes: class 1 has a bright 4x4 square."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n).astype(np.int32)
  square = np.zeros((1, 8, 8, 1), np.int64)
  square[:, 2:6, 2:6] = 150
  images = rng.integers(0, 60, (n, 8, 8, 1)) + labels[:, None, None,
                                                      None] * square
  return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def model():
  return models.make_model("small_cnn", num_classes=2, widths=(4, 4, 4))


@pytest.fixture(scope="module")
def fitted(model):
  """A victim trained adversarially (also the clean surrogate of the
  error-maximizing tests: the toy task is learnable at this radius)."""
  images, labels = _toy(128)
  return train.train_victim(
      jax.random.key(0), model, images, labels, test=_toy(50, seed=1),
      epochs=4, batch_size=32, adversarial=CFG, progress=False)


def test_config_defaults_and_validation():
  cfg = train.AdversarialConfig().resolved()
  assert cfg.epsilon == pytest.approx(4 / 255)
  assert cfg.steps == 10
  assert cfg.step_size == pytest.approx(4 / 255 / 5)
  with pytest.raises(ValueError, match="epsilon"):
    train.AdversarialConfig(epsilon=0).resolved()
  with pytest.raises(ValueError, match="steps"):
    train.AdversarialConfig(steps=-1).resolved()
  with pytest.raises(ValueError, match="step_size"):
    train.AdversarialConfig(step_size=-0.1).resolved()


def test_adversarial_train_step_shapes(model):
  images, labels = _toy(32)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.05))
  step = functools.partial(train.adversarial_train_step, cfg=CFG)
  for batch in ((images, labels), (images.astype(np.float32) / 255, labels)):
    new, metrics = jax.eval_shape(step, state, batch, jax.random.key(1))
    assert set(metrics) == {"loss", "accuracy"}
    assert all(m.shape == () for m in metrics.values())
    assert new.step.shape == () and new.step.dtype == jnp.int32
    for a, b in zip(jax.tree.leaves(new.variables),
                    jax.tree.leaves(state.variables)):
      assert a.shape == b.shape and a.dtype == b.dtype


def test_attack_respects_radius_and_raises_loss(fitted):
  state, _ = fitted
  images, labels = _toy(40, seed=2)
  x, y = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
  attack = jax.jit(functools.partial(
      train.pgd_attack, epsilon=EPS, step_size=EPS / 4, steps=5))
  delta = attack(jax.random.key(0), state, x, y)
  assert float(jnp.abs(delta).max()) <= EPS + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  np.testing.assert_array_equal(delta, attack(jax.random.key(0), state, x,
                                              y))

  def loss(inputs):
    logits, _ = state.apply_fn(state.variables, inputs, False)
    return float(train.cross_entropy(logits, y))

  assert loss(x + delta) > loss(x)


def test_fit_adversarially_learns(fitted, model):
  state, history = fitted
  assert int(state.step) == 4 * (128 // 32)
  assert len(history["test_accuracy"]) == 4
  assert history["test_accuracy"][-1] >= 0.8
  assert history["train_loss"][-1] < history["train_loss"][0]
  images, labels = _toy(128)
  with pytest.raises(ValueError, match="epsilon"):
    train.train_victim(jax.random.key(4), model, images, labels,
                       test=_toy(8), epochs=1,
                       adversarial=train.AdversarialConfig(epsilon=2.0),
                       progress=False)


@pytest.mark.parametrize("targeted", [False, True])
def test_error_maximizing_noise(fitted, targeted):
  state, _ = fitted
  images, labels = _toy(40, seed=3)
  result = noise.error_maximizing_noise(
      jax.random.key(0), state, images, labels, num_classes=2, epsilon=EPS,
      steps=5, targeted=targeted, batch_size=16)
  assert isinstance(result, noise.CraftResult)
  assert result.surrogate is state and result.converged
  assert result.info["mode"] == "samplewise"
  assert result.info["targeted"] == targeted
  delta = result.noise
  assert delta.shape == images.shape and delta.dtype == np.float32
  assert np.abs(delta).max() <= EPS + 1e-6
  x = images.astype(np.float32) / 255

  def loss(inputs, labels):
    logits, _ = state.apply_fn(state.variables, inputs, False)
    return float(train.cross_entropy(logits, labels))

  if targeted:  # Towards (y + 1) mod C.
    target = (labels + 1) % 2
    assert loss(np.clip(x + delta, 0, 1), target) < loss(x, target) - 0.3
  else:
    # The victim is adversarially trained at EPS: the loss rises, modestly.
    assert loss(np.clip(x + delta, 0, 1), labels) > 1.5 * loss(x, labels)
