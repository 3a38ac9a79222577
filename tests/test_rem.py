"""Tests of jaxue.rem: transformations, the min-min-max steps, resume."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models
from jaxue import rem
from jaxue import train

# One small config for every test, so that compiled blocks are reused.
CFG = rem.REMConfig(rho_u=16 / 255, rho_a=8 / 255, noise_steps=3,
                    eot_draws=2, attack_steps=3, train_steps=4, batch_size=16,
                    checkpoint_every=2, sweep_batch_size=32)


def _dataset(n=48):
  """Random images with arbitrary labels: learnable only by memorising."""
  images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 1), np.uint8)
  return images, (np.arange(n) % 3).astype(np.int32)


@pytest.fixture(scope="module")
def model():
  return models.make_model("small_cnn", num_classes=3, widths=(4, 4, 4))


@pytest.fixture(scope="module")
def trained(model):
  """A surrogate that memorised the data, so its loss is input-sensitive."""
  images, labels = _dataset()
  x, y = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.1))
  step = jax.jit(train.train_step)
  for i in range(20):
    batch = slice(0, 32) if i % 2 else slice(16, 48)
    state, _ = step(state, (x[batch], y[batch]), jax.random.key(i))
  return state


ATTACK = jax.jit(functools.partial(
    train.pgd_attack, epsilon=CFG.rho_a, step_size=CFG.rho_a / 5,
    steps=CFG.attack_steps))


def _loss(state, inputs, labels):
  logits, _ = state.apply_fn(state.variables, inputs, False)
  return float(train.cross_entropy(logits, labels))


@pytest.mark.parametrize("padding,flip", [(2, False), (4, True), (0, True)])
def test_transform_deterministic_shape_preserving_differentiable(padding,
                                                                 flip):
  t = rem.make_transform(padding, flip)
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
  a, b = t(jax.random.key(3), x), t(jax.random.key(3), x)
  np.testing.assert_array_equal(a, b)
  assert a.shape == x.shape and a.dtype == x.dtype
  different = [not np.array_equal(t(jax.random.key(k), x), a)
               for k in range(4, 8)]
  assert any(different)
  # Crops and flips are selections: the gradient reaches the input.
  grad = jax.grad(lambda z: jnp.sum(t(jax.random.key(3), z) ** 2))(x)
  assert float(jnp.abs(grad).sum()) > 0


def test_default_transform_and_bad_padding():
  assert rem.default_transform((28, 28, 1)) == rem.Transformation(2, False)
  assert rem.default_transform((32, 32, 3)) == rem.Transformation(4, True)
  with pytest.raises(ValueError, match="padding"):
    rem.make_transform(-1)
  with pytest.raises(ValueError, match="image shape"):
    rem.default_transform((28, 28))


def test_config_defaults_validation_and_cost():
  cfg = rem.REMConfig().resolved()
  assert cfg.rho_u == pytest.approx(8 / 255)
  assert cfg.rho_a == pytest.approx(4 / 255)
  assert cfg.noise_step_size == pytest.approx(8 / 255 / 5)
  assert cfg.attack_step_size == pytest.approx(4 / 255 / 5)
  assert (cfg.noise_steps, cfg.eot_draws, cfg.attack_steps) == (10, 5, 10)
  assert (cfg.train_steps, cfg.batch_size, cfg.lr_decay_every) == (5000, 128,
                                                                   2000)
  assert rem.rem_cost()["per_train_step"] == 561
  with pytest.raises(ValueError, match="rho_u"):
    rem.REMConfig(rho_u=0).resolved()
  with pytest.raises(ValueError, match="rho_a"):
    rem.REMConfig(rho_a=-1).resolved()
  with pytest.raises(ValueError, match="eot_draws"):
    rem.REMConfig(eot_draws=0).resolved()
  assert rem.REMConfig(rho_a=0).attack() is None


def test_stepwise_learning_rate():
  cfg = rem.REMConfig(learning_rate=0.1, lr_decay_every=3)
  tx = cfg.optimizer()
  params = {"w": jnp.ones(())}
  opt_state = tx.init(params)
  sizes = []
  for _ in range(7):
    updates, opt_state = tx.update({"w": jnp.ones(())}, opt_state, params)
    sizes.append(float(updates["w"]))
  # With momentum 0.9 the first update is -lr * (1 + wd): steps 0-2 at
  # 0.1, 3-5 at 0.01: the update shrinks sharply at step 3.
  assert sizes[0] == pytest.approx(-0.1 * (1 + 5e-4), rel=1e-5)
  assert abs(sizes[3]) < abs(sizes[2]) / 3


def test_inner_maximisation_raises_loss_within_rho_a(trained):
  images, labels = _dataset()
  x = jnp.asarray(images, jnp.float32) / 255
  y = jnp.asarray(labels)
  delta = ATTACK(jax.random.key(0), trained, x, y)
  assert float(jnp.abs(delta).max()) <= CFG.rho_a + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  assert _loss(trained, x + delta, y) > _loss(trained, x, y) + 0.1


def test_outer_step_lowers_robust_loss(trained):
  images, labels = _dataset()
  x = jnp.asarray(images, jnp.float32) / 255
  y = jnp.asarray(labels)
  cfg = CFG._replace(noise_steps=5).resolved()
  t = rem.default_transform(x.shape[1:])
  delta = jax.jit(functools.partial(rem.rem_noise_step, cfg=cfg,
                                    transform=t))(
                                        trained, x, y, jnp.zeros_like(x),
                                        jax.random.key(0))
  assert float(jnp.abs(delta).max()) <= cfg.rho_u + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1

  def robust_loss(delta):
    # E_t max_da CE(f(t(x + du) + da), y), with the same draws each time.
    losses = []
    for k in range(3):
      moved = t(jax.random.key(100 + k), x + delta)
      adversarial = moved + ATTACK(jax.random.key(k), trained, moved, y)
      losses.append(_loss(trained, adversarial, y))
    return np.mean(losses)

  before, after = robust_loss(jnp.zeros_like(x)), robust_loss(delta)
  assert after < 0.9 * before, (before, after)


def _snapshot(state, noise):
  return jax.device_get({"state": state, "noise": noise})


def test_resume_equals_uninterrupted_run(model):
  images, labels = _dataset()
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   CFG.optimizer())
  saved = {}

  def on_block(step, state, noise, history):
    saved[step] = (_snapshot(state, noise),
                   {k: list(v) for k, v in history.items()})

  full = rem.robust_error_minimizing_noise(
      jax.random.key(1), state, images, labels, num_classes=3, cfg=CFG,
      on_block=on_block, progress=False)
  total = rem.total_units(CFG, len(labels))
  assert total == 4 + 2 and sorted(saved) == [2, 4, 6]
  assert full.converged and full.noise.shape == images.shape
  assert np.abs(full.noise).max() <= 16 / 255 + 1e-6
  # Interrupted after the first training block, and after training.
  for step in (2, 4):
    snap, history = saved[step]
    resumed = rem.robust_error_minimizing_noise(
        jax.random.key(1), jax.tree.map(jnp.asarray, snap["state"]), images,
        labels,
        num_classes=3, cfg=CFG, noise=snap["noise"], start_step=step,
        history=history, progress=False)
    np.testing.assert_array_equal(resumed.noise, full.noise)
    for a, b in zip(jax.tree.leaves(resumed.surrogate.params),
                    jax.tree.leaves(full.surrogate.params)):
      np.testing.assert_array_equal(a, b)
    assert resumed.history["step"] == full.history["step"]


def test_rejects_bad_inputs(model):
  images, labels = _dataset()
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   CFG.optimizer())
  with pytest.raises(ValueError, match="batch_size"):
    rem.robust_error_minimizing_noise(
        jax.random.key(0), state, images[:8], labels[:8], num_classes=3,
        cfg=CFG, progress=False)
  with pytest.raises(ValueError, match="uint8"):
    rem.robust_error_minimizing_noise(
        jax.random.key(0), state, images.astype(np.float32), labels,
        num_classes=3, cfg=CFG, progress=False)
  with pytest.raises(ValueError, match="resume noise"):
    rem.robust_error_minimizing_noise(
        jax.random.key(0), state, images, labels, num_classes=3, cfg=CFG,
        noise=np.zeros((3, 8, 8, 1), np.float32), progress=False)
