"""Tests of jaxue.train: steps reduce the loss, evaluation is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models
from jaxue import train


def _toy(n=64, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n).astype(np.int32)
  images = rng.integers(0, 60, (n, 8, 8, 1))
  images[labels == 1, 2:6, 2:6] += 150  # A bright square means class 1.
  return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def model():
  return models.make_model("small_cnn", num_classes=2, widths=(4, 4, 4))


def test_train_step_reduces_loss(model):
  images, labels = _toy()
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer(0.05))
  step = jax.jit(train.train_step)
  batch = (jnp.asarray(images), jnp.asarray(labels))
  losses = []
  for i in range(15):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 15


def test_fit_learns_and_records_history(model):
  images, labels = _toy(128)
  test = _toy(50, seed=1)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.cosine_optimizer(5 * 4))
  state, history = train.fit(jax.random.key(1), state, images, labels,
                             epochs=5, batch_size=32, test=test,
                             progress=False)
  assert len(history["test_accuracy"]) == 5
  assert history["test_accuracy"][-1] >= 0.9
  assert history["train_loss"][-1] < history["train_loss"][0]


def test_train_victims_is_train_victim_per_seed(model):
  images, labels = _toy(64)
  kwargs = dict(test=(images, labels), epochs=1, batch_size=32,
                progress=False)
  key = jax.random.key(5)
  first, histories = train.train_victims(key, model, images, labels,
                                         seeds=2, **kwargs)
  assert len(histories) == 2
  for s in range(2):
    state, history = train.train_victim(jax.random.fold_in(key, s), model,
                                        images, labels, **kwargs)
    for name in ("train_loss", "train_accuracy", "test_accuracy"):
      assert histories[s][name] == history[name]
    if s == 0:
      for a, b in zip(jax.tree.leaves(first.variables),
                      jax.tree.leaves(state.variables)):
        np.testing.assert_array_equal(a, b)


def test_optimizer_matches_reference_order():
  # clip -> weight decay -> momentum SGD, as torch clip_grad_norm_ + SGD.
  params = {"w": jnp.array([3.0, 4.0])}
  grads = {"w": jnp.array([30.0, 40.0])}  # norm 50, clipped to 5
  tx = train.make_optimizer(0.1, weight_decay=0.5, clip_norm=5.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = -0.1 * (np.array([3.0, 4.0]) + 0.5 * np.array([3.0, 4.0]))
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)


def test_evaluate_counts_whole_set_including_tail(model):
  images, labels = _toy(37)
  variables = model.init(jax.random.key(0), (8, 8, 1))
  logits, _ = model.apply(variables, images.astype(np.float32) / 255, False)
  want = float(np.mean(np.asarray(logits).argmax(-1) == labels))
  got = train.evaluate(model.apply, variables, images, labels, batch_size=8)
  assert got == pytest.approx(want, abs=1e-7)


def test_epoch_indices_and_errors():
  idx = train.epoch_indices(jax.random.key(0), 10, 3)
  assert idx.shape == (3, 3)
  assert len(set(np.asarray(idx).ravel().tolist())) == 9
  with pytest.raises(ValueError, match="batch_size"):
    train.epoch_indices(jax.random.key(0), 2, 3)


def test_fit_rejects_bad_inputs(model):
  images, labels = _toy(16)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer())
  with pytest.raises(ValueError, match="uint8"):
    train.fit(jax.random.key(0), state, images.astype(np.float32), labels,
              epochs=1, batch_size=4, progress=False)
  with pytest.raises(ValueError, match="labels"):
    train.fit(jax.random.key(0), state, images, labels[:-1], epochs=1,
              batch_size=4, progress=False)
  with pytest.raises(ValueError, match="epochs"):
    train.fit(jax.random.key(0), state, images, labels, epochs=0,
              progress=False)


def test_train_epoch_compiles_once(model):
  images, labels = _toy(32)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer())
  x, y = jnp.asarray(images), jnp.asarray(labels)
  state, _ = train.train_epoch(state, x, y, jax.random.key(0), batch_size=8)
  before = train.train_epoch._cache_size()
  state, _ = train.train_epoch(state, x, y, jax.random.key(1), batch_size=8)
  assert train.train_epoch._cache_size() == before
