"""UEraser: the augmentation policy and the max-over-K loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxue import data
from jaxue import defences
from jaxue import models
from jaxue import train
from jaxue import ueraser


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (8, 12, 12, 1)).astype(np.float32)
  x[:, 3:9, 4:8] = 0.9  # Some structure, so the geometric ops show.
  return jnp.asarray(x)


def test_augment_range_shape_and_determinism(images):
  augment = jax.jit(ueraser.augment)
  key = jax.random.key(0)
  out = augment(key, images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  np.testing.assert_array_equal(out, augment(key, images))
  assert not np.array_equal(out, augment(jax.random.key(1), images))
  # Out-of-range input is clipped first.
  out = augment(key, images * 3 - 1)
  assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("name", ueraser.OPERATIONS)
def test_every_operation_stays_in_range(images, name):
  out = ueraser._OPS[name](jax.random.key(3), images)
  assert out.shape == images.shape
  assert float(out.min()) >= 0 and float(out.max()) <= 1 + 1e-6


def test_trivial_augment_applies_exactly_one_operation(images):
  key = jax.random.key(5)
  out = ueraser.trivial_augment(key, images)
  _, magnitude_key = jax.random.split(key)
  matches = [name for name in ueraser.OPERATIONS
             if np.allclose(out, ueraser._OPS[name](magnitude_key, images),
                            atol=1e-6)]
  assert matches


def test_operations_by_construction(images):
  zero = jnp.zeros(len(images))
  one = jnp.ones(len(images))
  same = ueraser._affine(images, one, zero, zero, zero, one, zero)
  np.testing.assert_allclose(same, images, atol=1e-6)
  # A quarter turn of a square image is a 90-degree array rotation.
  turned = ueraser._affine(images, zero, one, zero, -one, zero, zero)
  np.testing.assert_allclose(turned, jnp.rot90(images, -1, axes=(1, 2)),
                             atol=1e-5)
  stretched = ueraser.auto_contrast(None, images * 0.5 + 0.2)
  np.testing.assert_allclose(stretched.min(axis=(1, 2, 3)), 0, atol=1e-6)
  np.testing.assert_allclose(stretched.max(axis=(1, 2, 3)), 1, atol=1e-6)
  # Equalize spreads a narrow histogram over the whole range.
  ramp = jnp.linspace(0.4, 0.6, 784).reshape(1, 28, 28, 1)
  assert float(ueraser.equalize(None, ramp).max()) > 0.95


def test_plasma_is_a_fractal_in_the_unit_interval():
  key = jax.random.key(0)
  smooth = ueraser.plasma(key, (16, 28, 28, 1), 0.3)
  rough = ueraser.plasma(key, (16, 28, 28, 1), 0.9)
  assert smooth.shape == (16, 28, 28, 1)
  for p in (smooth, rough):
    assert float(p.min()) >= 0 and float(p.max()) <= 1

  def jumps(p):
    return float(jnp.abs(jnp.diff(p, axis=1)).mean())

  assert jumps(smooth) < jumps(rough)


def test_channel_shuffle_permutes_channels_only():
  x = jax.random.uniform(jax.random.key(0), (6, 5, 5, 3))
  out = ueraser.channel_shuffle(jax.random.key(1), x)
  np.testing.assert_allclose(jnp.sort(out, -1), jnp.sort(x, -1))
  gray = x[..., :1]
  assert ueraser.channel_shuffle(jax.random.key(1), gray) is gray


def test_schedules():
  lite, standard, top = (ueraser.schedule(n) for n in
                         ("lite", "standard", "max"))
  assert [lite(e, 8) for e in range(8)] == [1] * 8
  assert [standard(e, 8) for e in range(8)] == [5, 5] + [1] * 6
  assert [standard(e, 200) for e in (49, 50)] == [5, 1]
  assert [top(e, 8) for e in range(8)] == [5] * 8
  with pytest.raises(ValueError, match="unknown UEraser schedule"):
    ueraser.schedule("huge")


@pytest.fixture(scope="module")
def setup():
  model = models.make_model("small_cnn", num_classes=3, widths=(4, 4, 4))
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (16, 12, 12, 1), dtype=np.uint8)
  y = rng.integers(0, 3, 16).astype(np.int32)
  state = train.create_train_state(jax.random.key(0), model, x.shape[1:],
                                   train.make_optimizer(0.1))
  return model, state, jnp.asarray(x), jnp.asarray(y)


@jax.jit
def _copy(key, images):
  return ueraser.augment(key, train.as_float(images))


def _losses(model, state, images, labels, key):
  logits, _ = model.apply(state.variables, _copy(key, images), True)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def test_max_over_repeats_loss(setup):
  model, state, x, y = setup
  key = jax.random.key(7)
  step = jax.jit(train.train_step, static_argnames=("augment", "repeats"))
  # K = 1 is the plain augmented loss.
  _, metrics = step(state, (x, y), key, augment=ueraser.augment, repeats=1)
  plain = _losses(model, state, x, y, key).mean()
  np.testing.assert_allclose(metrics["loss"], plain, rtol=1e-5)
  # K = 3: the mean of per-example maxima over the 3 copies, at least every
  # single copy's loss.
  _, metrics = step(state, (x, y), key, augment=ueraser.augment, repeats=3)
  copies = jnp.stack([_losses(model, state, x, y, jax.random.fold_in(key, i))
                      for i in range(3)])
  np.testing.assert_allclose(metrics["loss"], copies.max(0).mean(),
                             rtol=1e-5)
  for single in copies:
    assert float(metrics["loss"]) >= float(single.mean()) - 1e-6
  with pytest.raises(ValueError, match="repeats"):
    train.train_step(state, (x, y), key, repeats=2)
  with pytest.raises(ValueError, match="repeats"):
    train.train_step(state, (x, y), key, augment=ueraser.augment,
                     repeats=0)


def test_defences_train_with_a_schedule_and_report_the_peak(setup):
  model, _, x, y = setup
  defence = defences.make_defence("ueraser-max", (12, 12, 1), 3)
  assert defence.repeats == ueraser.Schedule(5, 1.0)
  assert defences.make_defence("ueraser-lite", (12, 12, 1), 3).repeats(
      0, 8) == 1
  # A cheap augmentation (UEraser's takes long to compile): the schedule
  # of K is what is tested here.
  _, history = train.train_victim(
      jax.random.key(2), model, np.asarray(x), np.asarray(y),
      test=(np.asarray(x), np.asarray(y)), epochs=2, batch_size=8,
      augment=data.default_augmentation((12, 12, 1)),
      repeats=ueraser.Schedule(2, 0.5), progress=False)
  curve = history["test_accuracy"]
  assert len(curve) == 2 and np.isfinite(history["train_loss"]).all()
  assert history["peak_test_accuracy"] == max(curve)
  assert curve[history["peak_epoch"] - 1] == max(curve)
  assert train.peak_accuracy([0.2, 0.5, 0.5, 0.1]) == (0.5, 2)
  with pytest.raises(ValueError, match="curve"):
    train.peak_accuracy([])
