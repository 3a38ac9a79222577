"""Sparsity-aware local masking (SALM): error-minimizing noise on a few pixels.

Sun, Liu, Yan, Xu and Sun, "Sparsity-Aware Local Masking ..." (arXiv
2403.10573, ICML 2024 workshop) restrict error-minimizing noise (Huang et
al., ICLR 2021) to the *significant* pixels of each image: medical images
are sparse, so searching only a local, salient part of the image is said to
be both more effective and cheaper than perturbing every pixel.

**Status: a reconstruction.** Only the abstract of the paper could be read
and no code is public, so the significance criterion, the mask fraction and
whether the mask is recomputed during crafting are unknown. jaxue
implements the most common reading and exposes the unknowns as settings:
EM's min-min loop (`jaxue.noise.craft`) with the inner PGD step masked to a
per-sample top-k set of ``k = round(rho * H * W)`` pixels (all channels of
a pixel together), chosen by one of `MASKS`:

* ``"grad-topk-per-step"`` (default): the k pixels with the largest input
  gradient ``|dCE/dx|`` (summed over channels) at every PGD step;
* ``"grad-topk-fixed"``: the k pixels with the largest input gradient of a
  *clean-trained* model at the clean image, computed once and frozen;
* ``"intensity"``: the k brightest pixels of the clean image (the
  foreground of a black-background image such as Fashion-MNIST).

With ``rho = 1`` every pixel is in the mask and the step is EM's, bit for
bit. Only sample-wise noise is defined: a class-wise perturbation is the
mean of its images' steps, whose masks differ, so it would not be sparse.

`salm_steps` returns the `jaxue.noise.craft` keyword arguments (as
`jaxue.pue.pue_steps` does for PUE), so SALM resumes and checkpoints as EM
does; `salm_noise` is the one-call form.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxue import data as data_lib
from jaxue import noise as noise_lib
from jaxue import pgd as pgd_lib
from jaxue import train as train_lib
from jaxue.models import Model
from jaxue.train import TrainState

MASKS = ("grad-topk-per-step", "grad-topk-fixed", "intensity")


class SALMConfig(NamedTuple):
  """SALM's masking settings (the EM settings are a `jaxue.noise.EMConfig`).

  None of these is published (the paper's body could not be read): the
  defaults are choices, see the module docstring.

  Attributes:
    rho: fraction of each image's pixels the noise may change, in (0, 1];
      1 is EM.
    mask: the significance rule, one of `MASKS`.
    restrict: also zero the noise outside the current mask after every
      step, so that the final noise has at most k non-zero pixels. Off by
      default: the reconstruction only stops unmasked pixels from *moving*,
      so with ``"grad-topk-per-step"`` the union of the pixels moved over
      all steps can grow beyond k (`noise_sparsity` measures it).
    saliency_epochs: ``"grad-topk-fixed"`` only: epochs of the clean model
      whose gradients pick the pixels, when `salm_noise` trains it.
  """

  rho: float = 0.1
  mask: str = "grad-topk-per-step"
  restrict: bool = False
  saliency_epochs: int = 2

  def check(self) -> SALMConfig:
    """Validates the settings (one-line ValueErrors naming the field)."""
    rho = float(self.rho)
    if not np.isfinite(rho) or not 0 < rho <= 1:
      raise ValueError(f"rho must be in (0, 1], got {self.rho}")
    if self.mask not in MASKS:
      raise ValueError(f"mask must be one of {MASKS}, got {self.mask!r}")
    if int(self.saliency_epochs) != self.saliency_epochs or (
        self.saliency_epochs < 1):
      raise ValueError(
          f"saliency_epochs must be an integer >= 1, got "
          f"{self.saliency_epochs}")
    return self._replace(rho=rho)


def pixel_count(rho: float, image_shape) -> int:
  """k, the pixels per image a fraction ``rho`` of an (H, W, C) image
  allows (at least 1)."""
  height, width = tuple(image_shape)[:2]
  return max(1, min(height * width, round(float(rho) * height * width)))


def topk_mask(scores: jax.Array, k: int) -> jax.Array:
  """The per-sample top-k pixel mask of (B, H, W) scores: a (B, H, W, 1)
  boolean array with exactly k True pixels per sample (ties go to the lower
  flat index, as `jax.lax.top_k` orders them)."""
  batch, height, width = scores.shape
  if k >= height * width:
    return jnp.ones((batch, height, width, 1), bool)
  _, index = jax.lax.top_k(scores.reshape(batch, -1), k)
  rows = jnp.arange(batch)[:, None]
  mask = jnp.zeros((batch, height * width), bool).at[rows, index].set(True)
  return mask.reshape(batch, height, width, 1)


def input_saliency(state: TrainState, x: jax.Array, y: jax.Array
                   ) -> jax.Array:
  """``|dCE(f(x), y)/dx|`` of a frozen model (eval mode), summed over
  channels: (B, H, W)."""
  grad = jax.grad(lambda xa: noise_lib.eval_loss(state, xa, y, None))(x)
  return jnp.abs(grad).sum(-1)


def masked_noise_step(state: TrainState, x: jax.Array, y: jax.Array,
                      delta: jax.Array, key: jax.Array, *,
                      cfg: noise_lib.EMConfig, salm: SALMConfig,
                      saliency: TrainState | None = None,
                      noise_loss: noise_lib.NoiseLoss = noise_lib.eval_loss
                      ) -> jax.Array:
  """SALM's noise step: EM's K signed PGD descent steps
  (`jaxue.noise.pgd_noise_step`) in which only the masked pixels move.

  The operations are those of `jaxue.pgd.pgd` plus a select, so with every
  pixel in the mask (``rho = 1``) the result is EM's bit for bit. State
  first, as every ``noise_step`` of `jaxue.noise.craft`.

  Args:
    state: the frozen surrogate.
    x: clean float batch in [0, 1].
    y: labels.
    delta: the batch's current noise.
    key: randomness of ``noise_loss`` (EM's is deterministic).
    cfg: the resolved EM settings (epsilon, step size, K).
    salm: the masking settings.
    saliency: ``"grad-topk-fixed"`` only: the clean-trained model whose
      input gradients at ``x`` pick the pixels.
    noise_loss: the loss descended (EM's by default).

  Returns:
    The new noise of the batch.
  """
  k = pixel_count(salm.rho, x.shape[1:])
  fixed = None
  if salm.mask == "intensity":
    fixed = topk_mask(x.sum(-1), k)
  elif salm.mask == "grad-topk-fixed" and k < x.shape[1] * x.shape[2]:
    if saliency is None:
      raise ValueError("mask='grad-topk-fixed' needs a saliency model")
    fixed = topk_mask(input_saliency(saliency, x, y), k)
  grad_fn = jax.grad(lambda xa: noise_loss(state, xa, y, key))
  delta = pgd_lib.project(delta, x, epsilon=cfg.epsilon)
  # As in pgd.pgd: descending is adding -1 * alpha * sign(grad).
  sign = -1.0

  def body(_, delta):
    grad = grad_fn(x + delta)
    mask = (topk_mask(jnp.abs(grad).sum(-1), k) if fixed is None
            else fixed)
    stepped = delta + sign * cfg.step_size * jnp.sign(grad)
    stepped = jnp.where(mask, stepped,
                        jnp.zeros_like(delta) if salm.restrict else delta)
    return pgd_lib.project(stepped, x, epsilon=cfg.epsilon)

  return jax.lax.fori_loop(0, cfg.pgd_steps, body, delta)


def salm_steps(cfg: noise_lib.EMConfig, salm: SALMConfig, *,
               saliency: TrainState | None = None) -> dict[str, Any]:
  """The `jaxue.noise.craft` keyword arguments that turn EM crafting into
  SALM's (sample-wise only).

  Args:
    cfg: the EM settings.
    salm: the masking settings.
    saliency: the clean-trained model of ``"grad-topk-fixed"``
      (`train_saliency_model`).
  """
  salm = salm.check()
  cfg = cfg.resolved()
  if cfg.mode != "samplewise":
    raise ValueError(f"SALM noise is sample-wise only (a class's noise would "
                     f"average its images' masks), got mode={cfg.mode!r}")
  if salm.mask == "grad-topk-fixed" and saliency is None and salm.rho < 1:
    raise ValueError("mask='grad-topk-fixed' needs a saliency model "
                     "(train_saliency_model)")
  return {"noise_step": functools.partial(masked_noise_step, cfg=cfg,
                                          salm=salm, saliency=saliency)}


def train_saliency_model(key: jax.Array, model: Model, images: np.ndarray,
                         labels: np.ndarray, *, epochs: int = 2,
                         batch_size: int = 128,
                         progress: bool | str = False) -> TrainState:
  """The clean model whose input gradients fix the ``"grad-topk-fixed"``
  masks: `jaxue.train.train_victim` on the clean images."""
  state, _ = train_lib.train_victim(key, model, images, labels, test=None,
                                    epochs=epochs, batch_size=batch_size,
                                    progress=progress)
  return state


def salm_noise(key: jax.Array, state: TrainState, images: np.ndarray,
               labels: np.ndarray, *, num_classes: int,
               epsilon: float = 8 / 255, salm: SALMConfig = SALMConfig(),
               saliency: TrainState | None = None,
               saliency_model: Model | None = None, **kwargs: Any
               ) -> noise_lib.CraftResult:
  """SALM: sample-wise error-minimizing noise on a per-sample top-k set of
  pixels (Sun et al., arXiv 2403.10573; reconstructed, see the module
  docstring).

  With ``salm.rho = 1`` this is `jaxue.noise.error_minimizing_noise` with
  the same key, bit for bit.

  Args:
    key: randomness; the crafting loop gets it unchanged (as EM's does),
      the saliency model of ``"grad-topk-fixed"`` ``fold_in(key, 1)``.
    state: the surrogate's initial state.
    images: uint8 NHWC clean training images.
    labels: int labels.
    num_classes: number of classes.
    epsilon: L-inf budget of every changed pixel.
    salm: the masking settings.
    saliency: ``"grad-topk-fixed"``: a clean-trained model; when None, one
      of architecture ``saliency_model`` is trained here
      (`train_saliency_model`, ``salm.saliency_epochs`` epochs).
    saliency_model: the architecture of that model.
    **kwargs: `jaxue.noise.EMConfig` fields and `jaxue.noise.craft`
      options (``progress``, ``on_round``, resume arguments).

  Returns:
    A `jaxue.noise.CraftResult`; ``info`` holds ``method="salm"``, the EM
    config, the `SALMConfig` (``info["salm"]``), k (``info["pixels"]``)
    and the measured ``noise_sparsity``.
  """
  salm = salm.check()
  config_fields = {k: kwargs.pop(k) for k in list(kwargs)
                   if k in noise_lib.EMConfig._fields}
  cfg = noise_lib.EMConfig(mode="samplewise", epsilon=epsilon,
                           **config_fields)
  images = np.asarray(images)
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  k = pixel_count(salm.rho, images.shape[1:])
  if (salm.mask == "grad-topk-fixed" and saliency is None
      and k < images.shape[1] * images.shape[2]):
    if saliency_model is None:
      raise ValueError("mask='grad-topk-fixed' needs saliency= (a trained "
                       "model) or saliency_model= (its architecture)")
    saliency = train_saliency_model(jax.random.fold_in(key, 1),
                                    saliency_model, images, labels,
                                    epochs=salm.saliency_epochs,
                                    batch_size=cfg.batch_size)
  result = noise_lib.craft(key, state, images, labels, cfg,
                           num_classes=num_classes,
                           **salm_steps(cfg, salm, saliency=saliency),
                           **kwargs)
  result.info.update(method="salm", salm=salm._asdict(), pixels=k,
                     noise_sparsity=noise_sparsity(result.noise))
  return result


def noise_sparsity(noise: np.ndarray) -> float:
  """The mean fraction of each image's pixels whose noise is non-zero in
  some channel."""
  noise = np.asarray(noise)
  return float((np.abs(noise).max(-1) > 0).mean())


def scale_to_l2(noise: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """``noise`` rescaled per sample to the L2 norms of ``reference`` (the
  equal-energy comparison: EM noise with SALM's L2 energy).

  Args:
    noise: (N, H, W, C) float perturbations.
    reference: perturbations of the same shape whose per-sample L2 norms
      are the targets.

  Returns:
    float32 ``noise * ||reference_i|| / ||noise_i||`` (zero where ``noise``
    is zero).
  """
  noise = np.asarray(noise, np.float64)
  reference = np.asarray(reference, np.float64)
  if noise.shape != reference.shape or noise.ndim < 2:
    raise ValueError(f"noise and reference must have the same (N, ...) "
                     f"shape, got {noise.shape} and {reference.shape}")
  axes = tuple(range(1, noise.ndim))
  norm = np.sqrt(np.square(noise).sum(axes, keepdims=True))
  target = np.sqrt(np.square(reference).sum(axes, keepdims=True))
  scale = np.where(norm > 0, target / np.maximum(norm, 1e-30), 0.0)
  return (noise * scale).astype(np.float32)
