"""Training-time defences and partial protection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import defences
from jaxue import models
from jaxue import noise
from jaxue import train


def _batch(n=16, shape=(12, 12, 3), seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(0.05, 1.0, (n,) + shape), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 5, n), jnp.int32)
  return images, labels


def test_cutout_zeroes_one_clipped_square_per_image():
  images, _ = _batch()
  out = defences.cutout(jax.random.key(0), images, size=4)
  assert out.shape == images.shape and out.dtype == images.dtype
  zeroed = np.asarray((out == 0).all(-1))
  for mask in zeroed:
    rows, cols = np.nonzero(mask)
    assert 1 <= mask.sum() <= 16
    # The zeroed pixels form one axis-aligned rectangle.
    assert mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert np.ptp(rows) < 4 and np.ptp(cols) < 4
  untouched = ~zeroed
  np.testing.assert_array_equal(np.asarray(out)[untouched],
                                np.asarray(images)[untouched])
  again = defences.cutout(jax.random.key(0), images, size=4)
  np.testing.assert_array_equal(out, again)
  with pytest.raises(ValueError, match="cutout size"):
    defences.cutout(jax.random.key(0), images, size=0)
  with pytest.raises(ValueError, match="NHWC"):
    defences.cutout(jax.random.key(0), images[0], size=2)


@pytest.mark.parametrize("mixer", [defences.mixup, defences.cutmix])
def test_mixers_give_soft_labels_summing_to_one(mixer):
  images, labels = _batch()
  mixed, targets = mixer(jax.random.key(1), images, labels, num_classes=5)
  assert mixed.shape == images.shape and mixed.dtype == images.dtype
  assert targets.shape == (16, 5)
  np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
  assert float(targets.min()) >= 0
  # Each target puts its mass on the image's own label and one partner's.
  assert ((np.asarray(targets) > 1e-6).sum(-1) <= 2).all()
  again = mixer(jax.random.key(1), images, labels, num_classes=5)
  np.testing.assert_array_equal(mixed, again[0])
  with pytest.raises(ValueError, match="alpha"):
    mixer(jax.random.key(1), images, labels, num_classes=5, alpha=0.0)


def test_cutmix_targets_follow_the_pasted_area():
  images = jnp.broadcast_to(jnp.arange(8.0)[:, None, None, None] / 8,
                            (8, 10, 10, 1))
  labels = jnp.arange(8)
  for seed in range(5):
    mixed, targets = defences.cutmix(jax.random.key(seed), images, labels,
                                     num_classes=8)
    for i in range(8):
      own = np.isclose(np.asarray(mixed[i]), i / 8).mean()
      assert targets[i, i] == pytest.approx(own, abs=1e-6) or own == 1.0


def test_mixup_mixes_images_as_their_targets():
  values = jnp.arange(16.0) / 16
  images = jnp.broadcast_to(values[:, None, None, None], (16, 4, 4, 1))
  labels = jnp.arange(16)  # One class per image: targets name the partner.
  mixed, targets = defences.mixup(jax.random.key(3), images, labels,
                                  num_classes=16)
  np.testing.assert_allclose(mixed[:, 0, 0, 0], targets @ values, atol=1e-6)
  assert (targets.max(-1) < 1).any()  # Mixed, not all paired with self.


def test_grayscale():
  images, _ = _batch()
  gray = defences.grayscale(None, images)
  assert gray.shape == images.shape
  np.testing.assert_allclose(gray[..., 0], gray[..., 2])
  np.testing.assert_allclose(
      gray[..., 0], images @ jnp.array([0.299, 0.587, 0.114]), rtol=1e-6)
  single = images[..., :1]
  assert defences.grayscale(None, single) is single  # A no-op on 1 channel.


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_reencodes_uint8(channels):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 16, 16, channels), dtype=np.uint8)
  out = defences.jpeg(images, quality=10)
  assert out.shape == images.shape and out.dtype == np.uint8
  assert not np.array_equal(out, images)  # Noise does not survive q = 10.
  np.testing.assert_array_equal(out, defences.jpeg(images, quality=10))
  # Higher quality stays closer to the input.
  close = defences.jpeg(images, quality=95)
  assert (np.abs(close.astype(int) - images).mean()
          < np.abs(out.astype(int) - images).mean())
  with pytest.raises(ValueError, match="uint8"):
    defences.jpeg(images.astype(np.float32))
  with pytest.raises(ValueError, match="quality"):
    defences.jpeg(images, quality=0)


def test_make_defence():
  for name in defences.DEFENCES:
    defence = defences.make_defence(name, (28, 28, 1), 10)
    assert defence.name == name
  assert defences.make_defence("none", (28, 28, 1), 10) == defences.Defence(
      "none")
  assert defences.Defence("none")[1:] == (None, None, None, 1, None)
  assert defences.make_defence("mixup", (28, 28, 1), 10).mix is not None
  assert defences.make_defence("jpeg", (28, 28, 1), 10).preprocess is not None
  cut = defences.make_defence("cutout", (28, 28, 1), 10).augment
  assert cut.keywords["size"] == 14
  with pytest.raises(ValueError, match="unknown defence 'magic'"):
    defences.make_defence("magic", (28, 28, 1), 10)


def test_train_step_with_mix_trains_on_soft_targets():
  model = models.make_model("small_cnn", num_classes=5, widths=(4, 8, 8))
  state = train.create_train_state(jax.random.key(0), model, (12, 12, 3),
                                   train.make_optimizer(0.05))
  images, labels = _batch()
  mix = defences.make_defence("mixup", (12, 12, 3), 5).mix
  step = jax.jit(lambda s, k: train.train_step(s, (images, labels), k,
                                               mix=mix))
  losses = []
  for i in range(30):
    state, metrics = step(state, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
  with pytest.raises(ValueError, match="mix"):
    train.fit(jax.random.key(0), state,
              np.zeros((16, 12, 12, 3), np.uint8), np.zeros(16, np.int32),
              epochs=1, batch_size=8, mix=mix,
              adversarial=train.AdversarialConfig(), progress=False)


def test_protect_fraction_protects_exactly_the_requested_fraction():
  clean = np.zeros((50, 4, 4, 1), np.uint8)
  protected = np.full((50, 4, 4, 1), 9, np.uint8)
  for ratio, expected in ((0.0, 0), (0.3, 15), (0.5, 25), (1.0, 50)):
    images, mask = noise.protect_fraction(jax.random.key(0), clean,
                                          protected, ratio)
    assert mask.sum() == expected
    np.testing.assert_array_equal(images[mask], protected[mask])
    np.testing.assert_array_equal(images[~mask], clean[~mask])
  a = noise.protect_fraction(jax.random.key(1), clean, protected, 0.5)[1]
  b = noise.protect_fraction(jax.random.key(1), clean, protected, 0.5)[1]
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="poison_ratio"):
    noise.protect_fraction(jax.random.key(0), clean, protected, 1.5)
  with pytest.raises(ValueError, match="must match"):
    noise.protect_fraction(jax.random.key(0), clean, protected[:10], 0.5)
