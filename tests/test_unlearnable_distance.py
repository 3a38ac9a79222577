"""SAL and the Unlearnable Distance (Ye, Su & Qian, arXiv 2509.08058)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxue import models
from jaxue import unlearnable_distance as ud

N, SIDE, CLASSES, BATCH = 12, 4, 3, 4


@pytest.fixture(scope="module")
def tiny():
  rng = np.random.default_rng(0)
  labels = np.arange(N, dtype=np.int32) % CLASSES
  images = (rng.integers(0, 150, (N, SIDE, SIDE, 1))
            + 50 * labels[:, None, None, None]).astype(np.uint8)
  model = models.make_model("small_cnn", num_classes=CLASSES, widths=(2, 3))
  variables = model.init(jax.random.key(0), images.shape[1:])
  return images, labels, model, variables


def _set(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _set(tree[path[0]], path[1:], value)
  return out


def _direct_sal(model, variables, images, labels, *, steps, rho, lr,
                channel=None):
  """The SAL probe written out with plain Python loops, one unit at a
  time, batches in order."""
  x = jnp.asarray(images, jnp.float32) / 255.0
  y = jnp.asarray(labels)
  stats = variables["batch_stats"]

  @jax.jit
  def loss_acc(params, xb, yb):
    logits, _ = model.apply({"params": params, "batch_stats": stats}, xb,
                            False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return loss, (logits.argmax(-1) == yb).mean()

  @jax.jit
  def grad(params, xb, yb):
    return jax.grad(lambda p: loss_acc(p, xb, yb)[0])(params)

  params = variables["params"]
  l0, acc0 = (float(v) for v in loss_acc(params, x, y))
  paths = ud.weight_paths(params)
  out_loss, out_acc = [], []
  for path in paths:
    w0 = params
    for k in path:
      w0 = w0[k]
    channels = [None] if channel is None else [channel]
    for c in channels:
      mask = (jnp.ones_like(w0) if c is None
              else jnp.zeros_like(w0).at[..., c].set(1.0))
      radius = rho * float(jnp.linalg.norm((w0 * mask).ravel()))
      copies = {1.0: w0, -1.0: w0}
      lo, hi, acc_lo, acc_hi = l0, l0, acc0, acc0
      for _ in range(steps):
        for sign in (1.0, -1.0):
          w = copies[sign]
          for b in range(N // BATCH):
            xb, yb = x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH]
            g = grad(_set(params, path, w), xb, yb)
            for k in path:
              g = g[k]
            w = w - sign * lr * g * mask
          d = w - w0
          norm = float(jnp.linalg.norm(d.ravel()))
          if norm > radius:
            w = w0 + d * (radius / norm)
          copies[sign] = w
        l_min, a_min = (float(v) for v in loss_acc(
            _set(params, path, copies[1.0]), x, y))
        l_max, a_max = (float(v) for v in loss_acc(
            _set(params, path, copies[-1.0]), x, y))
        if l_min < lo:
          lo, acc_lo = l_min, a_min
        if l_max > hi:
          hi, acc_hi = l_max, a_max
      s_max, s_min = hi - l0, l0 - lo
      out_loss.append(s_max if abs(s_max) > abs(s_min) else s_min)
      a_max, a_min = acc0 - acc_hi, acc_lo - acc0
      out_acc.append(a_max if abs(a_max) > abs(a_min) else a_min)
  return np.array(out_loss), np.array(out_acc)


@pytest.mark.parametrize("rho", [0.05, 10.0])
def test_sal_matches_direct_computation(tiny, rho):
  images, labels, model, variables = tiny
  sal = ud.sharpness_aware_learnability(
      jax.random.key(1), model.apply, variables, images, labels, steps=3,
      rho=rho, learning_rate=0.5, batch_size=BATCH, shuffle=False)
  want_loss, want_acc = _direct_sal(model, variables, images, labels,
                                    steps=3, rho=rho, lr=0.5)
  assert len(sal.names) == 3  # Two conv kernels and the dense kernel.
  np.testing.assert_allclose(sal.loss, want_loss, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sal.accuracy, want_acc, atol=1e-6)
  assert np.all(np.abs(sal.loss) > 0)


def test_channel_units_match_direct_computation(tiny):
  images, labels, model, variables = tiny
  sal = ud.sharpness_aware_learnability(
      jax.random.key(1), model.apply, variables, images, labels,
      units="channel", channels=[1], steps=2, learning_rate=0.5,
      batch_size=BATCH, shuffle=False)
  want_loss, _ = _direct_sal(model, variables, images, labels, steps=2,
                             rho=0.05, lr=0.5, channel=1)
  assert sal.names[0].endswith("[1]")
  np.testing.assert_allclose(sal.loss, want_loss, rtol=1e-4, atol=1e-6)


def test_reference_l0_is_used(tiny):
  images, labels, model, variables = tiny
  fresh = ud.sharpness_aware_learnability(
      jax.random.key(1), model.apply, variables, images, labels, steps=1,
      batch_size=BATCH, shuffle=False)
  given = ud.sharpness_aware_learnability(
      jax.random.key(1), model.apply, variables, images, labels, steps=1,
      batch_size=BATCH, shuffle=False,
      reference=(fresh.l0 + 100.0, fresh.acc0))
  assert given.l0 == pytest.approx(fresh.l0 + 100.0)
  # L0 far above every copy's loss: s_min dominates and is about 100.
  assert np.all(given.loss > 99)


def test_sal_during_training(tiny):
  images, labels, model, _ = tiny
  _, history = ud.sal_during_training(
      jax.random.key(2), model, images, labels, epochs=2, steps=1,
      batch_size=BATCH, test=(images, labels), progress=False)
  assert np.shape(history["sal_loss"]) == (2, 3)
  assert len(history["names"]) == 3
  assert len(history["test_accuracy"]) == 2
  _, training = ud.sal_during_training(
      jax.random.key(2), model, images, labels, epochs=1, steps=1,
      batch_size=BATCH, reference_l0="training", progress=False)
  assert np.shape(training["sal_loss"]) == (1, 3)


def test_kmeans_1d():
  assert ud.kmeans_1d([0.0, 0.1, 1.0, 1.2]) == pytest.approx((0.05, 1.1))
  assert ud.kmeans_1d([3.0, 3.0, 3.0]) == (3.0, 3.0)
  rng = np.random.default_rng(0)
  v = rng.normal(size=9)
  lo, hi = ud.kmeans_1d(v)
  # Brute force over every 2-partition of the values.
  best = min(
      (np.sum((v[m] - v[m].mean()) ** 2) + np.sum((v[~m] - v[~m].mean()) ** 2),
       tuple(sorted((v[m].mean(), v[~m].mean()))))
      for m in (np.array([(i >> j) & 1 for j in range(9)], bool)
                for i in range(1, 2 ** 9 - 1)))
  assert (lo, hi) == pytest.approx(best[1])


def test_unlearnable_distance_constructed_case():
  clean = [[0.1, 0.2, 1.0, 1.1],   # centres 0.15, 1.05: midpoint 0.6
           [0.0, 0.1, 0.9, 1.2]]   # centres 0.05, 1.05: midpoint 0.55
  release = [[0.1, 0.7, 0.2, 0.3],  # one unit above tau = 0.575
             [0.6, 0.5, 0.2, 0.1]]  # one unit above
  out = ud.unlearnable_distance(release, clean)
  assert out["threshold"] == pytest.approx(0.575)
  assert out["n_clean"] == pytest.approx(2.0)
  assert out["n"] == pytest.approx(1.0)
  assert out["ud"] == pytest.approx(0.5)
  assert out["one_minus_ud"] == pytest.approx(0.5)
  assert ud.unlearnable_distance(clean, clean)["ud"] == 1.0


def test_bad_input(tiny):
  images, labels, model, variables = tiny
  with pytest.raises(ValueError, match="units"):
    ud.sharpness_aware_learnability(jax.random.key(0), model.apply,
                                    variables, images, labels, units="neuron")
  with pytest.raises(ValueError, match="batch_size"):
    ud.sharpness_aware_learnability(jax.random.key(0), model.apply,
                                    variables, images, labels,
                                    batch_size=N + 1)
  with pytest.raises(ValueError, match="channels"):
    ud.sharpness_aware_learnability(jax.random.key(0), model.apply,
                                    variables, images, labels, channels=[0],
                                    batch_size=BATCH)
  with pytest.raises(ValueError, match="reference_l0"):
    ud.sal_during_training(jax.random.key(0), model, images, labels,
                           epochs=1, reference_l0="train")
  with pytest.raises(ValueError, match="units"):
    ud.unlearnable_distance([[0.0, 1.0, 2.0]], [[0.0, 1.0]])
  with pytest.raises(ValueError, match="clean_sal"):
    ud.unlearnable_distance([[0.0, 1.0]], [[0.0, np.nan]])
  with pytest.raises(ValueError, match="at least 2"):
    ud.kmeans_1d([1.0])
