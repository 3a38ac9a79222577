"""Tests of the weight-recovery attack (jaxue.recover)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxue import models
from jaxue import recover
from jaxue import train

NUM_CLASSES = 4
EPOCHS = 3
BATCH = 32
# Shared by every run on the tiny problem, so that one compiled epoch serves
# all of them (η and the projection mode are traced). lr 0.1 lets 12 steps
# learn the toy task from a random initialisation.
RECOVER_KWARGS = {"epochs": EPOCHS, "batch_size": BATCH, "learning_rate": 0.1}


def _random_tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"a": jnp.asarray(rng.normal(size=(3, 4)) * scale, jnp.float32),
          "b": {"c": jnp.asarray(rng.normal(size=(5,)) * scale, jnp.float32),
                "d": jnp.asarray(rng.normal(size=()) * scale, jnp.float32)}}


def _dist(params, params0):
  return float(recover.tree_distance(params, params0))


def _images(n, seed):
  """8x8x1 uint8 images with a class-dependent bright row: learnable."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % NUM_CLASSES).astype(np.int32)
  images = rng.integers(0, 60, (n, 8, 8, 1)).astype(np.uint8)
  for c in range(NUM_CLASSES):
    images[labels == c, 2 * c: 2 * c + 2, :, :] = 230
  return images, labels


@pytest.fixture(scope="module")
def tiny():
  """A freshly initialised tiny CNN (chance accuracy) and clean data."""
  # XLA's convolutions compile faster than the CPU default (hybrid); all
  # conv impls compute the same function (tests/test_models.py).
  model = models.make_model("small_cnn", num_classes=NUM_CLASSES,
                            widths=(4, 4, 4), conv_impl="lax")
  # An RBG key only to initialise: it compiles faster than threefry.
  variables0 = model.init(jax.random.key(1, impl="rbg"), (8, 8, 1))
  return model, variables0, _images(128, 0), _images(64, 1)


# ------------------------------------------------------------- projection


@pytest.mark.parametrize("eta", [0.0, 0.05, 0.5, 2.0, 50.0])
def test_projection_stays_in_ball(eta):
  for seed in range(3):
    params0, step = _random_tree(seed), _random_tree(seed + 10)
    params = jax.tree.map(jnp.add, params0, step)
    projected = recover.project_to_ball(params, params0, eta)
    assert _dist(projected, params0) <= eta + 1e-5
    if _dist(params, params0) <= eta:  # Inside: exactly the identity.
      jax.tree.map(np.testing.assert_array_equal, projected, params)
    else:  # Outside: on the boundary, along the same direction.
      assert _dist(projected, params0) == pytest.approx(eta, rel=1e-5,
                                                        abs=1e-6)
    if eta == 0:
      jax.tree.map(np.testing.assert_array_equal, projected, params0)
    sphere = recover.project_to_ball(params, params0, eta, sphere=True)
    assert _dist(sphere, params0) == pytest.approx(eta, rel=1e-5, abs=1e-6)


def test_projection_jits_with_traced_eta_and_guards_zero():
  params0 = _random_tree(0)
  params = jax.tree.map(jnp.add, params0, _random_tree(1, scale=0.01))
  project = jax.jit(recover.project_to_ball, static_argnames="sphere")
  inside = project(params, params0, jnp.float32(10.0))
  jax.tree.map(np.testing.assert_array_equal, inside, params)
  for sphere in (False, True):  # θ = θ0: no division by zero.
    same = project(params0, params0, jnp.float32(1.0), sphere=sphere)
    jax.tree.map(np.testing.assert_array_equal, same, params0)
  with pytest.raises(ValueError, match="eta must be >= 0"):
    recover.project_to_ball(params, params0, -0.1)


def test_random_direction_has_norm_eta(key):
  params = _random_tree(0)
  for eta in (0.0, 0.3, 7.0):
    d = recover.random_direction(key, params, eta)
    assert float(optax.tree.norm(d)) == pytest.approx(eta, rel=1e-5)
  d1 = recover.random_direction(jax.random.fold_in(key, 1), params, 1.0)
  d2 = recover.random_direction(jax.random.fold_in(key, 2), params, 1.0)
  assert not np.allclose(d1["a"], d2["a"])


# ---------------------------------------------------------- projected SGD


def _recover(tiny, key, **kwargs):
  model, variables0, (x, y), _ = tiny
  kwargs = {**RECOVER_KWARGS, **kwargs}
  return recover.recover(key, model, variables0, x, y, **kwargs)


def test_recover_stays_in_ball_and_is_deterministic(tiny, key):
  _, variables0, _, _ = tiny
  eta = 0.3
  variables, history = _recover(tiny, key, eta=eta)
  assert _dist(variables["params"], variables0["params"]) <= eta + 1e-5
  assert max(history["max_distance"]) <= eta + 1e-5
  assert len(history["train_loss"]) == EPOCHS
  # Batch-norm statistics are updated (not projected, not frozen).
  assert not np.allclose(variables["batch_stats"]["BatchNorm_0"]["mean"],
                         variables0["batch_stats"]["BatchNorm_0"]["mean"])
  again, _ = _recover(tiny, key, eta=eta)
  jax.tree.map(np.testing.assert_array_equal, again, variables)
  other, _ = _recover(tiny, jax.random.fold_in(key, 1), eta=eta)
  assert not np.allclose(other["params"]["Dense_0"]["kernel"],
                         variables["params"]["Dense_0"]["kernel"])
  # θ0 is left intact (the training state is donated, θ0 is not).
  assert float(optax.tree.norm(variables0["params"])) > 0


def test_recover_sphere_mode_sits_on_the_sphere(tiny, key):
  _, variables0, _, _ = tiny
  variables, history = _recover(tiny, key, eta=0.3, project="sphere")
  assert _dist(variables["params"], variables0["params"]) == pytest.approx(
      0.3, rel=1e-4)
  assert history["distance"] == pytest.approx([0.3] * EPOCHS, rel=1e-4)


def test_recovery_curve_improves_with_large_eta(tiny, key):
  model, variables0, train_set, test_set = tiny
  theta0 = train.evaluate(model.apply, variables0, *test_set)
  curve = recover.recovery_curve(
      key, model, variables0, train_set, test_set, etas=[0.0, 100.0],
      progress=False, **RECOVER_KWARGS)
  assert [eta for eta, _ in curve] == [0.0, 100.0]
  assert all(0 <= acc <= 1 for _, acc in curve)
  assert curve[1][1] >= theta0 + 0.25, (theta0, curve)


def test_random_direction_recovery(tiny, key):
  model, variables0, train_set, test_set = tiny
  result = recover.random_direction_recovery(
      key, model, variables0, train_set, test_set, eta=0.5,
      num_directions=4, chunk_size=2)
  np.testing.assert_allclose(result["direction_norms"], 0.5, rtol=1e-5)
  assert result["best_index"] == int(np.argmax(
      result["selection_accuracies"]))
  assert result["selection_accuracy"] == result["selection_accuracies"].max()
  assert 0 <= result["test_accuracy"] <= 1
  assert _dist(result["variables"]["params"],
               variables0["params"]) == pytest.approx(0.5, rel=1e-5)
  again = recover.random_direction_recovery(
      key, model, variables0, train_set, test_set, eta=0.5,
      num_directions=4, chunk_size=2)
  np.testing.assert_array_equal(again["selection_accuracies"],
                                result["selection_accuracies"])


@pytest.mark.parametrize("kwargs,message", [
    ({"eta": -1.0}, "eta must be a number >= 0"),
    ({"eta": math.nan}, "eta must be a number >= 0"),
    ({"eta": 1.0, "project": "cube"}, "unknown projection 'cube'"),
    ({"eta": math.inf, "project": "sphere"}, "eta = inf needs"),
    ({"eta": 1.0, "epochs": 0}, "epochs must be an integer >= 1"),
    ({"eta": 1.0, "batch_size": 1000}, "batch_size 1000 exceeds"),
])
def test_recover_bad_arguments(tiny, key, kwargs, message):
  with pytest.raises(ValueError, match=message):
    _recover(tiny, key, **kwargs)


def test_recover_bad_data(tiny, key):
  model, variables0, (x, y), _ = tiny
  with pytest.raises(ValueError, match="labels for"):
    recover.recover(key, model, variables0, x, y[:-1], eta=1.0)
  with pytest.raises(ValueError, match="expected uint8"):
    recover.recover(key, model, variables0, x.astype(np.float32) / 255, y,
                    eta=1.0)
  with pytest.raises(ValueError, match="labels must lie in"):
    recover.recover(key, model, variables0, x, y + NUM_CLASSES, eta=1.0)
  with pytest.raises(ValueError, match="'params' and 'batch_stats'"):
    recover.recover(key, model, {"params": variables0["params"]}, x, y,
                    eta=1.0)
  with pytest.raises(ValueError, match="num_directions must be"):
    recover.random_direction_recovery(key, model, variables0, (x, y), (x, y),
                                      eta=1.0, num_directions=0)
