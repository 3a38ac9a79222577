"""Orthogonal projection: a defence against class-wise unlearnable noise.

Sandoval-Segura, Singla, Geiping, Goldblum and Goldstein, "What Can We Learn
from Unlearnable Datasets?" (NeurIPS 2023, arXiv 2305.19254), Algorithm 1.
Class-wise perturbations (class-wise EM, OPS, LSP, ...) are shortcuts a
*linear* model finds: fit a bias-free linear classifier ``W`` (K x D) on the
released images themselves, orthonormalise its K class directions, and
remove them from every training image,

    X_r = X - (X Q) Q^T,    Q = qr([w_1/|w_1|, ..., w_K/|w_K|]),

then train the victim on ``X_r`` (float, not re-quantised, not clipped; the
test set is not projected). Sample-wise or non-linearly-separable noise
(sample-wise EM, REM, AR) is not expected to lose much to it; the paper
shows that linear separability is not necessary for unlearnability.

Status of this port: the recipe (flattened [0, 1] images, no normalisation,
CE, SGD lr 0.1 without momentum or weight decay, batch 1024, 20 epochs, lr
x0.1 at epochs 10 and 15, QR of the normalised rows) follows the authors'
code; PyTorch's ``nn.Linear`` initialisation is mirrored. One change [ours]:
on sets smaller than CIFAR-10's 50,000 images, the default number of epochs
grows so that the classifier still takes the recipe's 980 SGD steps (20
epochs of 49 batches), with the step divided by 10 at half and at three
quarters of the epochs; 20 epochs of one batch would leave it unfitted.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The recipe's SGD steps: 20 epochs of CIFAR-10's 50,000 images in batches
# of 1024.
RECIPE_STEPS = 20 * math.ceil(50_000 / 1024)


class Projection(NamedTuple):
  """The result of `orthogonal_projection`.

  Attributes:
    images: float32 projected images, the input's shape (in [0, 1] units,
      possibly outside [0, 1]).
    directions: Q, (D, K) orthonormal columns spanning the learned class
      directions (D = H * W * C).
    weights: the linear classifier's W, (K, D); its rows reshaped to images
      show what it found (they resemble class-wise noise when it is one).
    accuracy: the linear classifier's accuracy on the images it was fitted
      on (near 1: a linearly separable shortcut).
  """

  images: np.ndarray
  directions: np.ndarray
  weights: np.ndarray
  accuracy: float


def _as_unit(images: np.ndarray | jax.Array) -> jax.Array:
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs",
                                             "batch_size", "milestones"))
def _fit(key, x, y, *, num_classes, epochs, batch_size, learning_rate,
         milestones):
  n, d = x.shape
  init_key, shuffle_key = jax.random.split(key)
  # PyTorch's nn.Linear default: U(-1/sqrt(D), 1/sqrt(D)).
  bound = 1.0 / jnp.sqrt(d)
  w = jax.random.uniform(init_key, (num_classes, d), minval=-bound,
                         maxval=bound)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n

  def loss(w, xb, yb, mask):
    losses = optax.softmax_cross_entropy_with_integer_labels(xb @ w.T, yb)
    return jnp.sum(losses * mask) / jnp.sum(mask)

  def epoch(w, e):
    lr = learning_rate * 0.1 ** jnp.sum(e >= jnp.asarray(milestones))
    perm = jax.random.permutation(jax.random.fold_in(shuffle_key, e), n)
    # The last batch is the short remainder (PyTorch's drop_last=False):
    # padded here and masked out of the mean.
    perm = jnp.pad(perm, (0, pad)).reshape(num_batches, batch_size)
    mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)
    mask = mask.reshape(num_batches, batch_size)

    def step(w, batch):
      idx, m = batch
      return w - lr * jax.grad(loss)(w, x[idx], y[idx], m), None

    w, _ = jax.lax.scan(step, w, (perm, mask))
    return w, None

  w, _ = jax.lax.scan(epoch, w, jnp.arange(epochs))
  accuracy = jnp.mean((x @ w.T).argmax(-1) == y)
  return w, accuracy


def fit_linear(key: jax.Array, images: np.ndarray | jax.Array,
               labels: np.ndarray | jax.Array, *, num_classes: int,
               epochs: int | None = None, batch_size: int = 1024,
               learning_rate: float = 0.1,
               milestones: Sequence[int] | None = None
               ) -> tuple[jax.Array, float]:
  """A bias-free linear classifier on flattened images (Algorithm 1, step 1).

  Args:
    key: randomness of the initialisation and the shuffling.
    images: NHWC images, uint8 or float in [0, 1] units.
    labels: int labels in [0, num_classes).
    num_classes: K.
    epochs: SGD epochs (default 20, the paper's, or as many as the
      recipe's `RECIPE_STEPS` steps take on a smaller set).
    batch_size: SGD batch (1024).
    learning_rate: SGD step (0.1, no momentum, no weight decay).
    milestones: epochs from which the step is divided by 10 (default half
      and three quarters of the epochs: 10 and 15 of 20).

  Returns:
    ``(W, accuracy)``: W (K, D) and its accuracy on ``images``.
  """
  x = _as_unit(images)
  if x.ndim != 4:
    raise ValueError(f"images must be NHWC (4-D), got shape {x.shape}")
  y = jnp.asarray(labels, jnp.int32)
  if y.shape != (x.shape[0],):
    raise ValueError(f"labels must be ({x.shape[0]},), got {y.shape}")
  if int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got "
                     f"{num_classes}")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got "
                     f"{batch_size}")
  batch_size = int(min(batch_size, x.shape[0]))
  if epochs is None:
    per_epoch = math.ceil(x.shape[0] / batch_size)
    epochs = max(20, math.ceil(RECIPE_STEPS / per_epoch))
  if int(epochs) != epochs or epochs < 1:
    raise ValueError(f"epochs must be an integer >= 1, got {epochs}")
  if milestones is None:
    milestones = (epochs // 2, 3 * epochs // 4)
  w, accuracy = _fit(key, x.reshape(x.shape[0], -1), y,
                     num_classes=int(num_classes), epochs=int(epochs),
                     batch_size=batch_size,
                     learning_rate=float(learning_rate),
                     milestones=tuple(int(m) for m in milestones))
  return w, float(accuracy)


def class_directions(weights: jax.Array | np.ndarray) -> jax.Array:
  """Q (D, K): orthonormal columns spanning W's normalised rows (Algorithm
  1, step 2: QR of the D x K matrix of unit class directions)."""
  w = jnp.asarray(weights, jnp.float32)
  if w.ndim != 2:
    raise ValueError(f"weights must be (K, D), got shape {w.shape}")
  rows = w / jnp.linalg.norm(w, axis=1, keepdims=True)
  q, _ = jnp.linalg.qr(rows.T)
  return q


def project(images: np.ndarray | jax.Array,
            directions: jax.Array | np.ndarray) -> jax.Array:
  """``X - (X Q) Q^T`` on flattened images (Algorithm 1, step 3), in
  [0, 1] units, reshaped back; float32, neither clipped nor quantised."""
  x = _as_unit(images)
  q = jnp.asarray(directions, jnp.float32)
  flat = x.reshape(x.shape[0], -1)
  if q.ndim != 2 or q.shape[0] != flat.shape[1]:
    raise ValueError(f"directions must be (D, K) with D = {flat.shape[1]}, "
                     f"got shape {q.shape}")
  return (flat - (flat @ q) @ q.T).reshape(x.shape)


def orthogonal_projection(key: jax.Array, images: np.ndarray | jax.Array,
                          labels: np.ndarray | jax.Array, *,
                          num_classes: int | None = None,
                          epochs: int | None = None, batch_size: int = 1024,
                          learning_rate: float = 0.1,
                          milestones: Sequence[int] | None = None
                          ) -> Projection:
  """The orthogonal-projection defence (Sandoval-Segura et al. 2023,
  Algorithm 1) on a released training set.

  Args:
    key: randomness of the linear classifier's fit.
    images: the released NHWC images (uint8, or float in [0, 1] units).
    labels: their int labels.
    num_classes: K (default: ``max(labels) + 1``).
    epochs, batch_size, learning_rate, milestones: `fit_linear`'s.

  Returns:
    The `Projection`: the float images to train the victim on, Q, W and
    W's accuracy on the release.
  """
  labels = np.asarray(labels)
  if num_classes is None:
    num_classes = int(labels.max(initial=0)) + 1
  w, accuracy = fit_linear(key, images, labels, num_classes=num_classes,
                           epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate,
                           milestones=milestones)
  q = class_directions(w)
  return Projection(np.asarray(project(images, q)), np.asarray(q),
                    np.asarray(w), accuracy)
