"""Tests of PUE crafting: the robust steps lower the loss under weight noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import certify
from jaxue import models
from jaxue import noise
from jaxue import train

SIGMA = 0.1
PUE = noise.PUEConfig(sigma=SIGMA, sigma_step=0.1, surrogate_draws=3,
                      noise_draws=3)


def _dataset(n=48, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % classes).astype(np.int32)
  images = rng.integers(0, 100, (n, 8, 8, 1))
  for c in range(classes):  # A class-dependent bright row: learnable.
    images[labels == c, 2 * c + 1] += 150
  return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def model():
  return models.make_model("small_cnn", num_classes=3, widths=(4, 4, 4))


def _expected_loss(model, variables, x, y, sigma=SIGMA, draws=64):
  """Monte-Carlo E_xi CE(f_{theta + sigma xi}(x), y) with fixed draws."""

  def one(k):
    params = certify.perturb_params(k, variables["params"], sigma)
    logits, _ = model.apply({"params": params,
                             "batch_stats": variables["batch_stats"]}, x,
                            False)
    return train.cross_entropy(logits, y)

  keys = jax.random.split(jax.random.key(123), draws)
  return float(jax.lax.map(one, keys).mean())


def test_levels():
  assert noise.PUEConfig().levels() == pytest.approx(
      (0.0, 0.05, 0.1, 0.15, 0.2, 0.25))
  with pytest.raises(ValueError, match="sigma"):
    noise.PUEConfig(sigma=0).levels()
  with pytest.raises(ValueError, match="surrogate_draws"):
    noise.PUEConfig(surrogate_draws=0).check()


def test_robust_surrogate_step_lowers_expected_loss(model):
  images, labels = _dataset()
  x, y = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.05))
  step = jax.jit(lambda s, k: noise.robust_surrogate_step(s, (x, y), k,
                                                          pue=PUE))
  before = _expected_loss(model, state.variables, x, y)
  for i in range(6):
    state, _ = step(state, jax.random.key(i))
  # One optimizer update per level per call.
  assert int(state.step) == 6 * len(PUE.levels())
  assert _expected_loss(model, state.variables, x, y) < before


def test_robust_noise_step_lowers_expected_loss(model):
  images, labels = _dataset()
  x, y = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.05))
  for i in range(10):  # A surrogate that has learnt something.
    state, _ = jax.jit(train.train_step)(state, (x, y), jax.random.key(i))
  cfg = noise.EMConfig(mode="samplewise", epsilon=16 / 255,
                       pgd_steps=5).resolved()
  delta = jax.jit(lambda k: noise.robust_noise_step(
      state, x, y, jnp.zeros_like(x), k, cfg=cfg, pue=PUE))(
          jax.random.key(7))
  assert float(jnp.abs(delta).max()) <= 16 / 255 + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  before = _expected_loss(model, state.variables, x, y)
  after = _expected_loss(model, state.variables, x + delta, y)
  assert after < before


def test_pue_crafting_switches_robust_steps_on(model):
  images, labels = _dataset(60)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.1))
  result = noise.provably_unlearnable_noise(
      jax.random.key(1), state, images, labels, num_classes=3,
      mode="classwise", epsilon=32 / 255, pue=PUE._replace(robust_after=0.4),
      batch_size=20, max_rounds=4, progress=False)
  acc, robust = result.history["accuracy"], result.history["robust"]
  assert not robust[0]
  # Robust rounds follow the first round whose accuracy exceeded 0.4.
  first = next((i for i, a in enumerate(acc) if a > 0.4), None)
  if first is not None and first + 1 < len(acc):
    assert robust[first + 1]
    assert not any(robust[: first + 1])
  assert result.noise.shape == (3, 8, 8, 1)
  assert np.abs(result.noise).max() <= 32 / 255 + 1e-6
