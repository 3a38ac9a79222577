"""`jaxue craft --method salm-samplewise / bayes-error`: SALM at rho = 1 is
EM's release bit for bit, sparse SALM records its sparsity, a Bayes-error
run interrupted after a block resumes to the uninterrupted result, and the
methods' flags are refused elsewhere in one line."""

import json

import numpy as np
import pytest

from jaxue import cli
from jaxue import runs
from jaxue.pipelines import craft

from . import fakes



@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("craft-field")


@pytest.fixture(scope="module")
def data_dir(tmp):
  return fakes.fake_idx_dir(tmp / "data", n_train=200, n_test=40,
                                noise_max=60, black_background=True)


def _config(data_dir, **kwargs):
  return craft.Config(data_dir=str(data_dir), train_size=200,
                      widths=(4, 8, 8), quiet=True, **kwargs)


EM_FLAGS = dict(max_rounds=2, pgd_steps=2, train_steps=2)


def _noise(out):
  arrays, meta = runs.load_arrays(out / "noise.npz")
  return arrays["noise"], meta


def test_salm_rho_one_is_the_em_release(tmp, data_dir):
  em = craft.run(_config(data_dir, method="em-samplewise", **EM_FLAGS),
                 tmp / "em")
  full = craft.run(_config(data_dir, method="salm-samplewise", salm_rho=1.0,
                           **EM_FLAGS), tmp / "salm-1")
  em_noise, _ = _noise(tmp / "em")
  salm_noise, meta = _noise(tmp / "salm-1")
  np.testing.assert_array_equal(salm_noise, em_noise)
  assert meta["method"] == "salm-samplewise" and meta["mode"] == "samplewise"
  assert full["craft"]["noisy_accuracy"] == em["craft"]["noisy_accuracy"]
  assert full["craft"]["pixels_per_image"] == 784
  assert (tmp / "salm-1" / "models" / "surrogate" / "model.json").exists()


def test_sparse_salm_records_its_sparsity(tmp, data_dir):
  results = craft.run(_config(data_dir, method="salm-samplewise",
                              salm_rho=0.05, salm_restrict=True,
                              **EM_FLAGS), tmp / "salm-sparse")
  summary = results["craft"]
  assert summary["salm"]["rho"] == 0.05 and summary["salm"]["restrict"]
  assert summary["pixels_per_image"] == 39
  delta, _ = _noise(tmp / "salm-sparse")
  assert 0 < summary["noise_sparsity"] <= 39 / 784 + 1e-9
  assert ((np.abs(delta) > 0).sum((1, 2, 3)) <= 39).all()
  assert results["noise_linf"] <= results["epsilon"] + 1e-6


BAYES = dict(method="bayes-error", ascent_steps=4, retrain_every=2,
             feature_epochs=1, kernel_sigma=1.0, epsilon=16 / 255)


def test_bayes_error_resumes_after_a_lost_block(tmp, data_dir, monkeypatch):
  ref = craft.run(_config(data_dir, **BAYES), tmp / "bayes-ref")
  assert len(ref["craft"]["bayes_error"]) == 4
  assert len(ref["craft"]["feature_train_accuracy"]) == 2

  calls = []

  def die_at_second_block(name):
    calls.append(name)
    if calls.count("craft:round") == 2:
      raise KeyboardInterrupt  # What a kill leaves: block 1 saved only.

  out = tmp / "bayes-killed"
  monkeypatch.setattr(runs, "fault_point", die_at_second_block)
  with pytest.raises(KeyboardInterrupt):
    craft.run(_config(data_dir, **BAYES), out)
  assert runs.Checkpoints(out / "craft" / "ckpt").steps()[-1] == 2
  monkeypatch.undo()
  resumed = craft.run(_config(data_dir, **BAYES), out)
  assert resumed["craft"]["resumed_from_step"] == 2
  for name in ("noise.npz", "release.npz"):
    expected, meta = runs.load_arrays(tmp / "bayes-ref" / name)
    got, _ = runs.load_arrays(out / name)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  assert meta["method"] == "bayes-error"
  assert resumed["craft"]["bayes_error"] == ref["craft"]["bayes_error"]
  results = json.loads((out / "results.json").read_text())
  assert results["noise_linf"] <= 16 / 255 + 1e-6
  assert (out / "models" / "surrogate" / "model.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["--method", "em-samplewise", "--salm-rho", "0.2"],
     "--salm-rho applies to --method salm-samplewise only"),
    (["--method", "salm-samplewise", "--salm-rho", "1.5"],
     "--salm-rho must be a number in (0, 1]"),
    (["--method", "salm-samplewise", "--salm-mask", "edges"],
     "--salm-mask: unknown 'edges'"),
    (["--method", "bayes-error", "--feature-map", "clip"],
     "--feature-map: unknown 'clip'"),
    (["--method", "random", "--ascent-steps", "5"],
     "--ascent-steps applies to --method bayes-error only"),
])
def test_bad_flags_one_line(tmp, capsys, argv, message):
  code = cli.main(["craft", "--out", str(tmp / "bad"), *argv])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and message in err, err
