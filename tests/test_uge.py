"""Ungeneralizable examples (a reconstruction of Ye & Wang, CVPR 2024)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models
from jaxue import noise as noise_lib
from jaxue import train
from jaxue import uge

N, SIDE, CLASSES = 48, 8, 3
TINY = dict(rounds=2, steps=3, batch_size=16, generator_widths=(4,))


@pytest.fixture(scope="module")
def tiny():
  rng = np.random.default_rng(0)
  labels = np.arange(N, dtype=np.int32) % CLASSES
  # Class-dependent brightness, so features and gradients differ by class.
  images = rng.integers(0, 120, (N, SIDE, SIDE, 1)) + 60 * labels[
      :, None, None, None]
  images = images.astype(np.uint8)
  authorised = models.make_model("small_cnn", num_classes=CLASSES,
                                 widths=(4, 8), conv_impl="im2col")
  encoder_model = models.make_model("small_cnn_flat", num_classes=CLASSES,
                                    widths=(4, 4))
  encoder = uge.penultimate(
      encoder_model, encoder_model.init(jax.random.key(1), images.shape[1:]))
  result = uge.ungeneralizable_examples(
      jax.random.key(0), authorised, images, labels, num_classes=CLASSES,
      encoder=encoder, progress=False, **TINY)
  return images, labels, authorised, encoder, result


def test_result_shapes_and_budget(tiny):
  images, labels, _, _, result = tiny
  assert isinstance(result, noise_lib.CraftResult)
  assert result.noise.shape == images.shape
  assert result.noise.dtype == np.float32
  assert np.abs(result.noise).max() <= 8 / 255 + 1e-7
  assert result.info["method"] == "uge"
  assert result.info["mode"] == "samplewise"
  assert isinstance(result.surrogate, train.TrainState)
  assert len(result.history["gm"]) == TINY["rounds"]
  released = noise_lib.release(images, labels, result.noise, epsilon=8 / 255,
                               mode="samplewise")
  assert released.shape == images.shape
  assert np.abs(released.astype(int) - images).max() <= 8 + 1


def test_generator_reproduces_noise(tiny):
  images, _, _, _, result = tiny
  cfg = uge.UGEConfig(**TINY).resolved()
  again = uge.generate(uge.make_generator(cfg, 1), result.info["generator"],
                       images)
  np.testing.assert_array_equal(again, result.noise)


def test_deterministic(tiny):
  images, labels, authorised, encoder, result = tiny
  again = uge.ungeneralizable_examples(
      jax.random.key(0), authorised, images, labels, num_classes=CLASSES,
      encoder=encoder, progress=False, **TINY)
  np.testing.assert_array_equal(again.noise, result.noise)
  assert again.history["loss"] == result.history["loss"]


def test_resume_equals_uninterrupted(tiny):
  images, labels, authorised, encoder, result = tiny
  saved = {}

  def on_round(r, gen_params, gen_opt, net, history):
    if r == 0:
      saved["state"] = jax.tree.map(np.array, (gen_params, gen_opt, net))
      saved["history"] = {k: list(v) for k, v in history.items()}

  uge.ungeneralizable_examples(
      jax.random.key(0), authorised, images, labels, num_classes=CLASSES,
      encoder=encoder, progress=False, on_round=on_round,
      **dict(TINY, rounds=1))
  gen_params, gen_opt, net = saved["state"]
  resumed = uge.ungeneralizable_examples(
      jax.random.key(0), authorised, images, labels, num_classes=CLASSES,
      encoder=encoder, progress=False, start_round=1,
      generator_state=(gen_params, gen_opt), network=net,
      history=saved["history"], **TINY)
  np.testing.assert_array_equal(resumed.noise, result.noise)
  assert resumed.history["loss"] == result.history["loss"]


def test_gradient_matching_zero_on_clean_input(tiny):
  images, labels, authorised, _, _ = tiny
  variables = authorised.init(jax.random.key(2), images.shape[1:])
  x = train.as_float(jnp.asarray(images[:16]))
  y = jnp.asarray(labels[:16])
  loss = jax.jit(uge.gradient_matching_loss, static_argnums=0)
  same = loss(authorised.apply, variables, x, x, y)
  assert abs(float(same)) < 1e-5
  other = loss(authorised.apply, variables, 1.0 - x, x, y)
  assert float(other) > 1e-3


def test_feature_distance_grows_under_training(tiny):
  images, _, _, encoder, result = tiny
  cfg = uge.UGEConfig(**TINY).resolved()
  generator = uge.make_generator(cfg, 1)
  start = generator.init(jax.random.split(jax.random.key(0), 3)[0],
                         jnp.zeros((1, SIDE, SIDE, 1)))["params"]
  x = train.as_float(jnp.asarray(images))

  def distance(params):
    x_u = jnp.clip(x + uge.generate(generator, params, images), 0.0, 1.0)
    return float(uge.feature_distance(encoder, x_u, x))

  assert distance(result.info["generator"]) > distance(start)
  assert result.history["fd"][-1] > result.history["fd"][0]


def test_undistillation_loss():
  logits = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
  assert float(uge.undistillation_loss(logits, logits)) == pytest.approx(
      0.0, abs=1e-6)
  assert float(uge.undistillation_loss(logits, -logits)) < 0


def test_penultimate_features(tiny):
  images, _, _, encoder, _ = tiny
  features, logits = encoder(train.as_float(jnp.asarray(images[:5])))
  assert features.shape == (5, 4 * 2 * 2)  # small_cnn_flat(4,4) on 8x8.
  assert logits.shape == (5, CLASSES)


def test_distill_runs(tiny):
  images, labels, _, _, result = tiny
  student = models.make_model("small_cnn_flat", num_classes=CLASSES,
                              widths=(4, 4))
  teacher = result.surrogate
  _, history = uge.distill(jax.random.key(3), teacher.apply_fn,
                           teacher.variables, student, images, labels,
                           test=(images, labels), epochs=1, batch_size=16,
                           progress=False)
  assert len(history["test_accuracy"]) == 1
  assert np.isfinite(history["train_loss"][0])


def test_bad_input(tiny):
  images, labels, _, encoder, _ = tiny
  hybrid = models.make_model("small_cnn", num_classes=CLASSES, widths=(8, 8),
                             conv_impl="hybrid")
  with pytest.raises(ValueError, match="conv_impl='im2col'"):
    uge.ungeneralizable_examples(
        jax.random.key(0), hybrid, images, labels, num_classes=CLASSES,
        encoder=encoder, progress=False, rounds=1, steps=1, batch_size=16,
        generator_widths=(4,))
  authorised = tiny[2]
  with pytest.raises(ValueError, match="unknown UGE option"):
    uge.ungeneralizable_examples(
        jax.random.key(0), authorised, images, labels, num_classes=CLASSES,
        encoder=encoder, progress=False, step=3)
  with pytest.raises(ValueError, match="batch_size"):
    uge.ungeneralizable_examples(
        jax.random.key(0), authorised, images, labels, num_classes=CLASSES,
        encoder=encoder, progress=False, batch_size=N + 1)
  with pytest.raises(ValueError, match="epsilon"):
    uge.UGEConfig(epsilon=2.0).resolved()
