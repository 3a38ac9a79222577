"""Provably unlearnable examples (Wang et al., NDSS 2025, Sec. 5).

PUE is error-minimizing noise (`jaxue.noise`) in which both players face
randomly perturbed weights theta + sigma_j xi, at noise levels
sigma_j = j * sigma_step for j = 0 .. floor(sigma / sigma_step), so that the
noise stays effective for every classifier near the surrogate; this lowers
the certified (q, eta)-learnability (`jaxue.certify`) of the released data.

* `robust_surrogate_step`: per level, one optimizer step on the gradient
  averaged over ``surrogate_draws`` weight draws (train mode).
* `robust_noise_step`: per PGD step and level, one signed descent step on
  the input gradients summed over ``noise_draws`` weight draws (eval mode).
* `provably_unlearnable_noise`: `jaxue.noise.craft` with these steps once
  the surrogate's accuracy on the noisy data exceeds ``robust_after``.

Weight draws are the certifier's (`jaxue.certify.perturb_params`), vmapped,
never a Python loop.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxue import certify
from jaxue import noise as noise_lib
from jaxue import parallel
from jaxue import pgd as pgd_lib
from jaxue import train as train_lib
from jaxue.train import TrainState


class PUEConfig(NamedTuple):
  """Robust-step hyperparameters of PUE crafting (Wang et al., NDSS 2025,
  Sec. 5, "Crafting PUEs"; defaults from the reference code).

  Attributes:
    sigma: sigma_train, the largest weight-noise level; match the sigma you
      will certify at.
    sigma_step: Delta between levels: levels are j * Delta, j = 0..T-1,
      T = floor(sigma / Delta) + 1.
    surrogate_draws: weight draws averaged per level in a surrogate step.
    noise_draws: u_p, weight draws summed per level in a noise step.
    robust_after: switch the robust steps on once the surrogate's accuracy
      on the noisy data exceeds this.
    draw_chunk: draws evaluated at once (`lax.map` batch size); None for
      `default_draw_chunk` (1 on CPU, up to 16 on GPU/TPU).
    reference_loss_scale: scale each level's gradient by 1/T, as the
      reference code does by accident (its ``train_batch_robust`` divides
      every pass's loss by T * draws but steps once per level, so each
      level's step is 1/T of the mean gradient: an effective learning rate
      of lr / T, weight decay unscaled). Off by default: the paper's step
      is the mean gradient (docs/design.md, "PUE"). The reference also clips
      the running sum after every draw; at 1/(T * draws) per pass that
      sum rarely reaches the clip norm, and it is not reproduced.
  """

  sigma: float = 0.25
  sigma_step: float = 0.05
  surrogate_draws: int = 100
  noise_draws: int = 10
  robust_after: float = 0.5
  draw_chunk: int | None = None
  reference_loss_scale: bool = False

  def levels(self) -> tuple[float, ...]:
    if self.sigma <= 0 or self.sigma_step <= 0:
      raise ValueError(f"sigma and sigma_step must be > 0, got {self.sigma} "
                       f"and {self.sigma_step}")
    count = int(np.floor(self.sigma / self.sigma_step + 1e-9)) + 1
    return tuple(j * self.sigma_step for j in range(count))

  def check(self) -> PUEConfig:
    self.levels()
    for name in ("surrogate_draws", "noise_draws"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.draw_chunk is not None and self.draw_chunk < 1:
      raise ValueError(f"draw_chunk must be >= 1, got {self.draw_chunk}")
    return self


def default_draw_chunk(draws: int, backend: str | None = None) -> int:
  """Weight draws vmapped at once when `PUEConfig.draw_chunk` is None: the
  certifier's chunk (`certify.default_chunk_size`: 1 on CPU, 16 on GPU/TPU),
  at most ``draws``.

  On XLA:CPU (2 cores, small CNN 16/32/64, batch 128, 6 levels) a surrogate
  step took 0.33 / 0.74 / 1.06 s with 2 / 5 / 10 draws per level one draw at
  a time, against 1.57 / 3.38 / 6.48 s with all of them in one vmap (a vmap
  of convolutions with per-draw weights becomes a grouped convolution, slow
  on XLA:CPU). On accelerators a chunk of 16 filled an H100 in certification;
  all 100 published draws at once would also hold 100 copies of every
  activation for the backward pass (too many for ResNet-18 at batch 128).

  Args:
    draws: weight draws per level.
    backend: "cpu", "gpu", "tpu", ...; default `jax.default_backend()`.
  """
  return min(draws, certify.default_chunk_size(backend))


def _map_draws(fn, key, params, sigma, draws, chunk):
  """``fn(params + sigma xi_d)`` for the weight draws xi_d, d < ``draws``, of
  ``key``: a vmap of ``chunk`` draws at a time.

  xi_d is the certifier's draw for ``split(key, draws)[d]`` (so "robust to
  the noise we certify with" means exactly that; sigma may be traced). All
  the perturbed parameters are made before the loop over draws and enter it
  as its input: made inside it, XLA:CPU fuses their making (the sampler, or
  a slice of a precomputed draw) into each batch-norm op that broadcasts a
  perturbed scale or bias, redoing it for every activation (1.6x the time of
  the small CNN's PUE surrogate step). The price is memory: ``draws`` copies
  of the parameters (10 draws of ResNet-18's 11M float32 parameters:
  450 MB).
  """
  keys = jax.random.split(key, draws)
  noisy = jax.vmap(lambda k: certify.perturb_params(k, params, sigma))(keys)
  chunk = min(chunk, draws) if chunk else default_draw_chunk(draws)
  # A vmap of one adds batch dimensions XLA:CPU runs slower.
  return jax.lax.map(fn, noisy, batch_size=None if chunk == 1 else chunk)


def robust_surrogate_step(state: TrainState, batch: tuple[jax.Array,
                                                          jax.Array],
                          key: jax.Array, *, pue: PUEConfig
                          ) -> tuple[TrainState, dict[str, jax.Array]]:
  """PUE's surrogate step: one optimizer step per noise level sigma_j, each
  on the mean gradient of CE(f_{theta + sigma_j xi}(x), y) over
  ``surrogate_draws`` weight draws (train mode).

  The gradient with respect to theta of a loss at theta + sigma xi is the
  gradient at the perturbed point, so each draw is one ordinary backward
  pass; the new batch-norm statistics are averaged over draws. State first
  so it composes with `lax.scan`. Level 0
  (sigma = 0) takes one pass, not ``surrogate_draws``: its draws are all
  theta, so one pass is their mean (the reference repeats it, 100 of its
  600 passes per batch).
  """
  x, y = parallel.shard_batch(batch)
  x = train_lib.as_float(x)

  def loss_and_grad(state, params):
    def loss(params):
      # This level's running statistics: each level's update builds on the
      # last one's.
      logits, stats = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, x, True)
      return train_lib.cross_entropy(logits, y), stats

    # d loss(theta + sigma xi) / d theta is the gradient at the perturbed
    # point.
    return jax.value_and_grad(loss, has_aux=True)(params)

  num_levels = len(pue.levels())
  scale = 1.0 / num_levels if pue.reference_loss_scale else 1.0

  def step(state, grads, stats):
    grads = jax.tree.map(lambda g: g * scale, grads)
    return train_lib.apply_gradients(state, grads, stats)

  (loss_0, stats), grads = loss_and_grad(state, state.params)
  state = step(state, grads, stats)

  def level_step(state, level):
    j, sigma = level
    (losses, stats), grads = _map_draws(
        functools.partial(loss_and_grad, state), jax.random.fold_in(key, j),
        state.params, sigma, pue.surrogate_draws, pue.draw_chunk)
    mean = functools.partial(jnp.mean, axis=0)
    state = step(state, jax.tree.map(mean, grads), jax.tree.map(mean, stats))
    return state, losses.mean()

  # A scan over the levels (sigma traced) compiles the step once, not T - 1
  # times.
  levels = jnp.asarray(pue.levels()[1:], jnp.float32)
  state, losses = jax.lax.scan(
      level_step, state, (jnp.arange(1, num_levels), levels))
  loss = (loss_0 + losses.sum()) / num_levels
  return state, {"loss": loss, "accuracy": jnp.zeros(())}


def robust_noise_step(state: TrainState, x: jax.Array, y: jax.Array,
                      delta: jax.Array, key: jax.Array, *,
                      cfg: noise_lib.EMConfig, pue: PUEConfig) -> jax.Array:
  """PUE's noise step: for each of K PGD steps and each level sigma_j, the
  input gradients of CE(f_{theta + sigma_j xi}(x + delta), y) summed over
  ``noise_draws`` weight draws (eval mode) give one signed descent step,
  followed by the projection. At level 0 (sigma = 0) the draws are all
  theta: one pass has the sign of their sum. State first so it composes
  with `lax.scan`."""
  levels = jnp.asarray(pue.levels(), jnp.float32)
  num_levels = levels.shape[0]
  delta = pgd_lib.project(delta, x, epsilon=cfg.epsilon)

  def input_grad(inputs, params):
    def loss(inputs):
      logits, _ = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, inputs,
          False)
      return train_lib.cross_entropy(logits, y) * inputs.shape[0]

    return jax.grad(loss)(inputs)

  def descend(delta, grad):
    stepped = delta - cfg.step_size * jnp.sign(grad)
    return pgd_lib.project(stepped, x, epsilon=cfg.epsilon)

  def level_body(i, delta):
    grads = _map_draws(
        functools.partial(input_grad, x + delta), jax.random.fold_in(key, i),
        state.params, levels[i % num_levels], pue.noise_draws,
        pue.draw_chunk)
    return descend(delta, grads.sum(0))

  def pgd_body(k, delta):
    delta = descend(delta, input_grad(x + delta, state.params))
    # Draw keys fold in the flat index k * T + j, level by level.
    return jax.lax.fori_loop(k * num_levels + 1, (k + 1) * num_levels,
                             level_body, delta)

  return jax.lax.fori_loop(0, cfg.pgd_steps, pgd_body, delta)


def provably_unlearnable_noise(key: jax.Array, state: TrainState,
                               images: np.ndarray, labels: np.ndarray, *,
                               num_classes: int, mode: str = "classwise",
                               epsilon: float = 8 / 255,
                               pue: PUEConfig = PUEConfig(),
                               **kwargs: Any) -> noise_lib.CraftResult:
  """Provably unlearnable examples (Wang et al., NDSS 2025, Sec. 5).

  EM crafting in which, once the surrogate's accuracy on the noisy data
  exceeds ``pue.robust_after``, both players face randomly perturbed
  weights (`robust_surrogate_step`, `robust_noise_step`), so the noise stays
  effective for every classifier near the surrogate. Class-wise with
  stop_error 0.1 is the published recipe. The returned surrogate is what
  `jaxue.certify` certifies.

  Args:
    key: randomness.
    state: the surrogate's initial state.
    images: uint8 NHWC clean training images.
    labels: int labels.
    num_classes: number of classes.
    mode: ``"classwise"`` (published) or ``"samplewise"``.
    epsilon: L-inf budget.
    pue: the robust steps' hyperparameters.
    **kwargs: `EMConfig` fields and `craft` options.

  Returns:
    A `jaxue.noise.CraftResult`; ``info`` holds ``method="pue"``, ``mode``,
    ``rounds``, the EM config and the `PUEConfig` (``info["pue"]``).
  """
  config_fields = {k: kwargs.pop(k) for k in list(kwargs)
                   if k in noise_lib.EMConfig._fields}
  cfg = noise_lib.EMConfig(mode=mode, epsilon=epsilon, **config_fields)
  result = noise_lib.craft(key, state, images, labels, cfg,
                           num_classes=num_classes, **pue_steps(cfg, pue),
                           **kwargs)
  result.info["pue"] = pue._asdict()
  return result


def pue_steps(cfg: noise_lib.EMConfig, pue: PUEConfig) -> dict[str, Any]:
  """The `craft` keyword arguments that turn EM crafting into PUE's."""
  pue.check()
  cfg = cfg.resolved()
  return {"robust_surrogate_step": functools.partial(robust_surrogate_step,
                                                     pue=pue),
          "robust_noise_step": functools.partial(robust_noise_step, cfg=cfg,
                                                 pue=pue),
          "robust_after": pue.robust_after}
