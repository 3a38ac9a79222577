"""Robust error-minimizing noise (REM): min-min-max with EOT.

Fu et al., "Robust Unlearnable Examples: Protecting Data Against Adversarial
Learning", ICLR 2022 (arXiv 2203.14533), Sec. 4 and Algorithm 1, solve

    min_theta sum_i min_{||du_i|| <= rho_u} E_{t ~ T}
        max_{||da|| <= rho_a} CE(f_theta(t(x_i + du_i) + da), y_i)

so that the noise stays error-minimizing for a model trained *adversarially*
at radius rho_a (where plain EM noise breaks), and under data augmentation
(the expectation over transformations t, EOT).

* `rem_noise_step`: the noise of one batch with theta frozen (eval mode):
  from a uniform start, ``noise_steps`` signed descent steps of
  ``noise_step_size``; each sums, over K = ``eot_draws`` transformation draws
  (a `jax.vmap`), the gradient with respect to du of
  ``CE(f(t_k(x + du) + da_k), y)`` at the adversarial point ``da_k`` found by
  `jaxue.train.pgd_attack` (``attack_steps`` ascent steps of
  ``attack_step_size`` from a uniform start) and then held fixed.
* `robust_error_minimizing_noise`: the surrogate loop. Every step draws a
  batch, computes its noise with the current theta, applies a fresh t and
  takes one Madry adversarial-training step at rho_a
  (`jaxue.train.adversarial_train_step`, train mode). The learning rate
  decays stepwise (`REMConfig.optimizer`). Afterwards all of the noise is
  regenerated with the final theta, in index order.

At the published settings one surrogate step costs ~560 forward/backward
passes (10 noise steps x 5 draws x (10 attack steps + 1), plus the 11 of
adversarial training): ~40x an EM round's cost per step. The steps run in
jitted blocks of ``checkpoint_every`` (a `lax.scan` each), the regeneration in
blocks of ``checkpoint_every`` batches; after every block ``on_block`` can
save the state, and a run resumed from a saved block reproduces the
uninterrupted run (per-step keys are ``fold_in(key, step)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue import noise as noise_lib
from jaxue import parallel
from jaxue import pgd as pgd_lib
from jaxue import train as train_lib
from jaxue.train import TrainState

# A transformation ``t(key, images) -> images`` of float NHWC batches; it must
# be differentiable in the images (crops and flips are selections).
Transform = Callable[[jax.Array, jax.Array], jax.Array]


class Transformation(NamedTuple):
  """The transformation set T of REM's EOT: random crop, optional flip.

  Callable as ``t(key, images)``; deterministic per key, shape-preserving and
  differentiable in the images (built on `jaxue.data.augment`). A NamedTuple,
  so it hashes by value and can be a static argument of jit.

  Attributes:
    padding: zero padding of the random crop (0: no crop).
    flip: random horizontal flip with probability 0.5.
  """

  padding: int = 4
  flip: bool = True

  def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
    return data_lib.augment(key, images, padding=self.padding,
                            flip=self.flip)


def make_transform(padding: int = 4, flip: bool = True) -> Transformation:
  """REM's transformation set: random crop with ``padding`` then, if
  ``flip``, a random horizontal flip (Fu et al. 2022, Sec. 4, "EOT")."""
  if int(padding) != padding or padding < 0:
    raise ValueError(f"padding must be an integer >= 0, got {padding}")
  return Transformation(int(padding), bool(flip))


def default_transform(image_shape: Sequence[int]) -> Transformation:
  """The default T for an image shape (H, W, C): crop (pad 4) + flip for
  colour images, as published; crop (pad 2) without flip for grayscale
  (28x28 digits and clothes are not mirror-symmetric), as the victims'
  augmentation (docs/design.md, "Surrogate and victim training")."""
  if len(image_shape) not in (3, 4):
    raise ValueError(f"expected an image shape (H, W, C), got {image_shape}")
  if image_shape[-1] == 1:
    return make_transform(padding=2, flip=False)
  return make_transform(padding=4, flip=True)


class REMConfig(NamedTuple):
  """Hyperparameters of REM crafting (defaults: Fu et al. 2022, Sec. 5.1
  and the reference code).

  Attributes:
    rho_u: L-inf budget of the protective noise du.
    rho_a: L-inf radius of the adversarial perturbation da (0: no inner
      maximisation; REM then reduces to EM with EOT).
    noise_steps: PGD descent steps on du per batch.
    noise_step_size: their step (rho_u / 5 when None).
    eot_draws: K, transformation draws per noise step (vmapped).
    attack_steps: PGD ascent steps of the inner maximisation.
    attack_step_size: their step (rho_a / 5 when None).
    train_steps: surrogate steps.
    batch_size: surrogate batch size.
    learning_rate: initial surrogate learning rate.
    lr_decay_every: multiply the learning rate by ``lr_decay`` every this
      many steps.
    lr_decay: the decay factor.
    checkpoint_every: surrogate steps (and regeneration batches) per jitted
      block; ``on_block`` is called after each.
    sweep_batch_size: batch size of the final regeneration (the surrogate
      batch size when None); eval mode, so only a speed knob.
  """

  rho_u: float = 8 / 255
  rho_a: float = 4 / 255
  noise_steps: int = 10
  noise_step_size: float | None = None
  eot_draws: int = 5
  attack_steps: int = 10
  attack_step_size: float | None = None
  train_steps: int = 5000
  batch_size: int = 128
  learning_rate: float = 0.1
  lr_decay_every: int = 2000
  lr_decay: float = 0.1
  checkpoint_every: int = 200
  sweep_batch_size: int | None = None

  def resolved(self) -> REMConfig:
    """The config with every None replaced by its default, validated."""
    rho_u = noise_lib.check_epsilon(self.rho_u, "rho_u")
    rho_a = float(self.rho_a)
    if not np.isfinite(rho_a) or not 0 <= rho_a <= 1:
      raise ValueError(f"rho_a must be in [0, 1] (pixel units, e.g. 4/255), "
                       f"got {self.rho_a}")
    cfg = self._replace(
        rho_u=rho_u, rho_a=rho_a,
        noise_step_size=float(self.noise_step_size or rho_u / 5),
        attack_step_size=float(self.attack_step_size or rho_a / 5),
        sweep_batch_size=self.sweep_batch_size or self.batch_size)
    if cfg.noise_step_size <= 0 or cfg.attack_step_size < 0:
      raise ValueError("step sizes must be > 0, got noise_step_size "
                       f"{cfg.noise_step_size}, attack_step_size "
                       f"{cfg.attack_step_size}")
    minimums = {"noise_steps": 0, "attack_steps": 0, "train_steps": 0,
                "eot_draws": 1, "batch_size": 1, "lr_decay_every": 1,
                "checkpoint_every": 1, "sweep_batch_size": 1}
    for name, minimum in minimums.items():
      value = getattr(cfg, name)
      if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got "
                         f"{value}")
    if not cfg.learning_rate > 0 or not 0 < cfg.lr_decay <= 1:
      raise ValueError(f"need learning_rate > 0 and lr_decay in (0, 1], got "
                       f"{cfg.learning_rate} and {cfg.lr_decay}")
    return cfg

  def attack(self) -> train_lib.AdversarialConfig | None:
    """The inner maximisation / adversarial training settings (None when
    rho_a or attack_steps is 0)."""
    cfg = self.resolved()
    if cfg.rho_a == 0 or cfg.attack_steps == 0:
      return None
    return train_lib.AdversarialConfig(cfg.rho_a, cfg.attack_steps,
                                       cfg.attack_step_size)

  def optimizer(self) -> optax.GradientTransformation:
    """The surrogate's SGD with the stepwise decay
    ``lr * lr_decay ** floor(step / lr_decay_every)``; create the surrogate
    with it: ``train.create_train_state(key, model, shape, cfg.optimizer())``.
    """
    cfg = self.resolved()
    schedule = optax.exponential_decay(
        cfg.learning_rate, transition_steps=cfg.lr_decay_every,
        decay_rate=cfg.lr_decay, staircase=True)
    return train_lib.make_optimizer(schedule)


def rem_noise_step(state: TrainState, x: jax.Array, y: jax.Array,
                   delta: jax.Array | None, key: jax.Array, *,
                   cfg: REMConfig, transform: Transform) -> jax.Array:
  """The robust error-minimizing noise of one batch (Fu et al. 2022,
  Algorithm 1, lines 4-9), theta frozen, model in eval mode.

  A noise step of `jaxue.noise.craft`'s form: state first so it composes
  with `lax.scan`.

  Each of ``noise_steps`` steps: for K = ``eot_draws`` transformation draws
  t_k (vmapped), find ``da_k`` by PGD ascent at radius rho_a from a uniform
  start on ``t_k(x + du)``, take the gradient of
  ``CE(f(t_k(x + du) + da_k), y)`` with respect to du holding ``da_k`` fixed,
  sum over k, and step ``du <- clip_rho_u(du - step * sign(g))``.

  Args:
    state: the surrogate (frozen).
    x: float32 clean images in [0, 1].
    y: int labels.
    delta: the starting du; None for a uniform start U(-rho_u, rho_u) (the
      published recipe).
    key: randomness (start, transformations, attack starts).
    cfg: the hyperparameters.
    transform: ``t(key, images)``, differentiable in the images.

  Returns:
    du with ``|du| <= rho_u`` and ``x + du`` in [0, 1].
  """
  cfg = cfg.resolved()
  start_key, key = jax.random.split(key)
  if delta is None:
    delta = pgd_lib.random_start(start_key, x, epsilon=cfg.rho_u)
  delta = pgd_lib.project(delta, x, epsilon=cfg.rho_u)
  attack = cfg.attack()

  def loss(inputs):
    return noise_lib.eval_loss(state, inputs, y, key)

  def draw_gradient(delta, draw_key):
    t_key, attack_key = jax.random.split(draw_key)

    def moved(d):
      return transform(t_key, x + d)

    if attack is None:
      adversarial = jnp.zeros_like(x)
    else:
      adversarial = jax.lax.stop_gradient(train_lib.pgd_attack(
          attack_key, state, moved(delta), y, epsilon=attack.epsilon,
          step_size=attack.step_size, steps=attack.steps))
    return jax.grad(lambda d: loss(moved(d) + adversarial))(delta)

  def body(i, delta):
    draws = jax.random.split(jax.random.fold_in(key, i), cfg.eot_draws)
    grads = jax.vmap(draw_gradient, in_axes=(None, 0))(delta, draws)
    stepped = delta - cfg.noise_step_size * jnp.sign(grads.sum(0))
    return pgd_lib.project(stepped, x, epsilon=cfg.rho_u)

  return jax.lax.fori_loop(0, cfg.noise_steps, body, delta)


def _fresh_noise_step(state, x, y, delta, key, *, cfg, transform):
  """`rem_noise_step` from a uniform start (the regeneration's step)."""
  del delta  # Every batch is regenerated from scratch, as published.
  return rem_noise_step(state, x, y, None, key, cfg=cfg, transform=transform)


def surrogate_step(state: TrainState, noise: jax.Array, images: jax.Array,
                   labels: jax.Array, key: jax.Array, *, cfg: REMConfig,
                   transform: Transform
                   ) -> tuple[TrainState, jax.Array, dict[str, jax.Array]]:
  """One REM surrogate step (Fu et al. 2022, Algorithm 1, lines 3-11): a
  random batch, its noise (`rem_noise_step` with the current theta, stored
  back at the batch's indices), a fresh transformation, and one adversarial
  training step at rho_a (train mode). State first so it composes with
  `lax.scan`."""
  batch_key, noise_key, t_key, train_key = jax.random.split(key, 4)
  idx = jax.random.choice(batch_key, images.shape[0], (cfg.batch_size,),
                          replace=False)
  x, y = parallel.shard_batch((images[idx], labels[idx]))
  delta = rem_noise_step(state, x, y, None, noise_key, cfg=cfg,
                         transform=transform)
  inputs = transform(t_key, x + delta)
  attack = cfg.attack()
  if attack is None:
    state, metrics = train_lib.train_step(state, (inputs, y), train_key)
  else:
    state, metrics = train_lib.adversarial_train_step(
        state, (inputs, y), train_key, cfg=attack)
  return state, noise.at[idx].set(delta), metrics


@functools.partial(jax.jit, donate_argnums=(0, 1),
                   static_argnames=("cfg", "transform", "length"))
def _train_block(state, noise, key, start, images, labels, *, cfg, transform,
                 length):
  """Surrogate steps ``start .. start + length - 1`` as one `lax.scan`."""

  def body(carry, step):
    state, noise = carry
    state, noise, metrics = surrogate_step(
        state, noise, images, labels, jax.random.fold_in(key, step),
        cfg=cfg, transform=transform)
    return (state, noise), metrics

  (state, noise), metrics = jax.lax.scan(body, (state, noise),
                                         start + jnp.arange(length))
  return state, noise, jax.tree.map(jnp.mean, metrics)


@functools.partial(jax.jit, donate_argnums=(1,),
                   static_argnames=("cfg", "transform"))
def _regenerate_block(state, noise, key, indices, images, labels, *, cfg,
                      transform):
  """Regenerates the noise of ``indices`` (in order) with frozen theta."""
  step = functools.partial(_fresh_noise_step, cfg=cfg, transform=transform)
  return noise_lib._sweep_samplewise(  # pylint: disable=protected-access
      state, noise, images, labels, key, cfg=cfg, noise_step=step,
      indices=indices)


def total_units(cfg: REMConfig, num_examples: int) -> int:
  """Surrogate steps plus regeneration batches: the ``step`` reported to
  ``on_block`` runs from 0 to this."""
  cfg = cfg.resolved()
  return cfg.train_steps + -(-num_examples // cfg.sweep_batch_size)


def robust_error_minimizing_noise(
    key: jax.Array, state: TrainState, images: np.ndarray,
    labels: np.ndarray, *, num_classes: int, cfg: REMConfig = REMConfig(),
    transform: Transform | None = None, noise: np.ndarray | None = None,
    start_step: int = 0, history: dict[str, list] | None = None,
    on_block: Callable[[int, TrainState, jax.Array, dict[str, list]], None]
    | None = None,
    progress: bool | str = True) -> noise_lib.CraftResult:
  """Sample-wise robust error-minimizing noise (Fu et al. 2022, Alg. 1).

  Args:
    key: randomness (batches, starts, transformations, attacks).
    state: the surrogate's initial state, created with `REMConfig.optimizer`
      (stepwise learning-rate decay); or the state saved by ``on_block``
      when resuming.
    images: uint8 NHWC clean training images.
    labels: int labels.
    num_classes: number of classes (validates the labels).
    cfg: the hyperparameters (published defaults).
    transform: the transformation set T (`default_transform` of the image
      shape when None).
    noise: resume from this (N, H, W, C) noise (zeros when None).
    start_step: resume after this many units (surrogate steps, then
      regeneration batches; see `total_units`).
    history: resume this history.
    on_block: called after every block with ``(units_done, state, noise,
      history)``; experiments use it to checkpoint. The next block donates
      the state's and noise's buffers, so copy what you keep
      (``jax.device_get``).
    progress: show a tqdm bar; a string is used as its description.

  Returns:
    A `jaxue.noise.CraftResult`: the regenerated noise, the final surrogate,
    the per-block history ``{"step", "loss", "accuracy", "seconds"}`` (loss
    and accuracy of the adversarial training batches; regeneration blocks
    record None), ``converged=True`` once every unit is done, and ``info``
    with ``method="rem"``, ``mode="samplewise"`` and the resolved config.
  """
  cfg = cfg.resolved()
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  n = images.shape[0]
  if n < cfg.batch_size:
    raise ValueError(f"batch_size {cfg.batch_size} exceeds the {n} images")
  transform = transform or default_transform(images.shape[1:])
  total = total_units(cfg, n)
  if not 0 <= start_step <= total:
    raise ValueError(f"start_step must be in [0, {total}], got {start_step}")
  if noise is None:
    noise = jnp.zeros(images.shape, jnp.float32)
  elif tuple(noise.shape) != images.shape:
    raise ValueError(f"resume noise has shape {noise.shape}, expected "
                     f"{images.shape}")
  noise = jnp.array(noise, jnp.float32)  # A copy: blocks donate it.
  state = jax.tree.map(jnp.copy, state)
  x = train_lib.as_float(jnp.asarray(images))
  y = jnp.asarray(labels, jnp.int32)
  train_key, regen_key = jax.random.split(key)
  history = history or {"step": [], "loss": [], "accuracy": [],
                        "seconds": []}
  desc = progress if isinstance(progress, str) else "REM"
  bar = tqdm(total=total, initial=start_step, desc=desc,
             disable=not progress, leave=False)
  step = start_step
  while step < total:
    start = time.perf_counter()
    if step < cfg.train_steps:
      length = min(cfg.checkpoint_every, cfg.train_steps - step)
      state, noise, metrics = _train_block(
          state, noise, train_key, jnp.int32(step), x, y, cfg=cfg,
          transform=transform, length=length)
      loss, accuracy = float(metrics["loss"]), float(metrics["accuracy"])
      bar.set_postfix(adv_loss=f"{loss:.3f}", adv_acc=f"{accuracy:.3f}")
    else:
      first = step - cfg.train_steps
      length = min(cfg.checkpoint_every, total - step)
      indices = jnp.arange(first * cfg.sweep_batch_size,
                           min((first + length) * cfg.sweep_batch_size, n))
      # Wait for it: the dispatch is asynchronous, and the block's seconds
      # would otherwise land in `on_block`'s checkpoint write.
      noise = jax.block_until_ready(_regenerate_block(
          state, noise, jax.random.fold_in(regen_key, first), indices, x, y,
          cfg=cfg, transform=transform))
      loss = accuracy = None
      bar.set_postfix(phase="regenerate")
    step += length
    history["step"].append(step)
    history["loss"].append(loss)
    history["accuracy"].append(accuracy)
    history["seconds"].append(time.perf_counter() - start)
    bar.update(length)
    if on_block is not None:
      on_block(step, state, noise, history)
  bar.close()
  info = {"method": "rem", "mode": "samplewise", "config": cfg._asdict()}
  return noise_lib.CraftResult(np.asarray(noise), state, history,
                               step >= total, info)


def rem_cost(cfg: REMConfig = REMConfig()) -> dict[str, Any]:
  """Forward/backward passes per surrogate step and per regenerated batch
  (the issue's "~560 per step": 10 x 5 x (10 + 1) + (10 + 1))."""
  cfg = cfg.resolved()
  attack = 0 if cfg.attack() is None else cfg.attack_steps
  noise_passes = cfg.noise_steps * cfg.eot_draws * (attack + 1)
  return {"per_train_step": noise_passes + attack + 1,
          "per_regenerated_batch": noise_passes}
