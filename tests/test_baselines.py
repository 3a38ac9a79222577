"""Tests of jaxue.baselines: OPS, AR and LSP perturbations."""

import jax
import numpy as np
import pytest

from jaxue import baselines
from jaxue import noise

K = 3  # Classes in every test.
AR_SHAPE = (8, 8, 1)  # One AR image shape, so compiled scans are reused.


def _images(n=24, shape=(8, 8, 1), seed=0):
  """Random mid-range images (no pixel is constant within a class)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(30, 220, (n,) + shape).astype(np.uint8)
  return images, (np.arange(n) % K).astype(np.int32)


def _l2(x):
  x = np.asarray(x, np.float64)
  return np.sqrt((x**2).reshape(x.shape[0], -1).sum(1))


def _realised(images, released):
  return released.astype(np.float64) / 255 - images.astype(np.float64) / 255


@pytest.fixture(scope="module")
def ar_coefs():
  return baselines.ar_coefficients(jax.random.key(7), K, AR_SHAPE[2])


# ---------------------------------------------------------------------------
# OPS.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("colour,corner", [((0,), (1.0,)),
                                           ((0, 255, 0), (1.0, 0.0, 1.0))])
def test_ops_finds_the_planted_pixel(colour, corner):
  # Class k's pixel (k + 1, 2k) is constant: setting it to the opposite
  # corner changes every image by the most possible with zero spread, so it
  # is the unique maximiser of mean / (std + tiny).
  images, labels = _images(shape=(8, 8, len(colour)))
  for k in range(K):
    images[labels == k, k + 1, 2 * k] = colour
  pattern = baselines.one_pixel_shortcut(images, labels, num_classes=K)
  np.testing.assert_array_equal(pattern.positions,
                                [[k + 1, 2 * k] for k in range(K)])
  np.testing.assert_array_equal(pattern.values, [corner] * K)
  assert pattern.positions.dtype == np.int32
  assert pattern.values.dtype == np.float32
  np.testing.assert_allclose(pattern.scores, 1e8, rtol=1e-6)


def test_ops_classes_never_share_a_pair():
  # Classes 0 and 1 both have pixel (2, 3) constant black; class 0 chooses
  # first (class-index order) and class 1 takes its next best, its other
  # constant pixel (5, 5) = white -> black.
  images, labels = _images()
  images[labels < 2, 2, 3] = 0
  images[labels == 1, 5, 5] = 255
  pattern = baselines.one_pixel_shortcut(images, labels, num_classes=K)
  np.testing.assert_array_equal(pattern.positions[:2], [[2, 3], [5, 5]])
  np.testing.assert_array_equal(pattern.values[:2], [[1.0], [0.0]])
  # On unstructured data the pairs are distinct too.
  images, labels = _images(60, (6, 6, 3), seed=1)
  labels = (np.arange(60) % 6).astype(np.int32)
  pattern = baselines.one_pixel_shortcut(images, labels, num_classes=6)
  pairs = {(*p, *v) for p, v in zip(pattern.positions.tolist(),
                                    pattern.values.tolist())}
  assert len(pairs) == 6


def test_ops_release_sets_exactly_one_pixel_per_image():
  images, labels = _images(30, (8, 8, 3), seed=2)
  delta = baselines.ops_noise(images, labels, num_classes=K)
  assert delta.shape == images.shape and delta.dtype == np.float32
  assert np.abs(delta).max() <= 1
  pattern = baselines.one_pixel_shortcut(images, labels, num_classes=K)
  released = noise.release(images, labels, delta)
  changed = np.any(released != images, axis=-1)  # (N, H, W)
  assert changed.sum((1, 2)).max() <= 1
  for i, k in enumerate(labels):
    row, col = pattern.positions[k]
    np.testing.assert_array_equal(released[i, row, col],
                                  (pattern.values[k] * 255).astype(np.uint8))
    assert changed[i].sum() == int(np.any(images[i, row, col]
                                          != released[i, row, col]))
  # A given pattern is applied as is (e.g. one searched elsewhere).
  again = baselines.ops_noise(images, labels, num_classes=K, pattern=pattern)
  np.testing.assert_array_equal(again, delta)


# ---------------------------------------------------------------------------
# AR.
# ---------------------------------------------------------------------------


def test_ar_coefficients_are_normalised(ar_coefs):
  assert ar_coefs.shape == (K, AR_SHAPE[2], 3, 3)
  assert ar_coefs.dtype == np.float32
  np.testing.assert_array_equal(ar_coefs[..., -1, -1], 0)
  np.testing.assert_allclose(ar_coefs.sum((-2, -1)), 1, atol=1e-5)
  assert len({c.tobytes() for c in ar_coefs}) == K


def test_ar_noise_norm_and_release_bound(ar_coefs):
  images, labels = _images()
  delta = baselines.ar_noise(
      jax.random.key(1), labels, AR_SHAPE, num_classes=K, epsilon=0.5,
      coefficients=ar_coefs)
  assert delta.shape == images.shape and delta.dtype == np.float32
  norms = _l2(delta)
  assert norms.max() <= 0.5 + 1e-4
  np.testing.assert_allclose(norms, 0.5, rtol=1e-5)
  released = noise.release(images, labels, delta)
  quantisation = 0.5 / 255 * np.sqrt(np.prod(AR_SHAPE))
  assert _l2(_realised(images, released)).max() <= 0.5 + quantisation
  # Every image draws its own sample, not one pattern per class.
  assert not np.allclose(delta[0], delta[K])


def test_ar_noise_follows_its_class_recursion_only(ar_coefs):
  _, labels = _images()
  delta = baselines.ar_noise(
      jax.random.key(2), labels, AR_SHAPE, num_classes=K,
      coefficients=ar_coefs)
  for i, k in enumerate(labels):
    scale = np.abs(delta[i]).max()
    own = np.abs(baselines.ar_residual(delta[i], ar_coefs[k])).max()
    assert own <= 1e-5 * scale, (i, own, scale)
    for other in set(range(K)) - {k}:
      residual = baselines.ar_residual(delta[i], ar_coefs[other])
      assert np.abs(residual).max() > 1e-2 * scale, (i, other)


def test_ar_default_coefficients_and_batching():
  _, labels = _images()
  key = jax.random.key(3)
  delta = baselines.ar_noise(key, labels, AR_SHAPE,
                                         num_classes=K)
  # The batch size (here not a divisor of N) is only a memory knob.
  by_batch = baselines.ar_noise(key, labels, AR_SHAPE,
                                            num_classes=K, batch_size=5)
  np.testing.assert_allclose(by_batch, delta, atol=1e-6)
  np.testing.assert_allclose(_l2(delta), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------
# LSP.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,patch,eps", [((32, 32, 3), 8, 1.30413),
                                             ((28, 28, 1), 7, 0.65882)])
def test_lsp_defaults_and_patches(shape, patch, eps):
  labels = np.arange(K, dtype=np.int32)
  delta = baselines.linear_separable_patches(jax.random.key(0), labels,
                                             shape, num_classes=K)
  assert delta.shape == (K,) + shape and delta.dtype == np.float32
  np.testing.assert_allclose(_l2(delta), eps, rtol=1e-4)
  assert _l2(delta).max() <= eps + 1e-4
  # Constant on each patch_size x patch_size patch, different across them.
  blocks = delta.reshape(K, shape[0] // patch, patch, shape[1] // patch,
                         patch, shape[2])
  np.testing.assert_array_equal(
      blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
  assert len(np.unique(blocks[0, :, 0, :, 0])) > 1
  assert not np.allclose(delta[0], delta[1])


def test_lsp_release_is_classwise_and_bounded():
  images, labels = _images(24, (8, 8, 3))
  images[:] = 128  # No clipping: the realised change is the pattern.
  delta = baselines.linear_separable_patches(
      jax.random.key(1), labels, (8, 8, 3), num_classes=K, epsilon=0.6,
      patch_size=2)
  released = noise.release(images, labels, delta)
  realised = _realised(images, released)
  for k in range(K):
    same = realised[labels == k]
    np.testing.assert_array_equal(same, np.broadcast_to(same[0], same.shape))
  quantisation = 0.5 / 255 * np.sqrt(8 * 8 * 3)
  assert _l2(realised).max() <= 0.6 + quantisation


# ---------------------------------------------------------------------------
# Shared properties: determinism and errors.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ar", "lsp"])
def test_same_key_same_noise(method, ar_coefs):
  _, labels = _images()

  def make(seed):
    key = jax.random.key(seed)
    if method == "ar":
      return baselines.ar_noise(key, labels, AR_SHAPE,
                                            num_classes=K,
                                            coefficients=ar_coefs)
    return baselines.linear_separable_patches(key, labels, (8, 8, 3),
                                              num_classes=K)

  np.testing.assert_array_equal(make(0), make(0))
  assert not np.allclose(make(0), make(1))


def test_ar_coefficients_same_key_same_processes(ar_coefs):
  again = baselines.ar_coefficients(jax.random.key(7), K, AR_SHAPE[2])
  np.testing.assert_array_equal(again, ar_coefs)


def test_ops_is_deterministic():
  images, labels = _images(30, (8, 8, 3), seed=4)
  first = baselines.ops_noise(images, labels, num_classes=K)
  np.testing.assert_array_equal(
      baselines.ops_noise(images.copy(), labels.copy(), num_classes=K),
      first)


def _ar(**kwargs):
  args = {"labels": np.zeros(4, np.int32), "image_shape": AR_SHAPE,
          "num_classes": K, "coefficients": np.zeros((K, 1, 3, 3))}
  args.update(kwargs)
  labels, shape = args.pop("labels"), args.pop("image_shape")
  return baselines.ar_noise(jax.random.key(0), labels, shape,
                                        **args)


def _lsp(**kwargs):
  args = {"labels": np.zeros(4, np.int32), "image_shape": (32, 32, 3),
          "num_classes": K}
  args.update(kwargs)
  labels, shape = args.pop("labels"), args.pop("image_shape")
  return baselines.linear_separable_patches(jax.random.key(0), labels,
                                            shape, **args)


def _ops(n_labels=24, label_shift=0, dtype=np.uint8):
  images, labels = _images()
  labels = labels[:n_labels] + label_shift
  return baselines.ops_noise(images.astype(dtype), labels, num_classes=K)


@pytest.mark.parametrize("call,message", [
    (lambda: _lsp(patch_size=5), "patch_size 5 does not divide the 32x32"),
    (lambda: _lsp(patch_size=0), "patch_size must be a positive integer"),
    (lambda: _lsp(epsilon=0.0), "must be a finite number > 0, got 0.0"),
    (lambda: _ar(epsilon=-1.0), "must be a finite number > 0, got -1.0"),
    (lambda: _lsp(labels=np.array([0, 3])), "labels must lie in [0, 3)"),
    (lambda: _ar(labels=np.array([0, 5])), "labels must lie in [0, 3)"),
    (lambda: _ops(label_shift=1), "labels must lie in [0, 3)"),
    (lambda: _ar(labels=np.zeros((4, 1), np.int32)),
     "expected 1-D integer labels"),
    (lambda: _lsp(labels=np.zeros(4)), "expected 1-D integer labels"),
    (lambda: _ops(n_labels=20), "20 labels for 24 images"),
    (lambda: _ops(dtype=np.float32), "expected uint8 NHWC images"),
    (lambda: _ar(image_shape=(8, 8)), "image_shape must be (H, W, C)"),
    (lambda: _ar(crop=1), "crop must be an integer >= window - 1 = 2"),
    (lambda: _ar(coefficients=np.zeros((K, 3, 3, 3))),
     "coefficients must have shape (3, 1, 3, 3)"),
])
def test_clear_errors(call, message):
  with pytest.raises(ValueError) as error:
    call()
  assert message in str(error.value)


def test_ar_default_min_response_follows_the_published_sets():
  assert baselines.ar_default_min_response(10) == 10.0  # CIFAR-10's bound.
  assert baselines.ar_default_min_response(2) == 10.0
  assert baselines.ar_default_min_response(11) == 3.0
  assert baselines.ar_default_min_response(100) == 3.0  # CIFAR-100's.


def test_ar_coefficients_default_bound_and_its_effect(ar_coefs):
  """None means the published bound for the class count; a stricter bound
  rejects candidates a looser one accepts, so it picks other processes
  whose matching filters respond more to each other's fields."""
  np.testing.assert_array_equal(
      ar_coefs, baselines.ar_coefficients(jax.random.key(7), K, 1,
                                          min_response=10.0))
  loose = baselines.ar_coefficients(jax.random.key(7), K, 1, min_response=0.0)
  assert not np.array_equal(loose, ar_coefs)

  labels = np.repeat(np.arange(K), 30)

  def weakest_cross_response(coefs):
    fields = baselines.ar_noise(
        jax.random.key(3), labels, (32, 32, 1), num_classes=K,
        coefficients=coefs)
    response = np.stack([np.abs(baselines.ar_residual(fields, c)).sum(
        (1, 2, 3)) for c in coefs], 1)
    per_class = np.stack([response[labels == k].mean(0) for k in range(K)])
    return per_class[~np.eye(K, dtype=bool)].min()

  assert weakest_cross_response(ar_coefs) > weakest_cross_response(loose)


def test_ar_coefficients_errors():
  with pytest.raises(ValueError, match="window must be an integer"):
    baselines.ar_coefficients(jax.random.key(0), K, 1, window=1)
  with pytest.raises(ValueError, match="found only"):
    baselines.ar_coefficients(jax.random.key(0), K, 1, min_response=1e9,
                              max_candidates=10)
  for bad in (-1.0, float("nan")):
    with pytest.raises(ValueError, match="min_response must be a finite"):
      baselines.ar_coefficients(jax.random.key(0), K, 1, min_response=bad)


# ---------------------------------------------------------------------------
# Method-level entry points: one CraftResult, like every crafting method.
# ---------------------------------------------------------------------------


def test_method_level_functions_return_craft_results(ar_coefs):
  images, labels = _images(shape=AR_SHAPE)
  key = jax.random.key(4)
  ops = baselines.one_pixel_shortcut_noise(images, labels, num_classes=K)
  pattern = baselines.one_pixel_shortcut(images, labels, num_classes=K)
  np.testing.assert_array_equal(
      ops.noise, baselines.ops_noise(images, labels, num_classes=K,
                                     pattern=pattern))
  np.testing.assert_array_equal(ops.info["positions"], pattern.positions)
  np.testing.assert_array_equal(ops.info["values"], pattern.values)
  assert ops.info["mode"] == "samplewise"

  ar = baselines.autoregressive_noise(key, images, labels, num_classes=K,
                                      coefficients=ar_coefs)
  noise_key = jax.random.split(key)[1]
  np.testing.assert_array_equal(
      ar.noise, baselines.ar_noise(noise_key, labels, AR_SHAPE,
                                   num_classes=K, coefficients=ar_coefs))
  np.testing.assert_array_equal(ar.info["coefficients"], ar_coefs)
  assert ar.info["window"] == 3 and ar.info["mode"] == "samplewise"

  lsp = baselines.linear_separable_noise(key, images, labels, num_classes=K)
  np.testing.assert_array_equal(
      lsp.noise, baselines.linear_separable_patches(key, labels, AR_SHAPE,
                                                    num_classes=K))
  assert lsp.info["patch_size"] == baselines.lsp_default_patch_size(AR_SHAPE)
  assert lsp.info["mode"] == "classwise"
  for result in (ops, ar, lsp):
    assert isinstance(result, noise.CraftResult)
    assert result.surrogate is None and result.converged
    released = noise.release(images, labels, result.noise,
                             mode=result.info["mode"])
    assert released.shape == images.shape


def test_autoregressive_noise_searches_its_processes():
  images, labels = _images(n=6, shape=AR_SHAPE)
  result = baselines.autoregressive_noise(
      jax.random.key(5), images, labels, num_classes=K, progress=False)
  coef_key = jax.random.split(jax.random.key(5))[0]
  np.testing.assert_array_equal(
      result.info["coefficients"],
      baselines.ar_coefficients(coef_key, K, AR_SHAPE[2]))
  assert result.info["min_response"] == baselines.ar_default_min_response(K)
