"""Sharpness-aware learnability (SAL) and the Unlearnable Distance (UD).

Ye, Su and Qian, "How Far Are We from True Unlearnability?" (arXiv
2509.08058). Written from the authors' released code (the paper's body was
not read): SAL follows its per-layer sharpness probe, UD its analysis
script. The paper's printed UD may be a transform of the code's ratio, so
both ``ud`` and ``1 - ud`` are reported.

SAL of one unit (a layer's weight tensor; the paper's "parameter") after a
training epoch, everything in eval mode (batch-norm running statistics):
two copies of the model in which only that unit is trainable take ``steps``
full passes over a set D each, plain SGD (``learning_rate``, no momentum)
on the cross-entropy (``copy_min``) and on its negative (``copy_max``);
after every pass each copy's change ``W - W0`` is projected back into the
Frobenius ball of radius ``rho * ||W0||_F`` and both are scored on D. With
``L0`` the reference loss, ``s_max = max_loss - L0`` and ``s_min = L0 -
min_loss`` over the passes (both start at ``L0``), SAL is whichever of
``s_max``, ``s_min`` is larger in magnitude (``s_min`` on ties); the
accuracy twin takes ``acc0 - acc(max-loss copy)`` and ``acc(min-loss copy)
- acc0`` the same way.

Two deviations, both flags:

* ``L0``: the reference code uses the training loop's epoch-average loss
  (train-mode batch norm, augmented batches, moving weights) while scoring
  the copies in eval mode, which biases SAL; by default jaxue uses a fresh
  eval-mode ``L0`` on D (``reference=(loss, accuracy)`` restores the
  reference behaviour; `sal_during_training` passes the epoch's training
  metrics with ``reference_l0="training"``).
* units: ``units="layer"`` is the paper's; ``"channel"`` (ours) makes every
  output channel of every weight tensor a unit, since a small network has
  too few tensors for the KMeans threshold to mean much (4 for the small
  CNN).

UD: with ``S_0[e, l]`` the SAL of a clean model (same architecture and
recipe) and ``S_m`` that of a model trained on method m's release, the
threshold is ``tau = mean_e midpoint(KMeans_2({S_0[e, l]}_l))``, ``n_m =
#{(e, l): S_m[e, l] > tau} / #epochs`` (the mean number of "learnable"
units) and ``UD_m = n_m / n_0`` (1 for clean data; lower is more
unlearnable by this measure).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue import train as train_lib
from jaxue.models import Model, Variables

UNITS = ("layer", "channel")
REFERENCE_L0 = ("fresh", "training")


class SAL(NamedTuple):
  """Sharpness-aware learnability of every unit at one point of training.

  Attributes:
    loss: (U,) loss-SAL per unit.
    accuracy: (U,) accuracy-SAL per unit.
    names: unit names, ``"<layer path>"`` or ``"<layer path>[c]"``.
    l0: the reference loss used.
    acc0: the reference accuracy used.
  """

  loss: np.ndarray
  accuracy: np.ndarray
  names: tuple[str, ...]
  l0: float
  acc0: float


def weight_paths(params: Any) -> list[tuple[str, ...]]:
  """Paths (tuples of dict keys) of the weight tensors of a params tree:
  every leaf with ndim >= 2 (conv and dense kernels), in tree order; biases
  and batch-norm parameters are not units (as in the reference)."""
  paths = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if leaf.ndim >= 2:
      paths.append(tuple(str(getattr(k, "key", k)) for k in path))
  return paths


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _replace(tree: Any, path: tuple[str, ...], value: Any) -> Any:
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace(tree[path[0]], path[1:], value)
  return out


def _units(params: Any, units: str
           ) -> list[tuple[tuple[str, ...], int | None, str]]:
  """(path, channel or None, name) of every unit."""
  if units not in UNITS:
    raise ValueError(f"units must be one of {UNITS}, got {units!r}")
  out = []
  for path in weight_paths(params):
    name = "/".join(path)
    if units == "layer":
      out.append((path, None, name))
    else:
      out.extend((path, c, f"{name}[{c}]")
                 for c in range(_get(params, path).shape[-1]))
  return out


def loss_and_accuracy(apply_fn: Callable[..., Any], variables: Variables,
                      images: jax.Array, labels: jax.Array, *,
                      batch_size: int = 1000) -> tuple[jax.Array, jax.Array]:
  """Eval-mode mean cross-entropy and accuracy over a whole set (padded
  batches, masked; traceable)."""
  x, y = train_lib.padded_batches(images, labels, batch_size)

  def one(batch):
    xb, yb = batch
    logits, _ = apply_fn(variables, train_lib.as_float(xb), False)
    valid = yb >= 0
    logp = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(logp, jnp.maximum(yb, 0)[:, None], 1)[:, 0]
    return (jnp.sum(jnp.where(valid, -picked, 0.0)),
            jnp.sum((logits.argmax(-1) == yb) & valid, dtype=jnp.float32))

  losses, correct = jax.lax.map(one, (x, y))
  n = images.shape[0]
  return losses.sum() / n, correct.sum() / n


@functools.partial(
    jax.jit, static_argnames=("apply_fn", "path", "batch_size",
                              "eval_batch_size", "augment", "shuffle"))
def _unit_sal(variables, mask, images, labels, key, l0, acc0, rho,
              learning_rate, steps, *, apply_fn, path, batch_size,
              eval_batch_size, augment, shuffle):
  """The min/max probes of one unit: ``(s_loss, s_acc)``."""
  params, stats = variables["params"], variables["batch_stats"]
  w0 = _get(params, path)
  radius = rho * jnp.sqrt(jnp.sum(jnp.square(w0 * mask)))
  n = images.shape[0]

  def with_leaf(w):
    return {"params": _replace(params, path, w), "batch_stats": stats}

  def batch_loss(w, x, y):
    logits, _ = apply_fn(with_leaf(w), x, False)
    return train_lib.cross_entropy(logits, y)

  def one_pass(w, sign, pass_key):
    perm_key, aug_key = jax.random.split(pass_key)
    if shuffle:
      batches = train_lib.epoch_indices(perm_key, n, batch_size)
    else:
      batches = jnp.arange(n // batch_size * batch_size).reshape(
          -1, batch_size)

    def body(w, i_idx):
      i, idx = i_idx
      x = train_lib.as_float(images[idx])
      if augment is not None:
        x = augment(jax.random.fold_in(aug_key, i), x)
      g = jax.grad(batch_loss)(w, x, labels[idx])
      # Only the unit moves: the mask zeroes every other coordinate.
      return w - sign * learning_rate * mask * g, None

    w, _ = jax.lax.scan(body, w, (jnp.arange(batches.shape[0]), batches))
    d = (w - w0) * mask
    norm = jnp.sqrt(jnp.sum(jnp.square(d)))
    scale = jnp.where(norm > radius, radius / jnp.where(norm > 0, norm, 1.0),
                      1.0)
    return w0 + d * scale

  def score(w):
    return loss_and_accuracy(apply_fn, with_leaf(w), images, labels,
                             batch_size=eval_batch_size)

  def iteration(i, carry):
    w_min, w_max, lo, acc_lo, hi, acc_hi = carry
    pass_key = jax.random.fold_in(key, i)
    w_min = one_pass(w_min, 1.0, pass_key)
    w_max = one_pass(w_max, -1.0, pass_key)
    loss_min, a_min = score(w_min)
    loss_max, a_max = score(w_max)
    # Strict comparisons: the accuracy follows the extreme loss's pass.
    acc_lo = jnp.where(loss_min < lo, a_min, acc_lo)
    lo = jnp.minimum(lo, loss_min)
    acc_hi = jnp.where(loss_max > hi, a_max, acc_hi)
    hi = jnp.maximum(hi, loss_max)
    return w_min, w_max, lo, acc_lo, hi, acc_hi

  # A traced trip count: one compilation serves every ``steps``.
  carry = (w0, w0, l0, acc0, l0, acc0)
  _, _, lo, acc_lo, hi, acc_hi = jax.lax.fori_loop(0, steps, iteration,
                                                   carry)
  s_max, s_min = hi - l0, l0 - lo
  s_loss = jnp.where(jnp.abs(s_max) > jnp.abs(s_min), s_max, s_min)
  a_max, a_min = acc0 - acc_hi, acc_lo - acc0
  s_acc = jnp.where(jnp.abs(a_max) > jnp.abs(a_min), a_max, a_min)
  return s_loss, s_acc


def sharpness_aware_learnability(
    key: jax.Array, apply_fn: Callable[..., Any], variables: Variables,
    images: np.ndarray, labels: np.ndarray, *, units: str = "layer",
    steps: int = 10, rho: float = 0.05, learning_rate: float = 0.1,
    batch_size: int = 256, augment: train_lib.Augment | None = None,
    shuffle: bool = True, reference: tuple[float, float] | None = None,
    channels: Sequence[int] | None = None, eval_batch_size: int = 1000
) -> SAL:
  """SAL of every unit of a model (Ye, Su & Qian, arXiv 2509.08058; the
  per-layer probe of their released code; see the module docstring).

  Args:
    key: randomness (batch order, augmentation); the two copies of a unit
      see the same batches.
    apply_fn: the model's ``apply(variables, images, train)``.
    variables: ``{"params", "batch_stats"}``.
    images: uint8 NHWC images of D (the training set or a subset).
    labels: their int labels.
    units: ``"layer"`` (each weight tensor, the paper's unit) or
      ``"channel"`` (each output channel of each weight tensor; ours).
    steps: I, the passes of each copy (10 in the reference).
    rho: the projection radius relative to ``||W0||_F`` (0.05).
    learning_rate: plain-SGD step of the copies (0.1).
    batch_size: batch size of the passes (256; the tail is dropped).
    augment: optional ``augment(key, images)`` applied in the passes (the
      reference trains the copies on its augmented training loader);
      scoring is always on the plain images.
    shuffle: shuffle every pass (the reference's training loader); False
      takes the batches in order.
    reference: ``(L0, acc0)``; None computes them fresh in eval mode on D
      (the default; the reference code uses the training loop's averages).
    channels: with ``units="channel"``, only these output channels of each
      tensor (those that exist in it), to bound the cost.
    eval_batch_size: batch size of the scoring passes (speed only).

  Returns:
    A `SAL` with one entry per unit.
  """
  if units not in UNITS:
    raise ValueError(f"units must be one of {UNITS}, got {units!r}")
  images = np.asarray(images)
  labels = np.asarray(labels)
  data_lib.check_dataset(images, labels)
  if int(steps) < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if not rho > 0:
    raise ValueError(f"rho must be > 0, got {rho}")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  if not 1 <= batch_size <= len(images):
    raise ValueError(f"batch_size must be in [1, {len(images)}] (the size "
                     f"of D), got {batch_size}")
  if channels is not None and units != "channel":
    raise ValueError("channels applies to units='channel' only")
  unit_list = _units(variables["params"], units)
  if channels is not None:
    keep = {int(c) for c in channels}
    unit_list = [u for u in unit_list if u[1] in keep]
  x = jnp.asarray(images)
  y = jnp.asarray(labels, jnp.int32)
  if reference is None:
    l0, acc0 = loss_and_accuracy(apply_fn, variables, x, y,
                                 batch_size=eval_batch_size)
  else:
    l0, acc0 = reference
  l0, acc0 = jnp.float32(l0), jnp.float32(acc0)
  s_loss, s_acc = [], []
  for path, channel, _ in unit_list:
    w0 = _get(variables["params"], path)
    mask = (jnp.ones_like(w0) if channel is None else
            jnp.zeros_like(w0).at[..., channel].set(1.0))
    a, b = _unit_sal(variables, mask, x, y, key, l0, acc0, jnp.float32(rho),
                     jnp.float32(learning_rate), jnp.int32(steps),
                     apply_fn=apply_fn, path=path, batch_size=int(batch_size),
                     eval_batch_size=int(eval_batch_size), augment=augment,
                     shuffle=bool(shuffle))
    s_loss.append(a)
    s_acc.append(b)
  return SAL(np.asarray(jnp.stack(s_loss), np.float64),
             np.asarray(jnp.stack(s_acc), np.float64),
             tuple(u[2] for u in unit_list), float(l0), float(acc0))


def sal_during_training(
    key: jax.Array, model: Model, images: np.ndarray, labels: np.ndarray, *,
    epochs: int, sal_data: tuple[np.ndarray, np.ndarray] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    units: str = "layer", channels: Sequence[int] | None = None,
    steps: int = 10, rho: float = 0.05, sal_learning_rate: float = 0.1,
    batch_size: int = 256, learning_rate: float = 0.1,
    augment: train_lib.Augment | None = None, reference_l0: str = "fresh",
    progress: bool | str = True) -> tuple[train_lib.TrainState, dict]:
  """Trains a fresh model and measures SAL of every unit after every epoch
  (the reference's protocol: SGD 0.1, momentum 0.9, weight decay 5e-4,
  constant learning rate, batch 256, the tail dropped).

  Args:
    key: randomness (initialisation, shuffling, SAL passes).
    model: the architecture.
    images: uint8 training images (a release, or clean data for run 0).
    labels: their labels.
    epochs: training epochs.
    sal_data: D for SAL; the training set when None (the reference's
      default). A fixed subset bounds the cost.
    test: optional clean test set, scored after every epoch.
    units, channels, steps, rho: see `sharpness_aware_learnability`.
    sal_learning_rate: the copies' SGD step.
    batch_size: training and SAL batch size.
    learning_rate: the training SGD learning rate (constant).
    augment: training augmentation, also used in the SAL passes.
    reference_l0: ``"fresh"`` (eval-mode L0 on D, default) or
      ``"training"`` (the epoch's average training loss and accuracy, as the
      reference code; see the module docstring).
    progress: show a tqdm bar over epochs.

  Returns:
    The final state and a history with per-epoch ``train_loss``,
    ``train_accuracy``, ``test_accuracy`` (if ``test``), ``sal_loss`` and
    ``sal_accuracy`` ((epochs, units) lists), ``seconds``, and the unit
    ``names``.
  """
  if reference_l0 not in REFERENCE_L0:
    raise ValueError(f"reference_l0 must be one of {REFERENCE_L0}, got "
                     f"{reference_l0!r}")
  if int(epochs) < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  images = np.asarray(images)
  labels = np.asarray(labels)
  data_lib.check_dataset(images, labels, num_classes=model.num_classes)
  if len(images) < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} "
                     "training images")
  sal_images, sal_labels = sal_data if sal_data is not None else (images,
                                                                  labels)
  init_key, train_key, sal_key = jax.random.split(key, 3)
  state = train_lib.create_train_state(
      init_key, model, images.shape[1:],
      train_lib.make_optimizer(learning_rate, clip_norm=None))
  x = jnp.asarray(images)
  y = jnp.asarray(labels, jnp.int32)
  history = {"train_loss": [], "train_accuracy": [], "test_accuracy": [],
             "sal_loss": [], "sal_accuracy": [], "seconds": [], "names": []}
  desc = progress if isinstance(progress, str) else "SAL"
  bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
  for epoch in bar:
    start = time.perf_counter()
    state, metrics = train_lib.train_epoch(
        state, x, y, jax.random.fold_in(train_key, epoch),
        batch_size=batch_size, augment=augment)
    loss, accuracy = float(metrics["loss"]), float(metrics["accuracy"])
    history["train_loss"].append(loss)
    history["train_accuracy"].append(accuracy)
    if test is not None:
      history["test_accuracy"].append(
          train_lib.evaluate(state.apply_fn, state.variables, *test))
    sal = sharpness_aware_learnability(
        jax.random.fold_in(sal_key, epoch), state.apply_fn, state.variables,
        sal_images, sal_labels, units=units, channels=channels, steps=steps,
        rho=rho, learning_rate=sal_learning_rate,
        batch_size=min(batch_size, len(sal_images)), augment=augment,
        reference=(loss, accuracy) if reference_l0 == "training" else None)
    history["sal_loss"].append(sal.loss.tolist())
    history["sal_accuracy"].append(sal.accuracy.tolist())
    history["names"] = list(sal.names)
    history["seconds"].append(time.perf_counter() - start)
    bar.set_postfix(loss=f"{loss:.3f}",
                    sal_max=f"{float(sal.loss.max()):.3f}")
  bar.close()
  return state, history


def kmeans_1d(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
  """The two centres (low, high) of the optimal 1-D 2-means clustering.

  In one dimension the optimal clusters are a split of the sorted values,
  so every split is tried and the one with the least within-cluster sum of
  squares is kept (the global optimum that Lloyd's algorithm, as in the
  reference's scikit-learn KMeans, reaches from a good start). Equal
  values give two equal centres.
  """
  v = np.sort(np.asarray(values, np.float64).ravel())
  if v.size < 2:
    raise ValueError(f"values must hold at least 2 numbers, got {v.size}")
  if not np.all(np.isfinite(v)):
    raise ValueError("values contains NaN or infinite entries")
  best, centres = np.inf, (float(v[0]), float(v[-1]))
  for k in range(1, v.size):
    lo, hi = v[:k], v[k:]
    cost = np.sum((lo - lo.mean()) ** 2) + np.sum((hi - hi.mean()) ** 2)
    if cost < best - 1e-15:
      best, centres = cost, (float(lo.mean()), float(hi.mean()))
  return centres


def _check_matrix(name: str, s: Any) -> np.ndarray:
  s = np.asarray(s, np.float64)
  if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 2:
    raise ValueError(f"{name} must be an (epochs, units) matrix with >= 2 "
                     f"units, got shape {s.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name} contains NaN or infinite entries")
  return s


def learnable_threshold(clean_sal: Any) -> float:
  """tau: the mean over epochs of the midpoint between the two 1-D KMeans
  centres of the clean model's per-unit SAL at that epoch."""
  s = _check_matrix("clean_sal", clean_sal)
  return float(np.mean([sum(kmeans_1d(row)) / 2 for row in s]))


def learnable_count(sal: Any, threshold: float) -> float:
  """n: the mean over epochs of the number of units whose SAL exceeds the
  threshold."""
  s = _check_matrix("sal", sal)
  return float(np.sum(s > threshold) / s.shape[0])


def unlearnable_distance(sal: Any, clean_sal: Any) -> dict[str, float]:
  """UD of a model's SAL matrix against the clean model's.

  Args:
    sal: (epochs, units) loss-SAL of the model trained on the release.
    clean_sal: (epochs', units) loss-SAL of the clean model (same units).

  Returns:
    ``{"threshold", "n", "n_clean", "ud", "one_minus_ud"}`` with ``ud =
    n / n_clean``.
  """
  s = _check_matrix("sal", sal)
  s0 = _check_matrix("clean_sal", clean_sal)
  if s.shape[1] != s0.shape[1]:
    raise ValueError(f"sal has {s.shape[1]} units but clean_sal has "
                     f"{s0.shape[1]}: the runs must use the same units")
  tau = learnable_threshold(s0)
  n, n0 = learnable_count(s, tau), learnable_count(s0, tau)
  if n0 == 0:
    raise ValueError("clean_sal has no unit above its own threshold: UD is "
                     "undefined")
  return {"threshold": tau, "n": n, "n_clean": n0, "ud": n / n0,
          "one_minus_ud": 1 - n / n0}
