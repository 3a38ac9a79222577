"""Tests of benchmarks/benchmark.py: the timed fast paths and the PyTorch
reference compute the same numbers as the plain ones (no timing asserts)."""

import importlib
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models
from jaxue import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _import_script(name):
  """Imports a script of benchmarks/ as it imports its siblings when run by
  path: with that folder on sys.path."""
  if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
  return importlib.import_module(name)


benchmark = _import_script("benchmark")

WIDTHS = (4, 8, 8)
SHAPE = (28, 28, 1)


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *SHAPE), np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return images, labels


def _state(conv_impl):
  model = models.make_model("small_cnn", widths=WIDTHS, conv_impl=conv_impl)
  return train.create_train_state(jax.random.key(0), model, SHAPE,
                                  train.make_optimizer(0.1))


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize(
    "impl", ["hybrid", pytest.param("im2col", marks=pytest.mark.slow)])
def test_conv_impls_give_the_lax_sgd_update(impl):
  images, labels = _batch(32)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  key = jax.random.key(1)
  # Two steps inside train_epoch's lax.scan, the path the benchmark times.
  ref, ref_metrics = train.train_epoch(_state("lax"), x, y, key,
                                       batch_size=16)
  fast, fast_metrics = train.train_epoch(_state(impl), x, y, key,
                                         batch_size=16)
  _assert_trees_close(fast.params, ref.params)
  _assert_trees_close(fast.batch_stats, ref.batch_stats)
  _assert_trees_close(fast_metrics["loss"], ref_metrics["loss"])


def _random_variables(name="small_cnn"):
  """Model variables with non-trivial batch-norm statistics, affines and
  convolution biases."""
  model = models.make_model(name, widths=WIDTHS)
  variables = model.init(jax.random.key(3), SHAPE)
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  leaves = [x + 0.1 * jnp.abs(jax.random.normal(k, x.shape))
            for x, k in zip(leaves, keys)]
  return model, jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("name", ["small_cnn", "small_cnn_nobias"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_torch_reference_model_matches_jaxue_logits(train_mode, name):
  torch = pytest.importorskip("torch")
  model, variables = _random_variables(name)
  bias = name == "small_cnn"
  assert benchmark.has_conv_bias(variables) == bias
  reference = benchmark.torch_small_cnn(WIDTHS, bias=bias)
  # Like for like: the same parameters, biases included or not.
  assert sum(p.numel() for p in reference.parameters()) == (
      models.count_params(variables))
  with pytest.raises(ValueError, match="biases"):
    benchmark.load_jax_weights(
        benchmark.torch_small_cnn(WIDTHS, bias=not bias), variables)
  benchmark.load_jax_weights(reference, variables)
  images, _ = _batch(6)
  expected, _ = model.apply(variables, train.as_float(jnp.asarray(images)),
                            train_mode)
  reference.train(train_mode)
  with torch.no_grad():
    logits = reference(benchmark.nchw(images)).numpy()
  np.testing.assert_allclose(logits, np.asarray(expected), rtol=1e-4,
                             atol=1e-5)


def test_torch_reference_sgd_step_matches_jaxue():
  torch = pytest.importorskip("torch")
  _, variables = _random_variables()
  state = _state("auto").replace(params=variables["params"],
                                 batch_stats=variables["batch_stats"])
  ref = benchmark.TorchReference(WIDTHS, variables, threads=1)
  assert ref.model[0].bias is not None  # The authors' model: conv biases.
  images, labels = _batch(16)
  new_state, _ = jax.jit(train.train_step)(
      state, (jnp.asarray(images), jnp.asarray(labels)), jax.random.key(0))
  ref.train_steps(benchmark.nchw(images),
                  torch.from_numpy(labels.astype(np.int64)), 16, 1)
  # The jaxue update, copied into a second torch model, equals torch's own.
  expected = benchmark.torch_small_cnn(WIDTHS)
  benchmark.load_jax_weights(expected, new_state.variables)
  got = dict(ref.model.named_parameters())
  for name, param in expected.named_parameters():
    np.testing.assert_allclose(got[name].detach().numpy(),
                               param.detach().numpy(), rtol=1e-4, atol=1e-5,
                               err_msg=name)
  # Running means agree; running variances differ by design (PyTorch keeps
  # the unbiased batch variance, flax the biased one).
  for got_bn, want_bn in zip(
      [m for m in ref.model if isinstance(m, torch.nn.BatchNorm2d)],
      [m for m in expected if isinstance(m, torch.nn.BatchNorm2d)]):
    np.testing.assert_allclose(got_bn.running_mean.numpy(),
                               want_bn.running_mean.numpy(), rtol=1e-4,
                               atol=1e-6)


def _check_results(path, with_torch):
  results = json.loads(path.read_text())
  assert set(results["workloads"]) == set(benchmark.WORKLOADS)
  for name, r in results["workloads"].items():
    assert r["jaxue_s"] > 0, name
    assert r["gflops"] > 0, name
    if with_torch:
      assert r["torch_s"] > 0 and r["ratio"] > 0, name
    else:
      assert r["torch_s"] is None and r["ratio"] is None, name
  assert results["matmul_gflops"] == max(results["matmul"]["gflops"],
                                         results["matmul_end"]["gflops"]) > 0
  for r in results["workloads"].values():
    assert r["fraction_of_matmul"] == pytest.approx(
        r["gflops"] / results["matmul_gflops"])
  assert isinstance(results["device"], str)
  assert [s["eta"] for s in results["certify_sizing"]] == list(
      benchmark.SIZING_ETAS)
  return results


def test_smoke_run_writes_results_without_torch(tmp_path):
  benchmark.main(["--smoke", "--no-torch", "--out", str(tmp_path)])
  results = _check_results(tmp_path / "results.json", with_torch=False)
  assert results["torch_threads"] is None


@pytest.mark.slow
def test_smoke_run_with_torch(tmp_path):
  pytest.importorskip("torch")
  benchmark.main(["--smoke", "--threads", "1", "--out", str(tmp_path)])
  results = _check_results(tmp_path / "results.json", with_torch=True)
  assert results["torch_threads"] == 1


def test_bad_sizes_exit_with_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    benchmark.main(["--quick", "--em-images", "64", "--out", str(tmp_path)])
  assert e.value.code == 2
  assert "--em-images" in capsys.readouterr().err


@pytest.mark.parametrize("script, bad_flags, named", [
    ("benchmark.py", ["--quick", "--em-images", "64"], "--em-images"),
    ("certify_speed.py", ["--models", "vgg"], "unknown models"),
])
def test_scripts_run_by_path_from_the_repository_root(script, bad_flags,
                                                      named):
  # Bad flags stop the script before any JAX work: this checks that the
  # script imports its siblings when run by path, not as a module.
  done = subprocess.run(
      [sys.executable, f"benchmarks/{script}", *bad_flags], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2, done.stderr
  assert named in done.stderr
  assert "Traceback" not in done.stderr


def test_default_output_folders_are_under_benchmarks_results():
  certify_speed = _import_script("certify_speed")
  results = BENCHMARKS / "results"
  assert benchmark.parse_args(["--quick"]).out == results / "benchmark-quick"
  assert certify_speed.parse_args([]).out == results / "certify_speed"
