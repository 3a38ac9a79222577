"""What a release's noise is made of: a shortcut, or the classes' features?

Error-minimizing noise works as a *shortcut* (Huang et al., ICLR 2021,
Sec. 5): a pattern that predicts the label so easily that a victim learns it
instead of the images. Noise crafted against an adversarially trained
surrogate (REM; Fu et al., ICLR 2022, Sec. 4) can instead drift towards
the classes' real features, since the input gradients of robust models are
aligned with what humans see (Tsipras et al., ICLR 2019, Sec. 5) -- and
noise that *adds* real features teaches a victim rather than protecting the
data. These measurements tell the two apart on a released dataset:

* `class_direction_cosine`: the cosine between each image's noise and its
  class's direction in pixel space (class mean minus overall mean of the
  clean training set): towards the class's look (> 0) or not.
* `nearest_class_mean_accuracy`: how well the noise *alone* predicts the
  label (nearest class mean of the noise, fitted on half of each class's
  images and scored on the rest): a shortcut is class-consistent.
* `transfer`: the loss and accuracy on clean vs released images of a model
  trained on *other* clean images (it never saw the noise). Shortcut noise
  leaves them unchanged, error-maximizing noise raises the loss (it is
  adversarial), and feature-like noise lowers it.

`describe_release` gathers all of them for one release, and
`train_reference` trains the reference model of `transfer` on the clean
training images that lie in none of the releases. All functions take the
uint8 images as released and the clean originals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxue import data as data_lib
from jaxue import train as train_lib


def _check_pair(clean: np.ndarray, released: np.ndarray,
                labels: np.ndarray) -> None:
  data_lib.check_dataset(np.asarray(clean), np.asarray(labels))
  data_lib.check_dataset(np.asarray(released), np.asarray(labels))
  _check_same_shape(clean, released)


def _check_same_shape(clean: np.ndarray, released: np.ndarray) -> None:
  if clean.shape != released.shape:
    raise ValueError(f"clean and released images differ in shape: "
                     f"{clean.shape} vs {released.shape}")


def effective_noise(clean: np.ndarray, released: np.ndarray) -> np.ndarray:
  """The change the release made, ``(released - clean) / 255``, in [-1, 1].

  This is the noise after clipping to the valid range and rounding to uint8,
  i.e. what a victim sees, not what the crafter computed.
  """
  clean, released = np.asarray(clean), np.asarray(released)
  if clean.dtype != np.uint8 or released.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {clean.dtype} and "
                     f"{released.dtype}")
  _check_same_shape(clean, released)
  return (released.astype(np.float32) - clean.astype(np.float32)) / 255.0


def class_directions(images: np.ndarray, labels: np.ndarray, *,
                     num_classes: int) -> np.ndarray:
  """Each class's mean image minus the overall mean, in [0, 1] units.

  Args:
    images: uint8 NHWC clean images (e.g. the whole training set).
    labels: their integer labels.
    num_classes: C; every class must occur.

  Returns:
    float32 (C, H, W, channels).
  """
  data_lib.check_dataset(np.asarray(images), np.asarray(labels))
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  if labels.min() < 0 or labels.max() >= num_classes or np.any(counts == 0):
    raise ValueError(f"labels must cover every class 0..{num_classes - 1} "
                     f"(counts {counts.tolist()})")
  flat = np.asarray(images).reshape(len(labels), -1)
  # Means accumulate in float64 without a float copy of the whole set.
  overall = flat.mean(axis=0, dtype=np.float64)
  directions = np.stack([flat[labels == k].mean(axis=0, dtype=np.float64)
                         for k in range(num_classes)]) - overall
  return (directions / 255.0).reshape(
      (num_classes,) + images.shape[1:]).astype(np.float32)


def class_direction_cosine(noise: np.ndarray, labels: np.ndarray,
                           directions: np.ndarray) -> np.ndarray:
  """Per image, the cosine between its noise and its class's direction.

  Args:
    noise: (N, H, W, C) noise, e.g. `effective_noise`.
    labels: (N,) labels.
    directions: (num_classes, H, W, C), e.g. `class_directions`.

  Returns:
    float64 (N,) cosines in [-1, 1] (0 for an image left unchanged).
  """
  noise, labels = np.asarray(noise), np.asarray(labels)
  if noise.shape[1:] != directions.shape[1:] or len(noise) != len(labels):
    raise ValueError(f"noise {noise.shape}, labels {labels.shape} and "
                     f"directions {directions.shape} do not match")
  d = noise.reshape(len(labels), -1).astype(np.float64)
  c = np.asarray(directions, np.float64).reshape(len(directions), -1)[labels]
  norms = np.linalg.norm(d, axis=1) * np.linalg.norm(c, axis=1)
  dots = np.sum(d * c, axis=1)
  return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def nearest_class_mean_accuracy(noise: np.ndarray, labels: np.ndarray, *,
                                num_classes: int,
                                fit_fraction: float = 0.5) -> float:
  """How well the noise alone predicts the label.

  Within each class, the noise of the first ``fit_fraction`` of its images
  (in the given order) fits the class mean; every other image's noise is
  assigned to the nearest mean (Euclidean). Class-wise noise scores 1;
  noise independent of the label scores chance (about 1 / num_classes).

  Returns:
    accuracy on the held-out images, in [0, 1].
  """
  noise, labels = np.asarray(noise), np.asarray(labels)
  if not 0 < fit_fraction < 1:
    raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
  if len(noise) != len(labels):
    raise ValueError(f"noise and labels lengths differ: {len(noise)} vs "
                     f"{len(labels)}")
  flat = noise.reshape(len(labels), -1).astype(np.float64)
  fit = np.zeros(len(labels), bool)
  for k in range(num_classes):
    members = np.flatnonzero(labels == k)
    fit[members[:int(round(len(members) * fit_fraction))]] = True
  counts = np.bincount(labels[fit], minlength=num_classes)
  if np.any(counts == 0) or fit.all():
    raise ValueError(f"need a fitted image of every class and at least one "
                     f"held-out image (fitted per class {counts.tolist()}, "
                     f"{int((~fit).sum())} held out)")
  means = np.stack([flat[fit & (labels == k)].mean(axis=0)
                    for k in range(num_classes)])
  held = flat[~fit]
  # ||h - m||^2 up to the ||h||^2 every class shares.
  scores = held @ means.T - 0.5 * np.sum(means ** 2, axis=1)
  return float(np.mean(np.argmax(scores, axis=1) == labels[~fit]))


def _loss_and_correct(apply_fn: Callable[..., Any], variables: Any,
                      images: jax.Array, labels: jax.Array,
                      batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Summed cross-entropy and correct count (eval mode), batched."""

  def one(batch):
    x, y = batch
    logits, _ = apply_fn(variables, train_lib.as_float(x), False)
    valid = y >= 0  # Padding is labelled -1.
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.maximum(y, 0))
    return (jnp.sum(jnp.where(valid, loss, 0.0)),
            jnp.sum((logits.argmax(-1) == y) & valid, dtype=jnp.int32))

  losses, correct = jax.lax.map(
      one, train_lib.padded_batches(images, labels, batch_size))
  return losses.sum(), correct.sum()


_loss_and_correct_jit = jax.jit(_loss_and_correct, static_argnums=(0, 4))


def transfer(apply_fn: Callable[..., Any], variables: Any,
             clean: np.ndarray, released: np.ndarray, labels: np.ndarray, *,
             batch_size: int = 500) -> dict[str, float]:
  """A fixed model's mean cross-entropy and accuracy on clean vs released
  images (eval mode).

  Use a model trained on clean images *other* than these, so that neither
  the noise nor the images themselves were seen in training.

  Args:
    apply_fn: ``apply(variables, images, train) -> (logits, stats)``.
    variables: the model's variables.
    clean: uint8 NHWC clean originals.
    released: uint8 NHWC released images, same shape.
    labels: integer labels.
    batch_size: images per forward pass (a memory knob).

  Returns:
    ``{"loss_clean", "loss_released", "accuracy_clean",
    "accuracy_released"}``.
  """
  _check_pair(clean, released, labels)
  y = jnp.asarray(np.asarray(labels, np.int32))
  out = {}
  for name, images in (("clean", clean), ("released", released)):
    loss, correct = _loss_and_correct_jit(
        apply_fn, variables, jnp.asarray(images), y, int(batch_size))
    out[f"loss_{name}"] = float(loss) / len(labels)
    out[f"accuracy_{name}"] = int(correct) / len(labels)
  return out


def describe_release(clean: np.ndarray, released: np.ndarray,
                     labels: np.ndarray, *, directions: np.ndarray,
                     num_classes: int,
                     reference: tuple[Callable[..., Any], Any] | None = None
                     ) -> dict[str, Any]:
  """Every measurement of this module on one release, as plain numbers.

  Tells a shortcut (EM; Huang et al., ICLR 2021, Sec. 5) from noise that
  adds the classes' features (REM against a robust surrogate; Fu et al.,
  ICLR 2022, Sec. 4) from adversarial noise (error-max), on the noise the
  victim actually sees (`effective_noise`).

  Args:
    clean: uint8 NHWC clean originals of the released images.
    released: uint8 NHWC released images, aligned with ``clean``.
    labels: their integer labels.
    directions: `class_directions` of the clean training set.
    num_classes: C.
    reference: ``(apply_fn, variables)`` of a model trained on clean
      images other than these, for `transfer`; None leaves it out.

  Returns:
    ``{"images", "noise_l2_mean", "noise_linf_max",
    "class_direction_cosine" (the mean over images),
    "noise_nearest_class_mean_accuracy"}``, plus ``"reference_model"``
    (`transfer`'s dict) with ``reference``.
  """
  _check_pair(clean, released, labels)
  labels = np.asarray(labels)
  noise = effective_noise(clean, released)
  flat = noise.reshape(len(labels), -1)
  summary = {
      "images": int(len(labels)),
      "noise_l2_mean": float(np.linalg.norm(flat, axis=1).mean()),
      "noise_linf_max": float(np.abs(flat).max()),
      "class_direction_cosine": float(np.mean(
          class_direction_cosine(noise, labels, directions))),
      "noise_nearest_class_mean_accuracy": nearest_class_mean_accuracy(
          noise, labels, num_classes=num_classes),
  }
  if reference is not None:
    apply_fn, variables = reference
    summary["reference_model"] = transfer(apply_fn, variables, clean,
                                          released, labels)
  return summary


# Fewer clean images than this outside the releases cannot train a
# meaningful reference model.
MIN_REFERENCE_IMAGES = 1000


def train_reference(key: jax.Array, model: Any, images: np.ndarray,
                    labels: np.ndarray, *, exclude: Sequence[np.ndarray],
                    num_classes: int, test: tuple[np.ndarray, np.ndarray],
                    epochs: int = 8, progress: bool | str = False
                    ) -> tuple[Any, dict[str, Any]]:
  """The reference model of `transfer`: trained on the clean training
  images that lie in none of the releases.

  It saw neither the noise nor the released images, so its loss on them
  tells shortcut noise (unchanged) from adversarial noise (higher) and
  feature-adding noise (lower); Fu et al., ICLR 2022, Sec. 4.

  Args:
    key: the training key (`train.train_victim`).
    model: a `jaxue.models.Model`.
    images: uint8 NHWC clean training set (every image).
    labels: its labels.
    exclude: each release's ``train_indices`` (positions in ``images``).
    num_classes: C; every class must remain.
    test: clean ``(images, labels)`` evaluated after every epoch.
    epochs: training epochs.
    progress: a tqdm bar (a string is its description).

  Returns:
    ``(variables, info)``, info ``{"train_images", "test_accuracy"}``.

  Raises:
    ValueError: fewer than `MIN_REFERENCE_IMAGES` images remain, or a
      class has none.
  """
  data_lib.check_dataset(np.asarray(images), np.asarray(labels))
  excluded = [np.asarray(e, np.int64).ravel() for e in exclude]
  keep = np.setdiff1d(np.arange(len(labels)), np.concatenate(
      excluded or [np.zeros((0,), np.int64)]))
  counts = np.bincount(np.asarray(labels)[keep], minlength=num_classes)
  if len(keep) < MIN_REFERENCE_IMAGES or np.any(counts == 0):
    raise ValueError(
        f"only {len(keep)} clean training images (per class "
        f"{counts.tolist()}) lie outside the releases; the reference model "
        f"needs at least {MIN_REFERENCE_IMAGES}, with every class")
  state, history = train_lib.train_victim(
      key, model, images[keep], labels[keep], test=test, epochs=epochs,
      progress=progress)
  return state.variables, {"train_images": int(len(keep)),
                           "test_accuracy": history["test_accuracy"][-1]}
