"""Tests of PUE crafting: the robust steps lower the loss under weight noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import certify
from jaxue import models
from jaxue import noise
from jaxue import pgd
from jaxue import pue as pue_lib
from jaxue import train

SIGMA = 0.1
PUE = pue_lib.PUEConfig(sigma=SIGMA, sigma_step=0.1, surrogate_draws=3,
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
  assert pue_lib.PUEConfig().levels() == pytest.approx(
      (0.0, 0.05, 0.1, 0.15, 0.2, 0.25))
  with pytest.raises(ValueError, match="sigma"):
    pue_lib.PUEConfig(sigma=0).levels()
  with pytest.raises(ValueError, match="surrogate_draws"):
    pue_lib.PUEConfig(surrogate_draws=0).check()


def test_default_draw_chunk_per_backend():
  assert pue_lib.default_draw_chunk(10, "cpu") == 1
  assert pue_lib.default_draw_chunk(10, "gpu") == 10
  assert pue_lib.default_draw_chunk(100, "tpu") == 16


def test_robust_surrogate_step_lowers_expected_loss(model):
  images, labels = _dataset()
  x, y = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.05))
  step = jax.jit(lambda s, k: pue_lib.robust_surrogate_step(
      s, (x, y), k, pue=PUE))
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
  delta = jax.jit(lambda k: pue_lib.robust_noise_step(
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
  result = pue_lib.provably_unlearnable_noise(
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


def _fashion_state():
  model = models.make_model("small_cnn", widths=(4, 8, 8))
  return train.create_train_state(jax.random.key(0), model, (28, 28, 1),
                                  train.make_optimizer(0.1))


def _plain_pue_step(state, batch, key, pue):
  """`jaxue.pue.robust_surrogate_step` as Python loops over levels and draws."""
  x, y = batch[0].astype(jnp.float32) / 255, batch[1]

  @jax.jit
  def draw_grad(state, draw_key, sigma):
    def loss(params):
      noisy = certify.perturb_params(draw_key, params, sigma)
      logits, stats = state.apply_fn(
          {"params": noisy, "batch_stats": state.batch_stats}, x, True)
      return train.cross_entropy(logits, y), stats
    return jax.value_and_grad(loss, has_aux=True)(state.params)

  for j, sigma in enumerate(pue.levels()):
    keys = jax.random.split(jax.random.fold_in(key, j), pue.surrogate_draws)
    # A traced sigma lets level 0 (sigma = 0) through perturb_params' check;
    # it adds exact zeros, as in the jitted step.
    draws = [draw_grad(state, k, jnp.float32(sigma)) for k in keys]
    mean = lambda *leaves: jnp.mean(jnp.stack(leaves), axis=0)
    grads = jax.tree.map(mean, *[g for _, g in draws])
    if pue.reference_loss_scale:  # Each pass's loss / (T * draws).
      grads = jax.tree.map(lambda g: g * (1.0 / len(pue.levels())), grads)
    stats = jax.tree.map(mean, *[s for (_, s), _ in draws])
    state = train.apply_gradients(state, grads, stats)
  return state


@pytest.mark.parametrize("reference_loss_scale", [False, True])
def test_robust_surrogate_step_is_the_plain_loop(reference_loss_scale):
  # Batch 16: at widths 4,8,8 with batch 8, XLA:CPU (jaxlib 0.10.2)
  # miscompiled the single-draw gradient (then a vmap of one) unless
  # XLA_FLAGS=--xla_cpu_use_fusion_emitters=false.
  rng = np.random.default_rng(0)
  batch = (jnp.asarray(rng.integers(0, 256, (16, 28, 28, 1), np.uint8)),
           jnp.asarray(rng.integers(0, 10, 16).astype(np.int32)))
  key = jax.random.key(2)
  pue = pue_lib.PUEConfig(surrogate_draws=3,
                          reference_loss_scale=reference_loss_scale)
  plain = _plain_pue_step(_fashion_state(), batch, key, pue)
  # With 1/T steps this batch is more sensitive to rounding: the jitted
  # step's own draw chunks 1 and 3 differ by up to 3.5e-5 there.
  atol = 1e-4 if reference_loss_scale else 1e-5
  # None: the backend's default (1 on CPU); 3: all draws in one vmap.
  for chunk in ((1, 2, 3, None) if not reference_loss_scale else (None,)):
    state, _ = jax.jit(lambda s, b, k, pue=pue._replace(draw_chunk=chunk):
                       pue_lib.robust_surrogate_step(s, b, k, pue=pue))(
                           _fashion_state(), batch, key)
    for a, b in ((state.params, plain.params),
                 (state.batch_stats, plain.batch_stats)):
      for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4,
                                   atol=atol)
  if reference_loss_scale:  # Not the default step: 1/T is no rounding.
    default, _ = jax.jit(lambda s, b, k: pue_lib.robust_surrogate_step(
        s, b, k, pue=pue._replace(reference_loss_scale=False)))(
            _fashion_state(), batch, key)
    gap = max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
              for u, v in zip(jax.tree.leaves(default.params),
                              jax.tree.leaves(plain.params)))
    assert gap > 1e-2


def _plain_robust_noise_step(state, x, y, delta, key, cfg, pue):
  """`jaxue.pue.robust_noise_step` as Python loops: every level, level 0 too,
  sums the input gradients of ``noise_draws`` weight draws."""

  # The draws are made apart from the gradient, as jaxue makes them. Drawn
  # inside the differentiated function, XLA:CPU recomputes the sampler in
  # the forward and backward fusions with different rounding, and the
  # reshape-max pool's gradient, routed through x == max(x), drops the
  # windows whose two copies of x differ (seen with convolution biases).
  perturb = jax.jit(certify.perturb_params)

  @jax.jit
  def input_grad(inputs, params):
    def loss(inputs):
      logits, _ = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, inputs,
          False)
      return train.cross_entropy(logits, y) * inputs.shape[0]
    return jax.grad(loss)(inputs)

  levels = pue.levels()
  delta = pgd.project(delta, x, epsilon=cfg.epsilon)
  for i in range(cfg.pgd_steps * len(levels)):
    sigma = jnp.float32(levels[i % len(levels)])  # Traced: 0 is allowed.
    keys = jax.random.split(jax.random.fold_in(key, i), pue.noise_draws)
    grad = sum(input_grad(x + delta, perturb(k, state.params, sigma))
               for k in keys)
    delta = delta - cfg.step_size * jnp.sign(grad)
    delta = pgd.project(delta, x, epsilon=cfg.epsilon)
  return delta


def test_robust_noise_step_is_the_plain_loop(model):
  images, labels = _dataset(12)
  x, y = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.05))
  cfg = noise.EMConfig(mode="samplewise", epsilon=16 / 255,
                       pgd_steps=2).resolved()
  pue = pue_lib.PUEConfig(sigma=0.2, sigma_step=0.1, noise_draws=3)
  key = jax.random.key(5)
  delta = jax.jit(lambda d: pue_lib.robust_noise_step(
      state, x, y, d, key, cfg=cfg, pue=pue))(jnp.zeros_like(x))
  plain = _plain_robust_noise_step(state, x, y, jnp.zeros_like(x), key, cfg,
                                   pue)
  np.testing.assert_allclose(np.asarray(delta), np.asarray(plain), atol=1e-6)
