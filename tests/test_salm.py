"""Tests of jaxue.salm: sparse (top-k masked) error-minimizing noise."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models
from jaxue import noise
from jaxue import salm
from jaxue import train


def _dataset(n=64, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % classes).astype(np.int32)
  images = rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)
  # A black background, as Fashion-MNIST's: half of the pixels are 0.
  images[:, :, :4] = 0
  return images, labels


@pytest.fixture(scope="module")
def model():
  return models.make_model("small_cnn", num_classes=3, widths=(8, 8, 8))


def _state(model):
  return train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                  train.make_optimizer(0.1))


KW = dict(num_classes=3, epsilon=32 / 255, batch_size=32, pgd_steps=3,
          max_rounds=2, progress=False)


def test_rho_one_is_em_bit_for_bit(model):
  images, labels = _dataset()
  em = noise.error_minimizing_noise(jax.random.key(1), _state(model), images,
                                    labels, **KW)
  sparse = salm.salm_noise(jax.random.key(1), _state(model), images, labels,
                           salm=salm.SALMConfig(rho=1.0), **KW)
  np.testing.assert_array_equal(sparse.noise, em.noise)
  assert sparse.history["accuracy"] == em.history["accuracy"]
  assert sparse.info["method"] == "salm" and sparse.info["pixels"] == 64
  assert em.info["method"] == "em"


def test_topk_mask_picks_exactly_k_largest():
  scores = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4, 6)))
  mask = salm.topk_mask(scores, 7)
  assert mask.shape == (5, 4, 6, 1) and mask.dtype == bool
  np.testing.assert_array_equal(mask.sum((1, 2, 3)), 7)
  flat = np.asarray(scores).reshape(5, -1)
  chosen = np.asarray(mask).reshape(5, -1)
  for row, picked in zip(flat, chosen):
    assert row[picked].min() > row[~picked].max()
  # Ties (an all-zero background) go to the lower flat index.
  tied = salm.topk_mask(jnp.zeros((1, 2, 2)), 2)
  np.testing.assert_array_equal(np.asarray(tied).ravel(),
                                [True, True, False, False])
  assert salm.topk_mask(scores, 24).all()
  assert salm.pixel_count(0.1, (8, 8, 1)) == 6
  assert salm.pixel_count(1e-6, (8, 8, 1)) == 1


def _step(model, salm_cfg, steps, saliency=None):
  images, labels = _dataset(32)
  cfg = noise.EMConfig(epsilon=32 / 255, pgd_steps=steps).resolved()
  step = functools.partial(salm.masked_noise_step, cfg=cfg, salm=salm_cfg,
                           saliency=saliency)
  x = jnp.asarray(images, jnp.float32) / 255
  y = jnp.asarray(labels)
  delta = jax.jit(step)(_state(model), x, y, jnp.zeros_like(x),
                        jax.random.key(0))
  return np.asarray(x), np.asarray(y), np.asarray(delta)


def test_one_step_moves_the_top_gradient_pixels_only(model):
  x, y, delta = _step(model, salm.SALMConfig(rho=0.1), 1)
  k = salm.pixel_count(0.1, x.shape[1:])
  state = _state(model)
  grad = np.asarray(jax.grad(lambda xa: noise.eval_loss(state, xa, y, None))(
      jnp.asarray(x)))
  expected = np.asarray(salm.topk_mask(jnp.abs(jnp.asarray(grad)).sum(-1), k))
  moved = delta != 0
  assert moved.any()
  # A masked pixel stays put only where [0, 1] clipped its step away.
  assert not (moved & ~expected).any()
  assert (moved.sum((1, 2, 3)) <= k).all()


def test_restrict_keeps_at_most_k_pixels(model):
  x, _, free = _step(model, salm.SALMConfig(rho=0.1), 5)
  _, _, kept = _step(model, salm.SALMConfig(rho=0.1, restrict=True), 5)
  k = salm.pixel_count(0.1, x.shape[1:])
  assert ((kept != 0).sum((1, 2, 3)) <= k).all()
  # Without it the per-step masks differ, so more pixels end up moved.
  assert (free != 0).sum() > (kept != 0).sum()
  assert salm.noise_sparsity(kept) <= k / 64 + 1e-9


def test_intensity_mask_perturbs_the_foreground(model):
  x, _, delta = _step(model, salm.SALMConfig(rho=0.25, mask="intensity"), 4)
  k = salm.pixel_count(0.25, x.shape[1:])
  bright = np.asarray(salm.topk_mask(jnp.asarray(x).sum(-1), k))
  assert (delta != 0).any() and not ((delta != 0) & ~bright).any()
  assert not (delta[:, :, :4] != 0).any()  # The black half is untouched.


def test_fixed_mask_follows_the_saliency_model(model):
  saliency = train.create_train_state(jax.random.key(3), model, (8, 8, 1),
                                      train.make_optimizer(0.1))
  x, y, delta = _step(model, salm.SALMConfig(rho=0.1, mask="grad-topk-fixed"),
                      4, saliency)
  k = salm.pixel_count(0.1, x.shape[1:])
  fixed = np.asarray(salm.topk_mask(
      salm.input_saliency(saliency, jnp.asarray(x), jnp.asarray(y)), k))
  assert (delta != 0).any() and not ((delta != 0) & ~fixed).any()


def test_scale_to_l2():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 3, 3, 1)).astype(np.float32)
  b = rng.normal(size=(4, 3, 3, 1)).astype(np.float32)
  b[2] = 0
  scaled = salm.scale_to_l2(a, b)
  np.testing.assert_allclose(np.linalg.norm(scaled.reshape(4, -1), axis=1),
                             np.linalg.norm(b.reshape(4, -1), axis=1),
                             rtol=1e-5)
  # Same direction as the original noise.
  np.testing.assert_allclose(scaled[0] / np.linalg.norm(scaled[0]),
                             a[0] / np.linalg.norm(a[0]), rtol=1e-5)
  with pytest.raises(ValueError, match="same"):
    salm.scale_to_l2(a, b[:2])


def test_bad_input(model):
  images, labels = _dataset()
  with pytest.raises(ValueError, match="rho must be in"):
    salm.SALMConfig(rho=0).check()
  with pytest.raises(ValueError, match="rho must be in"):
    salm.SALMConfig(rho=1.5).check()
  with pytest.raises(ValueError, match="mask must be one of"):
    salm.SALMConfig(mask="edges").check()
  cfg = noise.EMConfig(mode="classwise")
  with pytest.raises(ValueError, match="sample-wise only"):
    salm.salm_steps(cfg, salm.SALMConfig())
  with pytest.raises(ValueError, match="saliency"):
    salm.salm_steps(noise.EMConfig(), salm.SALMConfig(mask="grad-topk-fixed"))
  with pytest.raises(ValueError, match="saliency"):
    salm.salm_noise(jax.random.key(0), _state(model), images, labels,
                    salm=salm.SALMConfig(mask="grad-topk-fixed"), **KW)
