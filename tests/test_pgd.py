"""Tests of jaxue.pgd: constraints hold, descent lowers, ascent raises."""

import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import pgd


def _problem():
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.uniform(kx, (6, 5, 5, 1))
  x = x.at[0].set(0.0).at[1].set(1.0)  # Saturated images test the box.
  w = jax.random.normal(kw, (25, 3))
  y = jnp.array([0, 1, 2, 0, 1, 2])

  def loss(xa):
    logits = xa.reshape(6, -1) @ w
    return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(6), y])

  return x, loss


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("descent", [True, False])
def test_pgd_constraints_and_direction(norm, descent):
  x, loss = _problem()
  eps = 8 / 255 if norm == "linf" else 0.5
  delta = pgd.pgd(loss, x, epsilon=eps, step_size=eps / 4, steps=10,
                  descent=descent, norm=norm, key=jax.random.key(3))
  if norm == "linf":
    assert float(jnp.abs(delta).max()) <= eps + 1e-6
  else:
    norms = jnp.sqrt(jnp.sum(delta ** 2, axis=(1, 2, 3)))
    assert float(norms.max()) <= eps + 1e-5
  assert float((x + delta).min()) >= 0.0
  assert float((x + delta).max()) <= 1.0
  before, after = float(loss(x)), float(loss(x + delta))
  assert (after < before) if descent else (after > before)


def test_zero_steps_and_start():
  x, loss = _problem()
  zero = pgd.pgd(loss, x, epsilon=0.1, step_size=0.01, steps=0,
                 descent=True)
  np.testing.assert_array_equal(zero, 0.0)
  start = jnp.full_like(x, 0.5)
  projected = pgd.pgd(loss, x, epsilon=0.1, step_size=0.01, steps=0,
                      descent=True, delta=start)
  assert float(projected.max()) <= 0.1 + 1e-7
  assert float((x + projected).max()) <= 1.0


def test_pgd_is_jittable_and_deterministic():
  x, loss = _problem()
  f = jax.jit(lambda k: pgd.pgd(loss, x, epsilon=0.1, step_size=0.02,
                                steps=3, descent=False, key=k))
  np.testing.assert_array_equal(f(jax.random.key(1)), f(jax.random.key(1)))


def test_bad_norm():
  x, loss = _problem()
  with pytest.raises(ValueError, match="norm"):
    pgd.pgd(loss, x, epsilon=0.1, step_size=0.01, steps=1, descent=True,
            norm="l1")


class ProjectTest(chex.TestCase):
  """`pgd.project` keeps both constraints, jitted or not."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("linf", "l2")
  def test_projection_lands_in_the_ball_and_the_box(self, norm):
    x, _ = _problem()
    delta = 3.0 * jax.random.normal(jax.random.key(1), x.shape)
    project = self.variant(functools.partial(pgd.project, epsilon=0.1,
                                             norm=norm))
    projected = project(delta, x)
    chex.assert_equal_shape([projected, x])
    chex.assert_tree_all_finite(projected)
    if norm == "linf":
      self.assertLessEqual(float(jnp.abs(projected).max()), 0.1 + 1e-6)
    else:
      norms = jnp.sqrt(jnp.sum(projected ** 2, axis=(1, 2, 3)))
      self.assertLessEqual(float(norms.max()), 0.1 + 1e-5)
    self.assertGreaterEqual(float((x + projected).min()), 0.0)
    self.assertLessEqual(float((x + projected).max()), 1.0 + 1e-6)
