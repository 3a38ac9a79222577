"""Tests for jaxue.certify.

Wang et al., NDSS 2025, "Certified (q, η)-Learnability".
"""

import json
import math
import os
import textwrap
from typing import Any, Callable, NamedTuple

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxue import certify
from jaxue import models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# A tiny model with the jaxue model interface (init / apply).
# ----------------------------------------------------------------------------


class Model(NamedTuple):
  init: Callable[..., Any]
  apply: Callable[..., Any]


class TinyCNN(nn.Module):
  num_classes: int = 5

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def make_model() -> Model:
  module = TinyCNN()

  def init(key, input_shape):
    return dict(module.init(key, jnp.zeros(input_shape), train=False))

  def apply(variables, images, train):
    if train:
      logits, updates = module.apply(variables, images, train=True,
                                     mutable=["batch_stats"])
      return logits, updates["batch_stats"]
    logits = module.apply(variables, images, train=False)
    return logits, variables["batch_stats"]

  return Model(init, apply)


MODEL = make_model()


def _setup(n=37, seed=0):
  """Variables with non-trivial batch statistics, and a uint8 test set.

  Values come from numpy over `eval_shape(init)`: flax's eager init compiles a
  threefry kernel per leaf, which costs seconds on XLA:CPU.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda k: MODEL.init(k, (1, 8, 8, 3)),
                          jax.random.key(seed))
  variables = jax.tree.map(
      lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
      shapes)
  bs = variables["batch_stats"]["BatchNorm_0"]
  bs["var"] = jnp.exp(bs["var"])
  images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  labels = rng.integers(0, 5, (n,)).astype(np.int32)
  return variables, images, labels


def _reference_accuracies(key, variables, images, labels, sigma, num_draws):
  """A plain Python loop: whole test set in one go per draw."""
  x = jnp.asarray(images, jnp.float32) / 255.0
  out = []
  for i in range(num_draws):
    params = certify.perturb_params(jax.random.fold_in(key, i),
                                    variables["params"], sigma)
    logits, _ = MODEL.apply({**variables, "params": params}, x, train=False)
    pred = np.asarray(jnp.argmax(logits, axis=-1))
    out.append(np.sum(pred == labels) / len(labels))
  return np.array(out)


# ----------------------------------------------------------------------------
# The bound against an independent computation.
# ----------------------------------------------------------------------------


def _reference_bound(acc, q, sigma, eta, c):
  """Straightforward loop over k with scipy's binom.cdf."""
  n = len(acc)
  q_bar = stats.norm.cdf(stats.norm.ppf(q) + eta / sigma)
  lo = max(1, math.ceil(round(q_bar * n, 7)))
  for k in range(lo, n + 1):
    if stats.binom.cdf(k - 1, n, q_bar) > c:
      return sorted(acc)[k - 1]
  return None


def test_bound_matches_independent_loop():
  rng = np.random.default_rng(1)
  cases = [
      (1, 0.5, 0.25, 0.0, 0.4),  # N = 1, certifies: 1 - 0.5 > 0.4.
      (1, 0.5, 0.25, 0.0, 0.6),  # N = 1, abstains.
      (1000, 0.9, 0.25, 0.0, 0.99),  # η = 0, q̄N = 900.
      (1000, 0.9, 0.25, 0.3, 0.99),  # Certifies at k = N.
      (1000, 0.9, 0.25, 0.4, 0.99),  # Abstains.
      (50, 0.999, 0.1, 1.0, 0.9),  # q̄ ≈ 1.
      (2000, 0.9, 0.25, 2.0, 0.99),  # q̄ rounds to 1.0 in float64.
      (10, 0.1, 1.0, 0.0, 0.5),  # Lower bound ⌈q̄N⌉ binds.
  ]
  for _ in range(250):
    cases.append((int(rng.integers(1, 3000)), float(rng.uniform(0.01, 0.99)),
                  float(rng.uniform(0.05, 2.0)),
                  float(rng.choice([0.0, rng.uniform(0, 1.5)])),
                  float(rng.uniform(0.5, 0.999))))
  abstained = certified = 0
  for n, q, sigma, eta, c in cases:
    acc = rng.uniform(0, 1, n)
    if rng.random() < 0.3:
      acc = np.round(acc, 1)  # Ties.
    got = certify.certified_learnability(acc, q=q, sigma=sigma, eta=eta,
                                         confidence=c)
    want = _reference_bound(acc, q, sigma, eta, c)
    assert got == want, (n, q, sigma, eta, c)
    abstained += got is None
    certified += got is not None
  assert abstained > 10 and certified > 10


def test_rank_is_the_first_index_with_coverage():
  # Pins the index exactly: coverage BinomCDF(k - 1; N, q̄) > c at k, and
  # not at k - 1 unless k - 1 is below ⌈q̄N⌉ (an off-by-one fails here).
  rng = np.random.default_rng(5)
  checked = 0
  for _ in range(400):
    n = int(rng.integers(1, 4000))
    q, sigma = float(rng.uniform(0.05, 0.99)), float(rng.uniform(0.05, 2.0))
    eta, c = float(rng.uniform(0, 1.0)), float(rng.uniform(0.5, 0.999))
    k = certify.certified_rank(n, q=q, sigma=sigma, eta=eta, confidence=c)
    q_bar = stats.norm.cdf(stats.norm.ppf(q) + eta / sigma)
    if k is None:
      assert stats.binom.cdf(n - 1, n, q_bar) <= c + 1e-12
      continue
    checked += 1
    assert stats.binom.cdf(k - 1, n, q_bar) > c
    if k - 1 >= math.ceil(round(q_bar * n, 7)):
      assert stats.binom.cdf(k - 2, n, q_bar) <= c
  assert checked > 100


def test_ceil_tolerance_at_integer_q_bar_n():
  # q = 0.9, η = 0: q̄N = 900.0000000000001 in float64; k must start at 900.
  n, c = 1000, 0.01
  assert certify.certified_rank(n, q=0.9, sigma=0.25, eta=0.0,
                                confidence=c) == 900


def test_curve_modes_and_json():
  acc = np.random.default_rng(2).beta(2, 5, 1000)
  per = certify.learnability_curve(acc, q=0.9, sigma=0.25)
  union = certify.learnability_curve(acc, q=0.9, sigma=0.25,
                                     simultaneous="union")
  dkw = certify.learnability_curve(acc, q=0.9, sigma=0.25, simultaneous="dkw")
  assert per.etas == certify.DEFAULT_ETAS and per.mode == "per_eta"
  for e, v in zip(per.etas, per.values):
    assert v == certify.certified_learnability(acc, q=0.9, sigma=0.25, eta=e)
  assert per.largest_certified_eta == 0.3  # min_draws(0.3) = 702 <= 1000.
  for curve in (union, dkw):
    for v_sim, v_per in zip(curve.values, per.values):
      if v_sim is not None:  # Simultaneous bounds are never tighter.
        assert v_per is not None and v_sim >= v_per
  n_union = len(certify.DEFAULT_ETAS)
  assert union.values[0] == certify.certified_learnability(
      acc, q=0.9, sigma=0.25, eta=0.001, confidence=1 - 0.01 / n_union)
  eps = math.sqrt(math.log(100) / 2000)
  q_bar = certify.quantile_level(q=0.9, sigma=0.25, eta=0.001)
  assert dkw.ranks[0] == math.ceil((q_bar + eps) * 1000)
  blob = json.loads(json.dumps(dkw.to_json()))
  assert blob["curve"][0] == [0.001, dkw.values[0]]
  assert blob["curve"][-1] == [2.0, None]
  assert blob["mode"] == "dkw" and blob["n"] == 1000


# ----------------------------------------------------------------------------
# Statistical coverage (2,000 repetitions, vectorised).
# ----------------------------------------------------------------------------

REPS = 2000


def _min_coverage(c):
  return stats.binom.ppf(0.001, REPS, c) / REPS


def _beta_sampler(rng, shape):
  return rng.beta(2.0, 5.0, shape)


def _beta_quantile(p):
  return stats.beta.ppf(p, 2.0, 5.0)


def _discrete_sampler(rng, shape):  # Many ties.
  return rng.binomial(40, 0.3, shape) / 40.0


def _discrete_quantile(p):
  return stats.binom.ppf(p, 40, 0.3) / 40.0


DISTS = [(_beta_sampler, _beta_quantile),
         (_discrete_sampler, _discrete_quantile)]


@pytest.mark.parametrize("dist", range(len(DISTS)))
@pytest.mark.parametrize("q,sigma,eta,c", [
    (0.9, 0.25, 0.0, 0.99), (0.5, 0.25, 0.0, 0.9), (0.9, 0.25, 0.2, 0.99),
    (0.7, 1.0, 0.5, 0.9)])
def test_per_eta_coverage(dist, q, sigma, eta, c):
  sampler, quantile = DISTS[dist]
  n = 500
  rng = np.random.default_rng(3)
  acc = np.sort(sampler(rng, (REPS, n)), axis=1)
  k = certify.certified_rank(n, q=q, sigma=sigma, eta=eta, confidence=c)
  assert k is not None
  value = acc[:, k - 1]
  assert value[0] == certify.certified_learnability(
      acc[0], q=q, sigma=sigma, eta=eta, confidence=c)
  true_q = quantile(certify.quantile_level(q=q, sigma=sigma, eta=eta))
  coverage = np.mean(value >= true_q - 1e-12)
  assert coverage >= _min_coverage(c), coverage


@pytest.mark.parametrize("mode", ["union", "dkw"])
@pytest.mark.parametrize("dist", range(len(DISTS)))
def test_simultaneous_coverage(mode, dist):
  sampler, quantile = DISTS[dist]
  n, q, sigma, c = 1000, 0.6, 1.0, 0.9
  rng = np.random.default_rng(4)
  acc = np.sort(sampler(rng, (REPS, n)), axis=1)
  curve = certify.learnability_curve(acc[0], q=q, sigma=sigma, confidence=c,
                                     simultaneous=mode)
  holds = np.ones(REPS, bool)
  used = 0
  for eta, k, v in zip(curve.etas, curve.ranks, curve.values):
    if k is None:
      continue  # Abstention: no claim.
    used += 1
    assert v == acc[0, k - 1]
    true_q = quantile(certify.quantile_level(q=q, sigma=sigma, eta=eta))
    holds &= acc[:, k - 1] >= true_q - 1e-12
  assert used >= 8
  assert np.mean(holds) >= _min_coverage(c), np.mean(holds)


# ----------------------------------------------------------------------------
# min_draws.
# ----------------------------------------------------------------------------


def test_min_draws_matches_issue():
  want = {0.3: 702, 0.4: 2326, 0.5: 8920, 0.6: 39729, 0.75: 496259}
  for eta, n in want.items():
    assert certify.min_draws(q=0.9, sigma=0.25, eta=eta) == n
  for eta in (0.3, 0.4, 0.5):  # The definition, through the bound itself.
    n = want[eta]
    assert certify.certified_rank(n, q=0.9, sigma=0.25, eta=eta) == n
    assert certify.certified_rank(n - 1, q=0.9, sigma=0.25, eta=eta) is None
  assert certify.min_draws(q=0.5, sigma=0.25, eta=0.0, confidence=0.4) == 1


# ----------------------------------------------------------------------------
# Monte-Carlo sampling on a tiny model.
# ----------------------------------------------------------------------------


def test_accuracies_match_loop_and_chunking():
  variables, images, labels = _setup()
  key = jax.random.key(7)
  want = _reference_accuracies(key, variables, images, labels, 0.1, 7)
  assert len(set(want.tolist())) > 1  # The draws actually differ.
  for chunk in (1, 3, 8):
    got = certify.sample_accuracies(
        key, MODEL.apply, variables, images, labels, sigma=0.1, num_draws=7,
        chunk_size=chunk, batch_size=16, chunks_per_block=2)
    assert got.shape == (7,)
    np.testing.assert_array_equal(got, want)
  got = certify.sample_accuracies(
      key, MODEL.apply, variables, images, labels, sigma=0.1, num_draws=7,
      chunk_size=3, batch_size=16, precision="highest")
  np.testing.assert_array_equal(got, want)
  # Draw i depends only on (key, i).
  head = certify.sample_accuracies(key, MODEL.apply, variables, images,
                                   labels, sigma=0.1, num_draws=3,
                                   batch_size=16)
  np.testing.assert_array_equal(head, want[:3])
  # Nor on the test batch size (the default is the backend's).
  for batch in (5, None):
    got = certify.sample_accuracies(
        key, MODEL.apply, variables, images, labels, sigma=0.1, num_draws=7,
        batch_size=batch)
    np.testing.assert_array_equal(got, want)


def test_default_sizes_per_backend():
  assert certify.default_batch_size("cpu") == 50
  assert certify.default_batch_size("gpu") == 1000
  assert certify.default_chunk_size("cpu") == 1
  assert certify.default_chunk_size("tpu") == 16


def test_segments_concatenate_to_one_run():
  variables, images, labels = _setup(n=20)
  key = jax.random.key(3)
  kwargs = dict(sigma=0.2, batch_size=8, chunk_size=2, chunks_per_block=2)
  whole = certify.sample_accuracies(key, MODEL.apply, variables, images,
                                    labels, num_draws=9, **kwargs)
  head = certify.sample_accuracies(key, MODEL.apply, variables, images,
                                   labels, num_draws=4, **kwargs)
  tail = certify.sample_accuracies(key, MODEL.apply, variables, images,
                                   labels, num_draws=5, first_draw=4, **kwargs)
  assert len(set(whole.tolist())) > 1
  np.testing.assert_array_equal(np.concatenate([head, tail]), whole)


def test_compiles_once_across_blocks():
  variables, images, labels = _setup(n=20)
  traces = []

  def counting_apply(v, x, train):
    traces.append(1)
    return MODEL.apply(v, x, train=train)

  kwargs = dict(chunk_size=1, batch_size=8, chunks_per_block=2)
  certify.sample_accuracies(jax.random.key(0), counting_apply, variables,
                            images, labels, sigma=0.1, num_draws=10, **kwargs)
  # One trace checks that the model fits the images and labels
  # (jax.eval_shape, cached per model and shapes); the compiled blocks add
  # one or two, not one per block.
  first = len(traces)
  assert 2 <= first <= 3  # Five blocks.
  certify.sample_accuracies(jax.random.key(1), counting_apply, variables,
                            images, labels, sigma=0.3, num_draws=6, **kwargs)
  assert len(traces) == first  # Same model and shapes: nothing retraced.


def test_batch_stats_untouched():
  """Logits depend only on batch_stats: every draw must score the same."""
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (30, 4, 4, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, (30,)).astype(np.int32)
  variables = {"params": {"w": jnp.zeros((3,))},
               "batch_stats": {"b": jnp.array([0.0, 1.0, 0.5])}}

  def apply_fn(v, x, train):
    del train
    logits = jnp.broadcast_to(v["batch_stats"]["b"], (x.shape[0], 3))
    return logits + 0.0 * jnp.sum(v["params"]["w"]), v["batch_stats"]

  acc = certify.sample_accuracies(jax.random.key(0), apply_fn, variables,
                                  images, labels, sigma=10.0, num_draws=5,
                                  batch_size=7)
  np.testing.assert_array_equal(acc, np.full(5, np.mean(labels == 1)))


def test_noise_scale_and_determinism():
  params = {"a": jnp.zeros((40, 50)), "b": {"c": jnp.zeros((3000,))},
            "d": jnp.zeros((7,), jnp.bfloat16)}
  sigma = 0.37
  noisy = certify.perturb_params(jax.random.key(11), params, sigma)
  assert noisy["d"].dtype == jnp.bfloat16
  xi = np.concatenate([np.ravel(noisy["a"]), np.ravel(noisy["b"]["c"])])
  assert stats.kstest(xi / sigma, "norm").pvalue > 0.001
  # Leaves get independent noise; same key -> same noise.
  assert abs(np.corrcoef(np.ravel(noisy["a"]),
                         np.ravel(noisy["b"]["c"])[:2000])[0, 1]) < 0.1
  again = certify.perturb_params(jax.random.key(11), params, sigma)
  np.testing.assert_array_equal(noisy["a"], again["a"])
  other = certify.perturb_params(jax.random.key(12), params, sigma)
  assert not np.array_equal(noisy["a"], other["a"])


def test_small_cnn_smooths_all_24170_parameters_biases_included():
  """As the authors' certify.py: every trainable parameter of the small
  CNN is perturbed, the convolution biases too (24,170 at 16/32/64)."""
  model = models.make_model("small_cnn", widths=(16, 32, 64))
  shapes = jax.eval_shape(lambda k: model.init(k, (28, 28, 1)),
                          jax.random.key(0))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        shapes["params"])
  noisy = certify.perturb_params(jax.random.key(3), params, 0.25)
  moved = jax.tree.map(lambda a: int(np.count_nonzero(a)), noisy)
  assert sum(jax.tree.leaves(moved)) == 24_170
  assert len(jax.tree.leaves(moved)) == 14  # 3 x (kernel, bias, BN x 2) + 2
  for i, width in enumerate((16, 32, 64)):
    assert moved[f"Conv_{i}"]["bias"] == width


# ----------------------------------------------------------------------------
# Any classifier: plain apply functions, linen and NNX modules, preprocess.
# ----------------------------------------------------------------------------


def _jaxue_accuracies(key, variables, images, labels, **kw):
  return certify.sample_accuracies(key, MODEL.apply, variables, images,
                                   labels, sigma=0.1, num_draws=5, **kw)


def test_linen_module_and_plain_apply_match_the_jaxue_model():
  variables, images, labels = _setup(n=23)
  key = jax.random.key(2)
  want = _jaxue_accuracies(key, variables, images, labels)
  assert len(set(want.tolist())) > 1
  kw = dict(sigma=0.1, num_draws=5)
  # A linen module: apply(variables, x, train=False), batch_stats kept.
  got = certify.sample_accuracies(key, TinyCNN(), variables, images, labels,
                                  **kw)
  np.testing.assert_array_equal(got, want)
  # A plain apply(params, x) -> logits over flax's variables dict: only
  # variables["params"] is smoothed.
  def plain(v, x):
    return TinyCNN().apply(v, x, train=False)

  got = certify.sample_accuracies(key, plain, variables, images, labels,
                                  **kw)
  np.testing.assert_array_equal(got, want)
  # jaxue's own Model (the functional adapter) is accepted whole.
  wrapped = models.functional(TinyCNN(), "tiny")
  got = certify.sample_accuracies(key, wrapped, variables, images, labels,
                                  **kw)
  np.testing.assert_array_equal(got, want)


def test_plain_apply_on_a_bare_parameter_tree():
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.standard_normal((48, 4)), jnp.float32),
            "b": jnp.zeros((4,))}
  images = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, (30,)).astype(np.int32)

  def apply(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None]

  def jaxue_style(v, x, train):
    del train
    return apply(v["params"], x), {}

  key = jax.random.key(5)
  kw = dict(sigma=0.5, num_draws=6)
  got = certify.sample_accuracies(key, apply, params, images, labels, **kw)
  want = certify.sample_accuracies(key, jaxue_style, {"params": params},
                                   images, labels, **kw)
  np.testing.assert_array_equal(got, want)
  assert len(set(got.tolist())) > 1


class _NNXCNN(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.dense = nnx.Linear(4, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.dense(x.mean(axis=(1, 2)))


def test_nnx_module_matches_its_jaxue_style_form():
  _, images, labels = _setup(n=23)
  module = _NNXCNN(nnx.Rngs(0))
  rng = np.random.default_rng(1)
  module.bn.mean[...] = jnp.asarray(rng.standard_normal(4), jnp.float32)
  module.bn.var[...] = jnp.asarray(np.exp(rng.standard_normal(4)),
                                    jnp.float32)
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def jaxue_style(v, x, train):
    del train
    model = nnx.merge(graphdef, v["params"], v["rest"])
    model.eval()
    return model(x), v["rest"]

  key = jax.random.key(4)
  kw = dict(sigma=1.0, num_draws=5)
  want = certify.sample_accuracies(key, jaxue_style,
                                   {"params": params, "rest": rest}, images,
                                   labels, **kw)
  assert len(set(want.tolist())) > 1
  got = certify.sample_accuracies(key, module, images, labels, **kw)
  np.testing.assert_array_equal(got, want)
  got = certify.sample_accuracies(key, module, None, images, labels, **kw)
  np.testing.assert_array_equal(got, want)
  # The caller's module is untouched (still in train mode).
  assert not module.bn.use_running_average
  with pytest.raises(ValueError, match="holds its own parameters"):
    certify.sample_accuracies(key, module, {"params": params}, images,
                              labels, **kw)


def test_preprocess_takes_float_images():
  variables, images, labels = _setup(n=23)
  key = jax.random.key(6)
  want = _jaxue_accuracies(key, variables, images, labels)
  unit = images.astype(np.float32) / 255
  got = _jaxue_accuracies(key, variables, unit, labels,
                          preprocess=lambda x: x)
  np.testing.assert_array_equal(got, want)
  # Normalised inputs, de-normalised inside jit.
  mean, std = 0.5, 0.25
  got = _jaxue_accuracies(key, variables, (unit - mean) / std, labels,
                          preprocess=lambda x: x * std + mean)
  np.testing.assert_allclose(got, want, atol=2 / len(labels))
  with pytest.raises(ValueError, match="uint8"):
    _jaxue_accuracies(key, variables, unit, labels)
  with pytest.raises(ValueError, match="labels is missing"):
    certify.sample_accuracies(key, MODEL.apply, images, labels, sigma=0.1,
                              num_draws=2)


# ----------------------------------------------------------------------------
# 1 vs 8 fake CPU devices (subprocess: the device count is fixed at import).
# ----------------------------------------------------------------------------

_MESH_SCRIPT = textwrap.dedent("""
    import jax
    import numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 8, jax.devices()
    sys_path_test = {tests!r}
    import sys
    sys.path.insert(0, sys_path_test)
    import test_certify as t
    from jaxue import certify
    variables, images, labels = t._setup(n=45)
    key = jax.random.key(3)
    for num_draws in (16, 13):
      kw = dict(sigma=0.1, num_draws=num_draws, batch_size=10)
      one = certify.sample_accuracies(key, t.MODEL.apply, variables, images,
                                      labels, **kw)
      ref = t._reference_accuracies(key, variables, images, labels, 0.1,
                                    num_draws)
      np.testing.assert_array_equal(one, ref)
      mesh8 = jax.make_mesh((8,), ("samples",))
      got = certify.sample_accuracies(key, t.MODEL.apply, variables, images,
                                      labels, mesh=mesh8, chunk_size=2, **kw)
      np.testing.assert_array_equal(got, one)
      mesh42 = jax.make_mesh((4, 2), ("samples", "data"))
      got = certify.sample_accuracies(key, t.MODEL.apply, variables, images,
                                      labels, mesh=mesh42, data_axis="data",
                                      chunks_per_block=1, **kw)
      np.testing.assert_array_equal(got, one)
    print("MESH_OK")
""")


def test_identical_across_fake_devices(run_on_fake_devices):
  script = _MESH_SCRIPT.format(tests=os.path.join(REPO_ROOT, "tests"))
  proc = run_on_fake_devices(script, timeout=240)
  assert proc.returncode == 0 and "MESH_OK" in proc.stdout, proc.stderr[-4000:]


# ----------------------------------------------------------------------------
# Clear errors.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(q=0.0), "q must be in"), (dict(q=1.0), "q must be in"),
    (dict(sigma=0.0), "sigma"), (dict(sigma=-1.0), "sigma"),
    (dict(eta=-0.1), "eta"), (dict(confidence=1.0), "confidence"),
])
def test_bound_errors(kwargs, match):
  args = dict(q=0.9, sigma=0.25, eta=0.1, confidence=0.99) | kwargs
  with pytest.raises(ValueError, match=match):
    certify.certified_learnability(np.full(10, 0.5), **args)
  with pytest.raises(ValueError, match=match):
    certify.min_draws(**args)
  with pytest.raises(ValueError, match=match):
    certify.learnability_curve(
        np.full(10, 0.5), etas=(args.pop("eta"),), **args)


def test_accuracy_and_mode_errors():
  with pytest.raises(ValueError, match="empty"):
    certify.certified_learnability(np.zeros(0), q=0.9, sigma=0.25, eta=0.1)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    certify.certified_learnability([0.5, 1.5], q=0.9, sigma=0.25, eta=0.1)
  with pytest.raises(ValueError, match="NaN"):
    certify.certified_learnability([0.5, np.nan], q=0.9, sigma=0.25, eta=0.1)
  with pytest.raises(ValueError, match="1-D"):
    certify.certified_learnability(np.zeros((2, 2)), q=0.9, sigma=0.25,
                                   eta=0.1)
  with pytest.raises(ValueError, match="N"):
    certify.certified_rank(0, q=0.9, sigma=0.25, eta=0.1)
  with pytest.raises(ValueError, match="simultaneous"):
    certify.learnability_curve([0.5], q=0.9, sigma=0.25, simultaneous="bonf")
  with pytest.raises(ValueError, match="Massart"):
    certify.learnability_curve([0.5], q=0.9, sigma=0.25, confidence=0.3,
                               simultaneous="dkw")
  # 1 - q̄ is subnormal here: log(1 - c)/log q̄ overflows, a clear error.
  with pytest.raises(ValueError, match="not a finite float"):
    certify.min_draws(q=0.9, sigma=0.25, eta=9.06)
  with pytest.raises(ValueError, match="not a finite float"):
    certify.min_draws(q=0.9, sigma=0.25, eta=20.0)


def test_sampling_errors():
  variables, images, labels = _setup(n=10)
  key = jax.random.key(0)

  def run(images=images, labels=labels, **kw):
    args = dict(sigma=0.1, num_draws=2) | kw
    return certify.sample_accuracies(key, MODEL.apply, variables, images,
                                     labels, **args)

  with pytest.raises(ValueError, match="lengths differ"):
    run(labels=labels[:9])
  with pytest.raises(ValueError, match="uint8"):
    run(images=images.astype(np.float32) / 255)
  with pytest.raises(ValueError, match="4-D"):
    run(images=images[0])
  with pytest.raises(ValueError, match="labels must be integers"):
    run(labels=labels.astype(np.float32))
  with pytest.raises(ValueError, match="sigma"):
    run(sigma=0.0)
  with pytest.raises(ValueError, match="num_draws"):
    run(num_draws=0)
  with pytest.raises(ValueError, match="first_draw"):
    run(first_draw=-1)
  with pytest.raises(ValueError, match="chunk_size"):
    run(chunk_size=0)
  with pytest.raises(ValueError, match="data_axis needs a mesh"):
    run(data_axis="data")


# ----------------------------------------------------------------------------
# Expected learnability: mean bounds, the Lipschitz step, optional stopping.
# ----------------------------------------------------------------------------

# Accuracy laws on [0, 1] with their means: continuous, discrete with ties,
# two-point (the hardest law for a mean bound), and a narrow one like real
# smoothed accuracies (std ~0.01).
MEAN_LAWS = {
    "beta": (lambda rng, shape: rng.beta(2.0, 5.0, shape), 2.0 / 7.0),
    "binomial": (lambda rng, shape: rng.binomial(40, 0.3, shape) / 40.0, 0.3),
    "two_point": (lambda rng, shape: (rng.random(shape) < 0.15) * 1.0, 0.15),
    "narrow": (lambda rng, shape: rng.beta(400.0, 1600.0, shape), 0.2),
}


def _coverage_floor(c, reps):
  """Coverage below this is a failure at the 0.1% level for a valid bound."""
  return stats.binom.ppf(0.001, reps, c) / reps


@pytest.mark.parametrize("law", sorted(MEAN_LAWS))
@pytest.mark.parametrize("method,anytime", [("betting", False),
                                            ("betting", True),
                                            ("bernstein", False)])
def test_mean_upper_bound_coverage(law, method, anytime):
  sampler, mean = MEAN_LAWS[law]
  reps, n, c = 2000, 300, 0.9
  x = sampler(np.random.default_rng(5), (reps, n))
  upper = certify._mean_upper(x, c, method, anytime)  # Vectorised form.
  assert upper[0] == certify.mean_upper_bound(
      x[0], confidence=c, method=method, anytime=anytime)
  coverage = np.mean(upper >= mean)
  assert coverage >= _coverage_floor(c, reps), coverage
  # Not vacuous: within a few standard errors (plus the range term).
  assert np.median(upper - mean) < 0.1, np.median(upper - mean)


def test_betting_is_tighter_than_bernstein_on_narrow_laws():
  x = MEAN_LAWS["narrow"][0](np.random.default_rng(6), (1000,))
  betting = certify.mean_upper_bound(x, confidence=0.99)
  bernstein = certify.mean_upper_bound(x, confidence=0.99,
                                       method="bernstein")
  assert x.mean() < betting < bernstein


def test_lipschitz_step_on_smoothed_linear_classifiers():
  # acc(θ) = mean_j 1[y_j <θ, x_j> > 0] has the closed-form smoothed accuracy
  # g(θ) = mean_j Φ(y_j <θ, x_j> / (σ ‖x_j‖)). With U = g(θ̂) exactly, the
  # bound Φ(Φ⁻¹(U) + η/σ) must cover g on the whole η-ball: along random
  # directions and the gradient (the steepest one), and it is attained in
  # 1-D for a single point.
  rng = np.random.default_rng(7)
  d, m, sigma = 20, 50, 0.5
  x = rng.normal(size=(m, d))
  y = np.sign(rng.normal(size=m))
  theta = rng.normal(size=d) * 0.1

  def g(t):
    return np.mean(stats.norm.cdf(y * (x @ t) /
                                  (sigma * np.linalg.norm(x, axis=1))))

  base = g(theta)
  grad = np.mean((stats.norm.pdf(y * (x @ theta) / (
      sigma * np.linalg.norm(x, axis=1))) * y / (
          sigma * np.linalg.norm(x, axis=1)))[:, None] * x, axis=0)
  directions = [grad / np.linalg.norm(grad)] + [
      v / np.linalg.norm(v) for v in rng.normal(size=(200, d))]
  for eta in (0.05, 0.2, 0.5, 1.0):
    bound = certify.expected_level(base, sigma=sigma, eta=eta)
    worst = max(g(theta + eta * v) for v in directions)
    assert worst <= bound + 1e-12, (eta, worst, bound)
  tight = certify.expected_level(stats.norm.cdf(0.3), sigma=1.0, eta=0.4)
  assert tight == pytest.approx(stats.norm.cdf(0.7), abs=1e-15)


def test_expected_curve_coverage_on_a_step_function():
  # f(θ) = 1[θ_1 > 0]: draws are Bernoulli(g(θ̂)) with g(θ̂) = Φ(θ̂_1/σ) and
  # the worst θ′ in the η-ball has g = Φ((θ̂_1 + η)/σ) = the bound at U = g.
  reps, n, c, sigma, theta1 = 2000, 400, 0.9, 0.25, -0.2
  g_hat = stats.norm.cdf(theta1 / sigma)
  rng = np.random.default_rng(8)
  draws = (theta1 + sigma * rng.normal(size=(reps, n)) > 0) * 1.0
  etas = np.array([0.0, 0.1, 0.3, 0.6])
  upper = certify._mean_upper(draws, c, "betting", False)
  bounds = certify._lipschitz_level(upper[:, None], sigma, etas[None, :])
  worst = stats.norm.cdf((theta1 + etas) / sigma)
  # One confidence for the whole curve: every η at once.
  holds = np.all(bounds >= worst[None, :] - 1e-12, axis=1)
  assert np.mean(holds) >= _coverage_floor(c, reps), np.mean(holds)
  curve = certify.expected_learnability_curve(draws[0], sigma=sigma,
                                              etas=etas, confidence=c)
  np.testing.assert_allclose(curve.values, bounds[0], rtol=0, atol=1e-15)
  assert curve.upper_mean == upper[0] and curve.n == n
  assert curve.largest_eta_at_most(0.0) is None
  assert curve.largest_eta_at_most(1.0) == 0.6
  assert json.loads(json.dumps(curve.to_json()))["method"] == "betting"


def test_look_schedule_and_spending():
  assert certify.look_schedule(1000, 100_000) == (
      1000, 2000, 4000, 8000, 16000, 32000, 64000, 100_000)
  assert certify.look_schedule(16, 16) == (16,)
  assert certify.look_schedule(3, 10, growth=1.5) == (3, 5, 7, 10)
  assert certify.look_confidence(0.99, 8) == pytest.approx(1 - 0.01 / 8)
  for bad in [dict(first=0, last=4), dict(first=5, last=4),
              dict(first=1, last=4, growth=1.0)]:
    with pytest.raises(ValueError):
      certify.look_schedule(**bad)


@pytest.mark.parametrize("law", ["beta", "binomial"])
def test_coverage_under_optional_stopping(law):
  """Stop at the first look whose certificate at the target η meets a
  target value set just above the truth (the stopping rule that most
  favours lucky low draws); the certificate at the stopping look must hold
  with probability ≥ c, for both kinds. (Without the spending, the
  quantile kind's coverage at this seed on the beta law is 0.775 < 0.8.)"""
  sampler, mean = MEAN_LAWS[law]
  quantile = {"beta": lambda p: stats.beta.ppf(p, 2.0, 5.0),
              "binomial": lambda p: stats.binom.ppf(p, 40, 0.3) / 40.0}[law]
  reps, c, q, sigma, eta = 1000, 0.8, 0.5, 1.0, 0.3
  looks = certify.look_schedule(100, 1600)
  c_look = certify.look_confidence(c, len(looks))
  x = sampler(np.random.default_rng(9), (reps, looks[-1]))
  true_q = quantile(certify.quantile_level(q=q, sigma=sigma, eta=eta))
  true_expected = certify.expected_level(mean, sigma=sigma, eta=eta)

  # Quantile kind: per-look confidence from α-spending.
  target = true_q + 0.02
  value = np.full(reps, np.nan)
  stopped = np.zeros(reps, bool)
  for n in looks:
    prefix = np.sort(x[:, :n], axis=1)
    k = certify.certified_rank(n, q=q, sigma=sigma, eta=eta,
                               confidence=c_look)
    if k is not None:
      v = prefix[:, k - 1]
      fresh = ~stopped & ((v <= target) | (n == looks[-1]))
      value[fresh] = v[fresh]
      stopped |= fresh
  assert stopped.all()
  coverage = np.mean(value >= true_q - 1e-12)
  assert coverage >= _coverage_floor(c, reps), coverage

  # Expected kind: the anytime betting confidence sequence, no spending.
  level = true_expected + 0.02
  bound = np.full(reps, np.nan)
  stopped = np.zeros(reps, bool)
  for n in looks:
    live = ~stopped
    upper = certify._mean_upper(x[live, :n], c, "betting", True)
    b = certify._lipschitz_level(upper, sigma, eta)
    stop = (b <= level) | (n == looks[-1])
    idx = np.flatnonzero(live)[stop]
    bound[idx] = b[stop]
    stopped[idx] = True
  coverage = np.mean(bound >= true_expected - 1e-12)
  assert coverage >= _coverage_floor(c, reps), coverage
  assert np.mean(bound <= level) > 0.2  # The rule does stop early.

  # The library's one-look function agrees with the vectorised forms.
  look = certify.check_target(x[0, :looks[1]], eta=eta, q=q, sigma=sigma,
                              confidence=c, num_looks=len(looks),
                              bound="expected", target_value=level)
  k = certify.certified_rank(looks[1], q=q, sigma=sigma, eta=eta,
                             confidence=c_look)
  assert look.quantile == np.sort(x[0, :looks[1]])[k - 1]
  assert look.expected == pytest.approx(float(certify._lipschitz_level(
      certify._mean_upper(x[0, :looks[1]], c, "betting", True), sigma, eta)),
                                        abs=0)
  assert look.certified == (look.expected <= level)


@pytest.mark.parametrize("kwargs,match", [
    (dict(confidence=1.0), "confidence"),
    (dict(method="hoeffding"), "method"),
    (dict(method="bernstein", anytime=True), "fixed N"),
])
def test_mean_bound_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    certify.mean_upper_bound([0.2, 0.3, 0.4], **kwargs)
  with pytest.raises(ValueError, match="lie in"):
    certify.mean_upper_bound([0.2, 1.3])
  with pytest.raises(ValueError, match="bound must be"):
    certify.check_target([0.2], eta=0.1, q=0.9, sigma=0.1, confidence=0.9,
                         num_looks=1, bound="mean")
