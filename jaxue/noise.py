"""Protective noise: error-minimizing (EM) noise, random noise, and release.

Error-minimizing noise (Huang et al., "Unlearnable Examples", ICLR 2021,
Sec. 3 and Algorithm 1) solves the bi-level min-min problem

    min_theta sum_i min_{||delta_i||_inf <= eps} CE(f_theta(x_i + delta_i), y_i)

by alternating M surrogate SGD steps (train mode) on ``x + delta`` with a
noise sweep (eval mode, theta frozen) of K PGD *descent* steps, until the
surrogate's accuracy on the noisy data reaches ``1 - stop_error``.

* sample-wise: one perturbation per image; noise index i is image i, always.
* class-wise: one perturbation per class, updated on a stratified subset
  (20% by default) with one PGD step per batch, after which each class's
  noise becomes the eps-clipped mean of that class's stepped copies.

Each round (M train steps, the sweep, the stop check) is one jitted call;
only the loop over rounds runs in Python.

Every crafting method of jaxue returns a `CraftResult` (noise, surrogate or
None, history, converged, info): `error_minimizing_noise` / `craft` here,
`uniform_noise` (the random baseline), `error_maximizing_noise` and
`error_max_from_clean`, `jaxue.pue.provably_unlearnable_noise`,
`jaxue.rem.robust_error_minimizing_noise` and the model-free baselines of
`jaxue.baselines`. Sampling functions take their key first; steps
(``noise_step``, ``surrogate_step``) take the state first so they compose
with `lax.scan`. `release` publishes noise with ``mode="classwise"`` or
``"samplewise"``.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue import parallel
from jaxue import pgd as pgd_lib
from jaxue import train as train_lib
from jaxue.train import TrainState

MODES = ("samplewise", "classwise")


def check_epsilon(epsilon: float, name: str = "epsilon") -> float:
  """Validates an L-inf budget in [0, 1] pixel units."""
  epsilon = float(epsilon)
  if not np.isfinite(epsilon) or epsilon <= 0 or epsilon > 1:
    raise ValueError(
        f"{name} must be in (0, 1] (pixel units, e.g. 8/255 = 0.0314), "
        f"got {epsilon}")
  return epsilon


def _check_mode(mode: str, name: str = "mode") -> None:
  if mode not in MODES:
    raise ValueError(f"{name} must be one of {MODES}, got {mode!r}")


def random_noise(key: jax.Array, shape, *, epsilon: float = 8 / 255
                 ) -> jax.Array:
  """The random-noise baseline's array: i.i.d. U(-eps, eps) per pixel (the
  method-level form is `uniform_noise`)."""
  epsilon = check_epsilon(epsilon)
  return jax.random.uniform(key, tuple(shape), jnp.float32, -epsilon,
                            epsilon)


def noise_for(noise: jax.Array, indices: jax.Array, labels: jax.Array, *,
              mode: str) -> jax.Array:
  """The perturbations of a batch: by label (``mode="classwise"``) or by
  index (``"samplewise"``)."""
  _check_mode(mode)
  return noise[labels] if mode == "classwise" else noise[indices]


def release(images: np.ndarray, labels: np.ndarray, noise: np.ndarray, *,
            epsilon: float | None = None,
            mode: str | None = None) -> np.ndarray:
  """The data owner's release: ``round(clip(x + delta, 0, 1) * 255)``.

  The noise keeps its sign (the reference UE evaluation clamps it to be
  non-negative, dropping half of it; jaxue does not).

  Args:
    images: uint8 NHWC clean images.
    labels: int labels (used to pick class-wise noise).
    noise: float perturbation, (N, H, W, C) sample-wise or
      (num_classes, H, W, C) class-wise, in [-1, 1].
    epsilon: if given, also check ``max |noise| <= epsilon``.
    mode: ``"classwise"``: ``noise[labels[i]]`` protects image i;
      ``"samplewise"``: ``noise[i]`` does. None infers it from
      ``noise.shape[0]``, which is ambiguous when there are exactly as many
      images as classes (then sample-wise is assumed): crafting code passes
      it explicitly (``CraftResult.info["mode"]``).

  Returns:
    The protected uint8 images, same shape as ``images``.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  noise = np.asarray(noise)
  data_lib.check_dataset(images, labels)
  if noise.ndim != 4 or noise.shape[1:] != images.shape[1:]:
    raise ValueError(
        "noise must have shape (N or num_classes, "
        f"{', '.join(map(str, images.shape[1:]))}), got {noise.shape}")
  if not np.issubdtype(noise.dtype, np.floating):
    raise ValueError(f"noise must be a float array, got {noise.dtype}")
  if not np.all(np.isfinite(noise)):
    raise ValueError("noise contains NaN or infinite values")
  bound = np.abs(noise).max(initial=0.0)
  if bound > 1:
    raise ValueError(
        f"noise must be in [-1, 1] pixel units (got max |noise| = {bound:.3f});"
        " was it given in 0-255 units?")
  if epsilon is not None and bound > check_epsilon(epsilon) + 1e-6:
    raise ValueError(
        f"noise exceeds its budget: max |noise| = {bound:.5f} > eps = "
        f"{epsilon:.5f}")
  top = labels.max(initial=0)
  if mode is None:
    if noise.shape[0] != images.shape[0] and top >= noise.shape[0]:
      raise ValueError(
          f"noise has {noise.shape[0]} entries: neither one per image "
          f"({images.shape[0]}) nor one per class (labels go up to {top})")
    mode = "classwise" if noise.shape[0] != images.shape[0] else "samplewise"
  _check_mode(mode)
  if mode == "classwise" and top >= noise.shape[0]:
    raise ValueError(f"mode='classwise' needs one noise entry per class, but "
                     f"the noise has {noise.shape[0]} and the labels go up "
                     f"to {top}")
  if mode == "samplewise" and noise.shape[0] != images.shape[0]:
    raise ValueError(f"mode='samplewise' needs one noise entry per image "
                     f"({images.shape[0]}), got {noise.shape[0]}")
  per_image = noise[labels] if mode == "classwise" else noise
  x = images.astype(np.float32) / 255.0 + per_image.astype(np.float32)
  return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def protect_fraction(key: jax.Array, clean: np.ndarray, protected: np.ndarray,
                     poison_ratio: float) -> tuple[np.ndarray, np.ndarray]:
  """Partial protection: only a random fraction of the release is protected.

  The setting of Huang et al. 2021, Sec. 4.2 (and APBench's poison ratio):
  a data owner controls only part of the training set, the rest stays clean.
  Exactly ``round(poison_ratio * N)`` images, drawn uniformly without
  replacement, come from ``protected``; the others from ``clean``.

  Args:
    key: randomness of the protected subset.
    clean: uint8 NHWC clean images.
    protected: the protected release of the same images (same shape).
    poison_ratio: fraction in [0, 1] to protect.

  Returns:
    ``(images, mask)``: the mixed uint8 images and the boolean mask of the
    protected ones.
  """
  clean = np.asarray(clean)
  protected = np.asarray(protected)
  if clean.shape != protected.shape or clean.dtype != protected.dtype:
    raise ValueError(
        f"clean and protected images must match: {clean.shape} {clean.dtype}"
        f" vs {protected.shape} {protected.dtype}")
  ratio = float(poison_ratio)
  if not 0 <= ratio <= 1:
    raise ValueError(f"poison_ratio must be in [0, 1], got {poison_ratio}")
  n = clean.shape[0]
  chosen = np.asarray(jax.random.permutation(key, n))[: round(ratio * n)]
  mask = np.zeros(n, bool)
  mask[chosen] = True
  mixed = np.where(mask.reshape((n,) + (1,) * (clean.ndim - 1)), protected,
                   clean)
  return mixed, mask


class EMConfig(NamedTuple):
  """Hyperparameters of EM crafting (defaults: Huang et al. 2021, Sec. 4).

  Attributes:
    mode: ``"samplewise"`` or ``"classwise"``.
    epsilon: L-inf budget.
    step_size: PGD step alpha (eps / 10 when None).
    pgd_steps: K, PGD steps per batch (20 sample-wise, 1 class-wise).
    train_steps: M, surrogate SGD steps per round.
    batch_size: batch size of the surrogate steps.
    sweep_batch_size: batch size of the noise sweep and stop check. The
      sweep runs in eval mode, so for sample-wise noise this only changes
      speed; class-wise averages over each batch, so it is part of the
      recipe (128, as the surrogate batch, when None).
    stop_error: stop when accuracy on noisy data >= 1 - stop_error
      (0.01 sample-wise, 0.1 class-wise when None).
    subset_fraction: class-wise only: the stratified fraction of the
      training set used for the sweep and the stop check.
    max_rounds: give up after this many rounds.
  """

  mode: str = "samplewise"
  epsilon: float = 8 / 255
  step_size: float | None = None
  pgd_steps: int | None = None
  train_steps: int = 10
  batch_size: int = 128
  sweep_batch_size: int | None = None
  stop_error: float | None = None
  subset_fraction: float = 0.2
  max_rounds: int = 100

  def resolved(self) -> EMConfig:
    """The config with every None replaced by the mode's default."""
    _check_mode(self.mode)
    epsilon = check_epsilon(self.epsilon)
    classwise = self.mode == "classwise"
    cfg = self._replace(
        epsilon=epsilon,
        step_size=self.step_size or epsilon / 10,
        pgd_steps=self.pgd_steps if self.pgd_steps is not None else (
            1 if classwise else 20),
        sweep_batch_size=self.sweep_batch_size or self.batch_size,
        stop_error=self.stop_error if self.stop_error is not None else (
            0.1 if classwise else 0.01))
    if cfg.step_size <= 0:
      raise ValueError(f"step_size must be > 0, got {cfg.step_size}")
    if not 0 <= cfg.stop_error < 1:
      raise ValueError(f"stop_error must be in [0, 1), got {cfg.stop_error}")
    if not 0 < cfg.subset_fraction <= 1:
      raise ValueError(
          f"subset_fraction must be in (0, 1], got {cfg.subset_fraction}")
    for name in ("pgd_steps", "train_steps", "batch_size", "sweep_batch_size",
                 "max_rounds"):
      if getattr(cfg, name) < (0 if name == "pgd_steps" else 1):
        raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
    return cfg


class _CraftResultFields(NamedTuple):
  noise: np.ndarray
  surrogate: TrainState | None
  history: dict[str, list]
  converged: bool
  info: dict[str, Any]


class CraftResult(_CraftResultFields):
  """Output of every crafting method (EM, PUE, REM, error-max, random, OPS,
  AR, LSP).

  Attributes:
    noise: float32 perturbations in [-1, 1], (N, H, W, C) sample-wise or
      (num_classes, H, W, C) class-wise; ``release(images, labels, noise,
      mode=info["mode"])`` publishes them.
    surrogate: the surrogate's final state (what certification uses); None
      for model-free methods (random, OPS, AR, LSP).
    history: per-round (or per-block) lists, e.g. ``{"accuracy",
      "seconds"}``; empty for one-shot methods.
    converged: whether the stop condition was met (True for one-shot
      methods).
    info: a method-specific summary: always ``"method"`` and ``"mode"``,
      plus e.g. OPS's positions/values/scores, AR's coefficients, window and
      min_response, LSP's patch_size, error-max's clean-surrogate test
      accuracy. Arrays stay arrays (save them with `numpy.savez`).
  """

  __slots__ = ()

  def __new__(cls, noise: np.ndarray, surrogate: TrainState | None = None,
              history: dict[str, list] | None = None,
              converged: bool = True, info: dict[str, Any] | None = None
              ) -> CraftResult:
    # Fresh containers per result (a shared default dict would leak).
    return super().__new__(cls, noise, surrogate,
                           {} if history is None else history, converged,
                           {} if info is None else info)


def uniform_noise(key: jax.Array, images: np.ndarray, labels: np.ndarray, *,
                  num_classes: int, mode: str = "samplewise",
                  epsilon: float = 8 / 255) -> CraftResult:
  """The random-noise baseline as a crafting method (Huang et al., ICLR
  2021, Sec. 4.1): i.i.d. U(-eps, eps) per pixel, no surrogate.

  Args:
    key: randomness.
    images: uint8 NHWC clean training images (only their shape is used).
    labels: int labels (checked against ``num_classes``).
    num_classes: number of classes.
    mode: ``"samplewise"`` (one draw per image) or ``"classwise"`` (one per
      class).
    epsilon: L-inf budget.

  Returns:
    A `CraftResult` with ``surrogate=None``.
  """
  _check_mode(mode)
  images = np.asarray(images)
  data_lib.check_dataset(images, np.asarray(labels), num_classes=num_classes)
  lead = num_classes if mode == "classwise" else images.shape[0]
  noise = np.asarray(random_noise(key, (lead,) + images.shape[1:],
                                  epsilon=epsilon))
  return CraftResult(noise, info={"method": "random", "mode": mode,
                                  "epsilon": float(epsilon)})


# The per-sample loss whose input gradient drives the noise; EM uses the
# frozen surrogate in eval mode. Signature: (state, x, y, key) -> scalar sum.
NoiseLoss = Callable[[TrainState, jax.Array, jax.Array, jax.Array], jax.Array]
SurrogateStep = Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def eval_loss(state: TrainState, x: jax.Array, y: jax.Array,
              key: jax.Array) -> jax.Array:
  """Summed cross-entropy of the frozen surrogate in eval mode (a
  `NoiseLoss`: state first, as the steps it drives)."""
  del key  # Deterministic.
  logits, _ = state.apply_fn(state.variables, x, False)
  return train_lib.cross_entropy(logits, y) * x.shape[0]


def _padded_batches(indices: jax.Array, batch_size: int, fill: int
                    ) -> jax.Array:
  """Splits indices into (num_batches, batch_size), padding with ``fill``."""
  n = indices.shape[0]
  num_batches = -(-n // batch_size)
  padded = jnp.full((num_batches * batch_size,), fill, indices.dtype)
  return padded.at[:n].set(indices).reshape(num_batches, batch_size)


def _sweep_samplewise(state, noise, images, labels, key, *, cfg, noise_step,
                      indices=None):
  """K PGD descent steps on every image's noise (or those of ``indices``),
  in index order."""
  n = images.shape[0]
  indices = jnp.arange(n) if indices is None else indices
  batches = _padded_batches(indices, cfg.sweep_batch_size, n)

  def body(noise, batch_and_index):
    idx, i = batch_and_index
    valid = idx < n
    safe = jnp.where(valid, idx, 0)
    x, y, start = parallel.shard_batch((images[safe], labels[safe],
                                        noise[safe]))
    delta = noise_step(state, x, y, start, jax.random.fold_in(key, i))
    return noise.at[jnp.where(valid, idx, n)].set(delta, mode="drop"), None

  noise, _ = jax.lax.scan(body, noise,
                          (batches, jnp.arange(batches.shape[0])))
  return noise


def _sweep_classwise(state, noise, images, labels, subset, key, *, cfg,
                     noise_step):
  """One pass over the (shuffled) subset; per batch, each class's noise
  becomes the eps-clipped mean of its stepped copies."""
  num_classes = noise.shape[0]
  n = images.shape[0]
  order_key, key = jax.random.split(key)
  order = jax.random.permutation(order_key, subset)
  batches = _padded_batches(order, cfg.sweep_batch_size, n)

  def body(noise, batch_and_index):
    idx, i = batch_and_index
    valid = idx < n
    safe = jnp.where(valid, idx, 0)
    x, y, valid = parallel.shard_batch((images[safe], labels[safe], valid))
    delta = noise_step(state, x, y, noise[y], jax.random.fold_in(key, i))
    segment = jnp.where(valid, y, num_classes)
    total = jax.ops.segment_sum(delta, segment, num_segments=num_classes)
    count = jax.ops.segment_sum(valid.astype(jnp.float32), segment,
                                num_segments=num_classes)
    mean = total / jnp.maximum(count, 1.0)[:, None, None, None]
    updated = jnp.clip(mean, -cfg.epsilon, cfg.epsilon)
    present = (count > 0)[:, None, None, None]
    return jnp.where(present, updated, noise), None

  noise, _ = jax.lax.scan(body, noise,
                          (batches, jnp.arange(batches.shape[0])))
  return noise


def _noisy_accuracy(state, noise, images, labels, indices, *, cfg):
  """Eval-mode accuracy of the surrogate on ``x + delta`` over indices."""
  n = images.shape[0]
  batches = _padded_batches(indices, cfg.sweep_batch_size, n)

  def correct(idx):
    valid = idx < n
    safe = jnp.where(valid, idx, 0)
    y = labels[safe]
    x = jnp.clip(images[safe] + noise_for(noise, safe, y, mode=cfg.mode), 0, 1)
    x, y, valid = parallel.shard_batch((x, y, valid))
    logits, _ = state.apply_fn(state.variables, x, False)
    return jnp.sum((logits.argmax(-1) == y) & valid, dtype=jnp.int32)

  return jax.lax.map(correct, batches).sum() / indices.shape[0]


@functools.partial(
    jax.jit, donate_argnums=(0, 1),
    static_argnames=("cfg", "surrogate_step", "noise_step"))
def _em_round(state, noise, key, images, labels, subset, *, cfg,
              surrogate_step, noise_step):
  """One round: M surrogate steps on x + delta, the sweep, the stop check."""
  classwise = cfg.mode == "classwise"
  n = images.shape[0]
  train_key, sweep_key = jax.random.split(key)

  def train_body(state, i):
    k = jax.random.fold_in(train_key, i)
    idx = jax.random.choice(jax.random.fold_in(k, 0), n, (cfg.batch_size,),
                            replace=False)
    y = labels[idx]
    x = jnp.clip(images[idx] + noise_for(noise, idx, y, mode=cfg.mode), 0, 1)
    return surrogate_step(state, (x, y), jax.random.fold_in(k, 1))

  state, metrics = jax.lax.scan(train_body, state,
                                jnp.arange(cfg.train_steps))
  if classwise:
    noise = _sweep_classwise(state, noise, images, labels, subset, sweep_key,
                             cfg=cfg, noise_step=noise_step)
  else:
    noise = _sweep_samplewise(state, noise, images, labels, sweep_key,
                              cfg=cfg, noise_step=noise_step)
  accuracy = _noisy_accuracy(state, noise, images, labels, subset, cfg=cfg)
  return state, noise, accuracy, jax.tree.map(jnp.mean, metrics)


def pgd_noise_step(state, x, y, delta, key, *, cfg, noise_loss):
  """EM's noise step (Huang et al. 2021, Algorithm 1): K signed PGD descent
  steps on ``noise_loss``.

  A step: state first (then the batch, the current noise and the key) so it
  composes with `lax.scan`, as every ``noise_step`` of `craft` does.
  """
  return pgd_lib.pgd(lambda xa: noise_loss(state, xa, y, key), x,
                     epsilon=cfg.epsilon, step_size=cfg.step_size,
                     steps=cfg.pgd_steps, descent=True, delta=delta)


def craft(key: jax.Array, state: TrainState, images: np.ndarray,
          labels: np.ndarray, cfg: EMConfig, *, num_classes: int,
          surrogate_step: SurrogateStep = train_lib.train_step,
          noise_step: Callable[..., jax.Array] | None = None,
          noise_loss: NoiseLoss = eval_loss,
          robust_surrogate_step: SurrogateStep | None = None,
          robust_noise_step: Callable[..., jax.Array] | None = None,
          robust_after: float = 0.5,
          noise: np.ndarray | None = None, start_round: int = 0,
          history: dict[str, list] | None = None,
          on_round: Callable[[int, TrainState, jax.Array, dict], None]
          | None = None,
          progress: bool | str = True) -> CraftResult:
  """The min-min crafting loop shared by EM and its robust variants.

  Args:
    key: randomness (batches, class-wise sweep order, robust draws).
    state: the surrogate's initial state.
    images: uint8 NHWC clean training images.
    labels: int labels.
    cfg: the crafting hyperparameters.
    num_classes: number of classes (class-wise noise shape).
    surrogate_step: ``step(state, (x, y), key) -> (state, metrics)`` (state
      first so it composes with `lax.scan`).
    noise_step: ``step(state, x, y, delta, key) -> delta``; EM's K-step PGD
      on ``noise_loss`` when None.
    noise_loss: the loss descended by the default noise step.
    robust_surrogate_step: if given (with ``robust_noise_step``), replaces
      both steps once a round's noisy accuracy exceeds ``robust_after``
      (PUE: `jaxue.pue.pue_steps`).
    robust_noise_step: see ``robust_surrogate_step``.
    robust_after: the accuracy that switches the robust steps on.
    noise: resume from this noise (zeros when None).
    start_round: resume from this round number (fold_in keys use it, so a
      resumed run equals an uninterrupted one with the same key).
    history: resume this history.
    on_round: called after every round with ``(round, state, noise,
      metrics)``; experiments use it to checkpoint.
    progress: show a tqdm bar; a string is used as its description.

  Returns:
    A `CraftResult`; ``info`` holds ``method`` ("em", or "pue" with robust
    steps), ``mode``, ``rounds`` and the resolved config.
  """
  cfg = cfg.resolved()
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  classwise = cfg.mode == "classwise"
  n = images.shape[0]
  if n < cfg.batch_size:
    raise ValueError(f"batch_size {cfg.batch_size} exceeds the {n} images")
  noise_shape = ((num_classes,) if classwise else (n,)) + images.shape[1:]
  if noise is None:
    noise = jnp.zeros(noise_shape, jnp.float32)
  else:
    if tuple(noise.shape) != noise_shape:
      raise ValueError(f"resume noise has shape {noise.shape}, expected "
                       f"{noise_shape}")
    noise = jnp.asarray(noise, jnp.float32)
  if noise_step is None:
    noise_step = functools.partial(pgd_noise_step, cfg=cfg,
                                   noise_loss=noise_loss)
  subset_key, key = jax.random.split(key)
  if classwise:
    subset = data_lib.stratified_subset(subset_key, labels,
                                        cfg.subset_fraction,
                                        num_classes=num_classes)
  else:
    subset = np.arange(n)
  x = train_lib.as_float(jnp.asarray(images))
  y = jnp.asarray(labels, jnp.int32)
  subset = jnp.asarray(subset, jnp.int32)
  # Rounds donate their buffers; copy so the caller's state stays usable.
  state = jax.tree.map(jnp.copy, state)
  history = history or {"accuracy": [], "loss": [], "seconds": []}
  target = 1.0 - cfg.stop_error
  converged = bool(history["accuracy"]) and history["accuracy"][-1] >= target
  robust = robust_surrogate_step is not None and any(
      a > robust_after for a in history["accuracy"])
  desc = progress if isinstance(progress, str) else f"EM {cfg.mode}"
  bar = tqdm(range(start_round, cfg.max_rounds), desc=desc,
             disable=not progress or converged, leave=False)
  for round_index in bar:
    if converged:
      break
    start = time.perf_counter()
    state, noise, accuracy, metrics = _em_round(
        state, noise, jax.random.fold_in(key, round_index), x, y, subset,
        cfg=cfg,
        surrogate_step=robust_surrogate_step if robust else surrogate_step,
        noise_step=robust_noise_step if robust else noise_step)
    accuracy = float(accuracy)
    history["accuracy"].append(accuracy)
    history["loss"].append(float(metrics["loss"]))
    history["seconds"].append(time.perf_counter() - start)
    history.setdefault("robust", []).append(robust)
    bar.set_postfix(noisy_acc=f"{accuracy:.3f}", target=f"{target:.2f}",
                    **({"robust": "on"} if robust else {}))
    converged = accuracy >= target
    robust = robust or (robust_surrogate_step is not None
                        and accuracy > robust_after)
    if on_round is not None:
      on_round(round_index, state, noise, {"accuracy": accuracy})
  bar.close()
  info = {"method": "em" if robust_surrogate_step is None else "pue",
          "mode": cfg.mode, "rounds": len(history["accuracy"]),
          "config": cfg._asdict()}
  return CraftResult(np.asarray(noise), state, history, converged, info)


def error_minimizing_noise(key: jax.Array, state: TrainState,
                           images: np.ndarray, labels: np.ndarray, *,
                           num_classes: int, mode: str = "samplewise",
                           epsilon: float = 8 / 255, **kwargs: Any
                           ) -> CraftResult:
  """Error-minimizing noise (Huang et al., ICLR 2021, Sec. 3).

  A convenience wrapper of `craft` with the paper's defaults; ``kwargs``
  are `EMConfig` fields (``step_size``, ``pgd_steps``, ``train_steps``,
  ``stop_error``, ``max_rounds``, ...) or `craft` options (``progress``,
  ``on_round``, resume arguments).
  """
  config_fields = {k: kwargs.pop(k) for k in list(kwargs)
                   if k in EMConfig._fields}
  cfg = EMConfig(mode=mode, epsilon=epsilon, **config_fields)
  return craft(key, state, images, labels, cfg, num_classes=num_classes,
               **kwargs)


# ---------------------------------------------------------------------------
# Error-maximizing noise: adversarial examples of a clean surrogate.
# ---------------------------------------------------------------------------


def _negated_eval_loss(state: TrainState, x: jax.Array, y: jax.Array,
                       key: jax.Array) -> jax.Array:
  """Minus `eval_loss`: descending it ascends the cross-entropy."""
  return -eval_loss(state, x, y, key)


@functools.partial(jax.jit, static_argnames=("cfg", "noise_step"))
def _sweep(state, noise, images, labels, key, *, cfg, noise_step):
  return _sweep_samplewise(state, noise, images, labels, key, cfg=cfg,
                           noise_step=noise_step)


def error_maximizing_noise(key: jax.Array, state: TrainState,
                           images: np.ndarray, labels: np.ndarray, *,
                           num_classes: int, epsilon: float = 8 / 255,
                           step_size: float | None = None, steps: int = 20,
                           targeted: bool = False, batch_size: int = 256,
                           random_start: bool = False) -> CraftResult:
  """Sample-wise error-maximizing noise (the baseline of Huang et al.,
  ICLR 2021, Sec. 4.1, and Fu et al., ICLR 2022, Sec. 5.1).

  PGD against a *fully trained clean* surrogate (train it first, e.g. with
  `jaxue.train.train_victim` on the clean data and, as the reference trains
  the model it attacks, ``augment=jaxue.data.default_augmentation(shape)``:
  on Fashion-MNIST that surrogate's noise is markedly stronger, see
  `experiments.craft`; `error_max_from_clean` does both), frozen in eval
  mode:

  * untargeted: ascend ``CE(f(x + delta), y)``;
  * targeted: descend ``CE(f(x + delta), (y + 1) mod C)`` (the class
    permutation of Fowl et al., "Adversarial Examples Make Strong Poisons",
    NeurIPS 2021).

  Defaults: 20 steps of eps / 10 (PGD-20 as in the UE paper's baseline) from
  zero, all of the images swept in index order in one jitted `lax.scan`.

  Args:
    key: randomness of the uniform start (used only if ``random_start``).
    state: the trained clean surrogate.
    images: uint8 NHWC clean training images.
    labels: int labels.
    num_classes: number of classes (targets wrap modulo it).
    epsilon: L-inf budget.
    step_size: PGD step (eps / 10 when None).
    steps: PGD steps per image.
    targeted: target ``(y + 1) mod num_classes`` instead of ascending.
    batch_size: images attacked at once (a speed knob: eval mode).
    random_start: start from U(-eps, eps) instead of zero.

  Returns:
    A `CraftResult`: float32 noise of shape ``images.shape``,
    ``|noise| <= epsilon``; ``surrogate`` is the attacked ``state``.
  """
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  cfg = EMConfig(mode="samplewise", epsilon=epsilon, step_size=step_size,
                 pgd_steps=steps, sweep_batch_size=batch_size).resolved()
  start_key, sweep_key = jax.random.split(key)
  x = train_lib.as_float(jnp.asarray(images))
  y = jnp.asarray(labels, jnp.int32)
  if targeted:
    y = (y + 1) % num_classes
  noise = (random_noise(start_key, x.shape, epsilon=cfg.epsilon)
           if random_start else jnp.zeros_like(x))
  step = functools.partial(
      pgd_noise_step, cfg=cfg,
      noise_loss=eval_loss if targeted else _negated_eval_loss)
  noise = np.asarray(_sweep(state, noise, x, y, sweep_key, cfg=cfg,
                            noise_step=step))
  info = {"method": "error-max-targeted" if targeted else "error-max",
          "mode": "samplewise", "targeted": targeted, "pgd_steps": steps,
          "step_size": cfg.step_size, "random_start": random_start}
  return CraftResult(noise, state, info=info)


def error_max_from_clean(key: jax.Array, model: Any, images: np.ndarray,
                         labels: np.ndarray, *,
                         test: tuple[np.ndarray, np.ndarray],
                         num_classes: int, epsilon: float = 8 / 255,
                         clean_epochs: int = 10, surrogate_augment: bool = True,
                         steps: int = 20, targeted: bool = False,
                         progress: bool | str = "clean surrogate"
                         ) -> CraftResult:
  """Error-maximizing noise from scratch: trains the clean surrogate, then
  runs `error_maximizing_noise` against it (Huang et al., ICLR 2021, Sec.
  4.1).

  The surrogate is `jaxue.train.train_victim` on the clean images for
  ``clean_epochs``, by default with the dataset's standard augmentation
  (`jaxue.data.default_augmentation`), as the reference trains the model
  its error-max attacks (`main.py`: random crop and flip on CIFAR-10); the
  attack itself runs on unaugmented images. On the Fashion-MNIST subset
  noise from 3 augmented surrogates left victims at 0.53 on average, from 3
  unaugmented ones at 0.65 (README, issue 4).

  Args:
    key: randomness. The surrogate is ``train_victim(key, ...)`` (so a run
      reproduces the surrogate of the former ``init_key``); the attack gets
      ``fold_in(key, 1)``.
    model: a `jaxue.models.Model`.
    images: uint8 NHWC clean training images.
    labels: int labels.
    test: the (images, labels) test set the surrogate is scored on.
    num_classes: number of classes.
    epsilon: L-inf budget.
    clean_epochs: the surrogate's training epochs ("fully trained" is a
      knob: longer training weakened the noise in the README's runs).
    surrogate_augment: train the surrogate with standard augmentation.
    steps: PGD steps per image.
    targeted: target ``(y + 1) mod num_classes``.
    progress: the surrogate's progress-bar label, or a bool.

  Returns:
    A `CraftResult`: float32 noise of ``images.shape``, the trained
    surrogate, and in ``info`` a JSON-ready summary of the settings and
    the surrogate's final test accuracy (``surrogate_test_accuracy``).
  """
  augment = (data_lib.default_augmentation(np.shape(images)[1:])
             if surrogate_augment else None)
  surrogate, history = train_lib.train_victim(
      key, model, images, labels, test=test, epochs=clean_epochs,
      augment=augment, progress=progress)
  result = error_maximizing_noise(
      jax.random.fold_in(key, 1), surrogate, images, labels,
      num_classes=num_classes, epsilon=epsilon, steps=steps,
      targeted=targeted)
  info = {"method": result.info["method"], "mode": "samplewise",
          "targeted": targeted, "clean_epochs": clean_epochs,
          "surrogate_augment": surrogate_augment,
          "surrogate_test_accuracy": history["test_accuracy"][-1],
          "pgd_steps": steps}
  return CraftResult(result.noise, surrogate, history, True, info)
