"""Bayes-error unlearnable examples: raise the estimated Bayes error.

Zhang, Sun, Lim and Zhang (arXiv 2511.08191) protect data by *raising the
Bayes error* of the released distribution, rather than by planting an
error-minimizing shortcut; their claim is that such noise keeps working when
the protected images are mixed with clean ones (CIFAR-10, half protected:
clean-only 91.16% test accuracy, mixed with earlier UEs 92.51%, mixed with
Bayes-error UEs 69.68%), where shortcut noise merely adds clean-looking
training data.

**Status: the estimator and the crafting loop follow the authors' public
research code, which is exploratory; the paper's final recipe (feature map,
step rule and count, retraining schedule, the role of the PCA step) could
not be confirmed.** Ported to jaxue:

* `kernel_bayes_error`: the leave-one-out Nadaraya-Watson estimate on
  features scaled to ``max |z| = 1``, with a Gaussian kernel
  ``s_ij = exp(-||z_i - z_j||^2 / (2 sigma^2))``, ``s_ii = 0``:
  ``p_c(i) = sum_j s_ij [y_j = c] / (sum_j s_ij + 1e-8)`` and
  ``BER = mean_i (1 - max_c p_c(i))``, rows in chunks.
* `bayes_error_noise`: projected sign-gradient *ascent* of that estimate
  through a feature map phi, in the L-inf ball and [0, 1]: the penultimate
  features of a small CNN retrained on the current protected set every few
  steps (``features="retrain"``, the authors' loop, which retrains a
  ResNet-18 every step), of one trained on the clean images and frozen
  (``"frozen"``), or the first principal components of the pixels
  (``"pca"``).
* `class_centroid_noise`: the closed-form step of the authors' earlier
  experiments: move each image, in PCA coordinates, towards the nearest
  centroid of *another* class (a Bayes-error-raising move), rescaled to the
  budget. Also usable as the ascent's start (``init="centroid"``).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue import noise as noise_lib
from jaxue import pgd as pgd_lib
from jaxue import train as train_lib
from jaxue.models import Model

FEATURES = ("retrain", "frozen", "pca")
INITS = ("zero", "centroid")


def kernel_bayes_error(features: jax.Array, labels: jax.Array, *,
                       sigma: float = 0.3, chunk: int = 32,
                       num_classes: int | None = None) -> jax.Array:
  """The leave-one-out kernel (Nadaraya-Watson) estimate of the Bayes error
  (Zhang et al., arXiv 2511.08191; the authors' ``bayeslap`` estimator).

  Features are scaled by their largest absolute entry; the posterior of
  sample i is the kernel-weighted label histogram of the *other* samples,
  and the estimate is the mean of ``1 - max_c p_c(i)``. Differentiable
  (the max passes its gradient to the arg-max class, the analytic gradient
  of the authors' code); rows are computed ``chunk`` at a time under
  `jax.checkpoint`, so memory is O(chunk * N) forward and backward.

  Args:
    features: (N, D) float features.
    labels: (N,) int labels.
    sigma: Gaussian kernel width in the scaled feature space.
    chunk: rows per chunk.
    num_classes: label classes (``labels.max() + 1`` when None; give it
      under `jax.jit`).

  Returns:
    The scalar estimate in [0, 1].
  """
  features = jnp.asarray(features)
  labels = jnp.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f"features must be (N, D) with (N,) labels, got "
                     f"{features.shape} and {labels.shape}")
  if float(sigma) <= 0:
    raise ValueError(f"sigma must be > 0, got {sigma}")
  if int(chunk) < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  n = features.shape[0]
  if num_classes is None:
    num_classes = int(jnp.max(labels)) + 1
  z = features.astype(jnp.float32)
  z = z / jnp.maximum(jnp.max(jnp.abs(z)), 1e-12)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  sq = jnp.sum(jnp.square(z), axis=1)
  chunk = min(int(chunk), n)
  rows = -(-n // chunk)
  index = jnp.arange(rows * chunk).reshape(rows, chunk)

  @jax.checkpoint
  def row_error(idx):
    valid = idx < n
    safe = jnp.where(valid, idx, 0)
    zi = z[safe]
    dist = sq[safe][:, None] + sq[None, :] - 2.0 * zi @ z.T
    kernel = jnp.exp(-jnp.maximum(dist, 0.0) / (2.0 * sigma**2))
    kernel = jnp.where(safe[:, None] == jnp.arange(n)[None, :], 0.0, kernel)
    posterior = (kernel @ onehot) / (kernel.sum(1, keepdims=True) + 1e-8)
    return jnp.where(valid, 1.0 - posterior.max(1), 0.0).sum()

  return jax.lax.map(row_error, index).sum() / n


def penultimate_features(apply_fn: Callable[..., Any], variables: Any,
                         images: jax.Array) -> jax.Array:
  """The input of a model's last `flax.linen.Dense` layer, eval mode: the
  penultimate features of jaxue's small CNN and ResNet-18 (after global
  pooling).

  Read with `flax.linen.intercept_methods`, so it works for any linen
  model behind a `jaxue.models.Model` without changing it.
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and (
        context.method_name == "__call__"):
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    apply_fn(variables, train_lib.as_float(images), False)
  if not captured:
    raise ValueError("the model has no flax Dense layer whose input could "
                     "serve as its penultimate features")
  return captured[-1].reshape(images.shape[0], -1)


class PCA(NamedTuple):
  """A principal-component basis of flattened images: ``coords = (x -
  mean) @ components`` (components orthonormal, (D, k))."""

  mean: np.ndarray
  components: np.ndarray


def fit_pca(images: np.ndarray, k: int) -> PCA:
  """The top-``k`` principal components of uint8 (or [0, 1] float) images,
  flattened."""
  x = np.asarray(train_lib.as_float(jnp.asarray(images)), np.float64)
  x = x.reshape(len(x), -1)
  if not 1 <= int(k) <= min(x.shape):
    raise ValueError(f"components must be in [1, {min(x.shape)}], got {k}")
  mean = x.mean(0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  return PCA(mean.astype(np.float32), vt[:int(k)].T.astype(np.float32))


def class_centroid_noise(images: np.ndarray, labels: np.ndarray, *,
                         num_classes: int, epsilon: float = 8 / 255,
                         components: int = 50) -> noise_lib.CraftResult:
  """The closed-form class-centroid step (Zhang et al., arXiv 2511.08191;
  ``shift.py`` of the authors' code; its role in the paper is unknown).

  In the coordinates of the top ``components`` principal components of the
  images, each image moves towards the nearest centroid of a class other
  than its own; the move is mapped back to pixels (the components are
  orthonormal, so their transpose is the pseudo-inverse), scaled down to
  ``||.||_inf <= epsilon`` and clipped so ``x + delta`` stays in [0, 1].

  Args:
    images: uint8 NHWC clean images.
    labels: int labels.
    num_classes: number of classes (at least 2 must be present).
    epsilon: L-inf budget.
    components: PCA dimension k.

  Returns:
    A `jaxue.noise.CraftResult` (sample-wise, no surrogate).
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  epsilon = noise_lib.check_epsilon(epsilon)
  present = np.unique(labels)
  if len(present) < 2:
    raise ValueError("labels must hold at least 2 classes for the "
                     "class-centroid step")
  pca = fit_pca(images, components)
  x = images.astype(np.float32).reshape(len(images), -1) / 255.0
  coords = (x - pca.mean) @ pca.components
  centroids = np.stack([coords[labels == c].mean(0) if c in present
                        else np.full(coords.shape[1], np.inf, np.float32)
                        for c in range(num_classes)])
  dist = np.square(coords[:, None, :] - centroids[None]).sum(-1)
  dist[np.arange(len(labels)), labels] = np.inf
  dist[~np.isfinite(dist)] = np.inf
  target = dist.argmin(1)
  move = (centroids[target] - coords) @ pca.components.T
  peak = np.abs(move).max(1, keepdims=True)
  move = move * np.minimum(1.0, epsilon / np.maximum(peak, 1e-12))
  delta = move.reshape(images.shape).astype(np.float32)
  x = x.reshape(images.shape)
  delta = np.clip(x + delta, 0.0, 1.0) - x
  info = {"method": "bayes-centroid", "mode": "samplewise",
          "epsilon": epsilon, "components": int(components),
          "target_class": target}
  return noise_lib.CraftResult(delta.astype(np.float32), info=info)


class BayesConfig(NamedTuple):
  """Settings of `bayes_error_noise` (the paper's are not all known; the
  defaults are a CPU-sized port of the authors' research code).

  Attributes:
    epsilon: L-inf budget (8/255 in the authors' code).
    steps: sign-ascent steps (the code's latest run: 2,000, each after a
      fresh 30-epoch ResNet-18; earlier 200).
    step_size: ascent step (epsilon / 10 when None).
    sigma: kernel width of the estimate.
    chunk: rows of the estimate per chunk.
    features: the feature map phi, one of `FEATURES`.
    retrain_every: ``"retrain"``: a fresh feature network every this many
      steps (also the checkpoint interval, ``on_block``, for every map).
    feature_epochs: epochs of each feature network (victim recipe: SGD
      0.1, momentum, cosine; the authors': 30, ResNet-18, no augmentation).
    pca_components: k of ``"pca"`` and of the centroid step.
    init: ``"zero"``, or ``"centroid"`` (start from
      `class_centroid_noise`).
    batch_size: images per forward/backward chunk of the feature map (a
      memory knob; the estimate always uses all N).
  """

  epsilon: float = 8 / 255
  steps: int = 100
  step_size: float | None = None
  sigma: float = 0.3
  chunk: int = 32
  features: str = "retrain"
  retrain_every: int = 10
  feature_epochs: int = 3
  pca_components: int = 50
  init: str = "zero"
  batch_size: int = 500

  def resolved(self) -> BayesConfig:
    """The validated settings, ``step_size`` filled in."""
    epsilon = noise_lib.check_epsilon(self.epsilon)
    cfg = self._replace(epsilon=epsilon,
                        step_size=self.step_size or epsilon / 10)
    if not cfg.step_size > 0:
      raise ValueError(f"step_size must be > 0, got {cfg.step_size}")
    if cfg.features not in FEATURES:
      raise ValueError(f"features must be one of {FEATURES}, got "
                       f"{cfg.features!r}")
    if cfg.init not in INITS:
      raise ValueError(f"init must be one of {INITS}, got {cfg.init!r}")
    if not cfg.sigma > 0:
      raise ValueError(f"sigma must be > 0, got {cfg.sigma}")
    for name in ("steps", "chunk", "retrain_every", "feature_epochs",
                 "pca_components", "batch_size"):
      value = getattr(cfg, name)
      if int(value) != value or value < (0 if name == "steps" else 1):
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return cfg


@functools.partial(jax.jit, static_argnames=("phi", "num_classes", "sigma",
                                             "chunk", "batch_size"))
def _ascent_grad(phi_args, x, delta, y, *, phi, num_classes, sigma, chunk,
                 batch_size):
  """The estimate at ``x + delta`` and its gradient with respect to delta.

  Features are computed ``batch_size`` images at a time under
  `jax.checkpoint` (only the inputs are kept for the backward pass).
  """
  n = x.shape[0]
  batches = -(-n // batch_size)
  pad = batches * batch_size - n

  def features(delta):
    xa = jnp.clip(x + delta, 0.0, 1.0)
    xa = jnp.pad(xa, ((0, pad),) + ((0, 0),) * (xa.ndim - 1))
    xa = xa.reshape((batches, batch_size) + x.shape[1:])
    f = jax.lax.map(jax.checkpoint(functools.partial(phi, phi_args)), xa)
    return f.reshape(batches * batch_size, -1)[:n]

  feats, vjp = jax.vjp(features, delta)
  estimate, grad_feats = jax.value_and_grad(
      functools.partial(kernel_bayes_error, sigma=sigma, chunk=chunk,
                        num_classes=num_classes))(feats, y)
  (grad,) = vjp(grad_feats)
  return estimate, grad


@functools.lru_cache(maxsize=16)
def _network_phi(apply_fn):
  # One object per architecture: the jitted ascent step reuses its
  # compilation across calls.
  return functools.partial(_network_features, apply_fn)


def _network_features(apply_fn, variables, images):
  return penultimate_features(apply_fn, variables, images)


def _pca_features(pca, images):
  flat = images.reshape(images.shape[0], -1)
  return (flat - pca[0][None, :]) @ pca[1]


def bayes_error_noise(key: jax.Array, model: Model, images: np.ndarray,
                      labels: np.ndarray, *, num_classes: int,
                      cfg: BayesConfig = BayesConfig(),
                      noise: np.ndarray | None = None, start_step: int = 0,
                      history: dict[str, list] | None = None,
                      on_block: Callable[[int, np.ndarray, dict], None]
                      | None = None,
                      progress: bool | str = True) -> noise_lib.CraftResult:
  """Bayes-error unlearnable examples (Zhang et al., arXiv 2511.08191):
  projected sign-gradient ascent of `kernel_bayes_error` on phi(x + delta).

  The steps run in blocks of ``cfg.retrain_every``. With
  ``features="retrain"`` each block starts with a fresh ``model`` trained
  for ``cfg.feature_epochs`` on the current release (key ``fold_in(key,
  block)``); ``"frozen"`` trains one on the clean images (key
  ``fold_in(key, 0)``, the same as the first retrained one) and keeps it;
  ``"pca"`` uses the clean images' principal components. Each step:
  ``delta <- P(delta + step_size * sign(grad BER))``, P the projection onto
  the L-inf ball and [0, 1] (`jaxue.pgd.project`).

  Args:
    key: randomness (the feature networks' initialisation and shuffling).
    model: the feature network's architecture (its last Dense layer's input
      is phi); unused with ``"pca"``.
    images: uint8 NHWC clean images (the set to protect).
    labels: int labels.
    num_classes: number of classes.
    cfg: the settings.
    noise: resume from this noise (after ``start_step`` steps).
    start_step: steps already taken; a multiple of ``cfg.retrain_every``
      (resume at a block boundary: the block's network is retrained from
      the saved noise with the same key, so a resumed run equals an
      uninterrupted one).
    history: the history to resume.
    on_block: called after every block with ``(steps_done, noise,
      history)``; pipelines checkpoint there.
    progress: show a tqdm bar; a string is used as its description.

  Returns:
    A `jaxue.noise.CraftResult` (sample-wise): ``surrogate`` is the last
    feature network (None with ``"pca"``); ``history`` holds per step the
    ``bayes_error`` estimate before the step and ``seconds``, and per block
    the feature network's ``feature_train_accuracy``; ``info`` the settings
    and the ``final_bayes_error`` estimate.
  """
  cfg = cfg.resolved()
  images = np.asarray(images)
  labels = np.asarray(labels)
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  n = len(labels)
  if cfg.features != "pca" and n < 128:
    raise ValueError(f"the feature network's batch of 128 exceeds the {n} "
                     "images")
  if start_step % cfg.retrain_every or not 0 <= start_step <= cfg.steps:
    raise ValueError(f"start_step must be a multiple of retrain_every "
                     f"({cfg.retrain_every}) in [0, {cfg.steps}], got "
                     f"{start_step}")
  x = jnp.asarray(images, jnp.float32) / 255.0
  y = jnp.asarray(labels, jnp.int32)
  if noise is not None:
    if tuple(np.shape(noise)) != images.shape:
      raise ValueError(f"resume noise has shape {np.shape(noise)}, expected "
                       f"{images.shape}")
    delta = jnp.asarray(noise, jnp.float32)
  elif cfg.init == "centroid":
    delta = jnp.asarray(class_centroid_noise(
        images, labels, num_classes=num_classes, epsilon=cfg.epsilon,
        components=cfg.pca_components).noise)
  else:
    delta = jnp.zeros_like(x)
  history = history or {"bayes_error": [], "seconds": [],
                        "feature_train_accuracy": []}
  kwargs = dict(num_classes=num_classes, sigma=float(cfg.sigma),
                chunk=int(cfg.chunk), batch_size=min(int(cfg.batch_size), n))
  network = None
  if cfg.features == "pca":
    pca = fit_pca(images, cfg.pca_components)
    phi, phi_args = _pca_features, (jnp.asarray(pca.mean),
                                    jnp.asarray(pca.components))
  else:
    phi = _network_phi(model.apply)
  desc = progress if isinstance(progress, str) else "Bayes-error ascent"
  bar = tqdm(total=cfg.steps, initial=start_step, desc=desc,
             disable=not progress, leave=False)
  for block_start in range(start_step, cfg.steps, cfg.retrain_every):
    block = block_start // cfg.retrain_every
    if cfg.features == "retrain" or (cfg.features == "frozen"
                                     and network is None):
      train_on = images if cfg.features == "frozen" else noise_lib.release(
          images, labels, np.asarray(delta), mode="samplewise")
      network, fit_history = train_lib.train_victim(
          jax.random.fold_in(key, 0 if cfg.features == "frozen" else block),
          model, train_on, labels, test=None, epochs=cfg.feature_epochs,
          progress=False)
      history["feature_train_accuracy"].append(
          fit_history["train_accuracy"][-1])
      phi_args = network.variables
    for _ in range(block_start, min(block_start + cfg.retrain_every,
                                    cfg.steps)):
      start = time.perf_counter()
      estimate, grad = _ascent_grad(phi_args, x, delta, y, phi=phi,
                                    **kwargs)
      delta = pgd_lib.project(delta + cfg.step_size * jnp.sign(grad), x,
                              epsilon=cfg.epsilon)
      history["bayes_error"].append(float(estimate))
      history["seconds"].append(time.perf_counter() - start)
      bar.update(1)
      bar.set_postfix(bayes_error=f"{float(estimate):.4f}")
    if on_block is not None:
      on_block(min(block_start + cfg.retrain_every, cfg.steps),
               np.asarray(delta), history)
  bar.close()
  final, _ = _ascent_grad(phi_args, x, delta, y, phi=phi, **kwargs) if (
      cfg.features == "pca" or network is not None) else (np.nan, None)
  info = {"method": "bayes-error", "mode": "samplewise",
          "config": cfg._asdict(), "final_bayes_error": float(final)}
  return noise_lib.CraftResult(np.asarray(delta, np.float32), network,
                               history, True, info)


def release_bayes_error(features: np.ndarray, labels: np.ndarray, *,
                        sigma: float = 0.3, chunk: int = 256) -> float:
  """`kernel_bayes_error` of fixed features as a float (a measurement of a
  release: feed it the penultimate features of a reference network, or
  PCA coordinates)."""
  labels = np.asarray(labels)
  return float(jax.jit(functools.partial(
      kernel_bayes_error, sigma=sigma, chunk=chunk,
      num_classes=int(labels.max()) + 1))(jnp.asarray(features),
                                          jnp.asarray(labels)))
