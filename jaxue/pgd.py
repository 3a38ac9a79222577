"""Projected gradient descent and ascent on input perturbations.

One generic routine serves every crafter and attack in jaxue: error-minimizing
noise (descent, Huang et al. 2021, Sec. 3), error-maximizing noise and Madry
adversarial training (ascent), and REM's inner maximisation. All steps run in
one `lax.fori_loop`; after every step the perturbation is projected onto the
epsilon-ball and ``x + delta`` is clipped to [0, 1], so the iterate is always a
valid image.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

NORMS = ("linf", "l2")


def _per_sample_l2(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)),
                          keepdims=True))


def project(delta: jax.Array, x: jax.Array, *, epsilon: float,
            norm: str = "linf") -> jax.Array:
  """Projects ``delta`` onto the norm ball and ``x + delta`` onto [0, 1].

  For L-inf the box clip after the ball clip keeps the ball constraint (it
  moves each coordinate towards ``x``); for L2 it can only shrink the norm.
  """
  if norm == "linf":
    delta = jnp.clip(delta, -epsilon, epsilon)
  elif norm == "l2":
    scale = jnp.minimum(1.0, epsilon / jnp.maximum(_per_sample_l2(delta),
                                                   1e-12))
    delta = delta * scale
  else:
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
  return jnp.clip(x + delta, 0.0, 1.0) - x


def _direction(grad: jax.Array, norm: str) -> jax.Array:
  if norm == "linf":
    return jnp.sign(grad)
  return grad / jnp.maximum(_per_sample_l2(grad), 1e-12)


def random_start(key: jax.Array, x: jax.Array, *, epsilon: float,
                 norm: str = "linf") -> jax.Array:
  """A uniform start in the ball (L-inf: U(-eps, eps) per pixel; L2: a
  uniformly random direction with a uniformly random radius)."""
  if norm == "linf":
    delta = jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon)
  else:
    dir_key, radius_key = jax.random.split(key)
    delta = jax.random.normal(dir_key, x.shape, x.dtype)
    delta = delta / jnp.maximum(_per_sample_l2(delta), 1e-12)
    radius = jax.random.uniform(radius_key, (x.shape[0],) + (1,) *
                                (x.ndim - 1), x.dtype)
    delta = delta * radius * epsilon
  return project(delta, x, epsilon=epsilon, norm=norm)


def pgd(loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array, *,
        epsilon: float, step_size: float, steps: int, descent: bool,
        norm: str = "linf", delta: jax.Array | None = None,
        key: jax.Array | None = None) -> jax.Array:
  """Runs ``steps`` projected signed-gradient steps on a perturbation.

  Each step is ``x~ = x + delta``, ``delta <- P(x~ -/+ step_size * d - x)``
  with ``d = sign(grad)`` (L-inf) or ``grad / ||grad||_2`` per sample (L2),
  descending for error-minimizing noise and ascending for attacks.

  Args:
    loss_fn: maps perturbed inputs (same shape as ``x``) to a scalar loss;
      use a *sum* over samples so that per-sample gradients do not shrink
      with the batch size (the sign step ignores the scale for L-inf).
    x: clean inputs in [0, 1].
    epsilon: radius of the ball (> 0).
    step_size: step length alpha (> 0).
    steps: number of steps (>= 0; a Python int).
    descent: minimise (True) or maximise (False) the loss.
    norm: ``"linf"`` or ``"l2"``.
    delta: starting perturbation (e.g. the current noise); projected first.
    key: if given and ``delta`` is None, start uniformly in the ball;
      otherwise start at zero.

  Returns:
    The perturbation, with ``||delta|| <= epsilon`` and ``x + delta`` in
    [0, 1].
  """
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
  if delta is None:
    if key is not None:
      delta = random_start(key, x, epsilon=epsilon, norm=norm)
    else:
      delta = jnp.zeros_like(x)
  delta = project(delta, x, epsilon=epsilon, norm=norm)
  sign = -1.0 if descent else 1.0
  grad_fn = jax.grad(loss_fn)

  def body(_, delta):
    grad = grad_fn(x + delta)
    stepped = delta + sign * step_size * _direction(grad, norm)
    return project(stepped, x, epsilon=epsilon, norm=norm)

  return jax.lax.fori_loop(0, steps, body, delta)
