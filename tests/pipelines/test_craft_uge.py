"""`jaxue craft --method uge`: the encoder on a disjoint split, the files,
resume after a lost round to the uninterrupted result, one-line errors."""


import numpy as np
import pytest

from jaxue import cli
from jaxue import runs
from jaxue.pipelines import craft

from . import fakes



@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("craft-uge")


@pytest.fixture(scope="module")
def data_dir(tmp):
  return fakes.fake_idx_dir(tmp / "data", n_train=400, n_test=40,
                                noise_max=60)


def _config(data_dir, **kwargs):
  return craft.Config(method="uge", data_dir=str(data_dir), train_size=200,
                      widths=(4, 8, 8), encoder_epochs=1, uge_rounds=2,
                      uge_steps=2, epsilon=16 / 255, quiet=True, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp, data_dir):
  out = tmp / "ref"
  return out, craft.run(_config(data_dir), out)


def test_uge_run_writes_release_surrogate_and_encoder(reference):
  out, results = reference
  assert results["method"] == "uge" and results["mode"] == "samplewise"
  assert results["noise_linf"] <= 16 / 255 + 1e-6
  summary = results["craft"]
  assert summary["encoder"]["model"]["name"] == "small_cnn_flat"
  assert summary["encoder"]["train_size"] == 200  # All 200 images left.
  assert len(summary["history"]["gm"]) == 2
  assert (out / "models" / "surrogate" / "model.json").exists()
  assert (out / "encoder" / "model.json").exists()
  model, _, _ = runs.load_model(out / "encoder")
  assert model.name == "small_cnn_flat(4,8,8)"
  # The encoder's data is disjoint from the release's.
  release, meta = runs.load_arrays(out / "release.npz")
  encoder, _ = runs.load_arrays(out / "encoder" / "train_indices.npz")
  assert meta["method"] == "uge"
  assert len(release["train_indices"]) == 200
  assert not set(encoder["train_indices"]) & set(release["train_indices"])


def test_uge_resumes_after_a_lost_round(tmp, data_dir, reference,
                                        monkeypatch):
  ref, ref_results = reference
  calls = []

  def die_in_second_round(name):
    calls.append(name)
    if calls.count("craft:round") == 2:
      raise KeyboardInterrupt  # What a kill leaves: round 0 saved only.

  out = tmp / "killed"
  monkeypatch.setattr(runs, "fault_point", die_in_second_round)
  with pytest.raises(KeyboardInterrupt):
    craft.run(_config(data_dir), out)
  assert runs.Checkpoints(out / "craft" / "ckpt").steps()[-1] == 0
  monkeypatch.undo()
  resumed = craft.run(_config(data_dir), out)
  assert resumed["craft"]["resumed_from_round"] == 1
  for name in ("noise.npz", "release.npz",
               "models/surrogate/variables.npz"):
    expected, _ = runs.load_arrays(ref / name)
    got, _ = runs.load_arrays(out / name)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  got = resumed["craft"]["history"]
  want = ref_results["craft"]["history"]
  assert {k: got[k] for k in got if k != "seconds"} == {
      k: want[k] for k in want if k != "seconds"}
  assert not (out / "craft" / "ckpt").exists()


@pytest.mark.parametrize("argv,message", [
    (["--method", "random", "--encoder-size", "100"],
     "--encoder-size applies to --method uge only"),
    (["--method", "uge", "--encoder-model", "vit"],
     "--encoder-model: unknown 'vit'"),
    (["--method", "uge", "--uge-rounds", "0"], "--uge-rounds"),
])
def test_bad_flags_one_line(tmp, capsys, argv, message):
  code = cli.main(["craft", "--out", str(tmp / "bad"), *argv])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_uge_needs_a_disjoint_split(tmp, data_dir, capsys):
  code = cli.main(["craft", "--out", str(tmp / "all"), "--method", "uge",
                   "--data-dir", str(data_dir), "--train-size", "all",
                   "--quiet"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert "disjoint" in err and "--train-size" in err
  assert not (tmp / "all").exists()
