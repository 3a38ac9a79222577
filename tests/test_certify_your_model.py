"""The bring-your-own-model example certifies a user's flax model."""

import pathlib
import time

import pytest

from experiments import certify_your_model

FMNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_certify_your_model_runs_tiny(capsys):
  start = time.perf_counter()
  curve = certify_your_model.main(
      ["--images", "100", "--steps", "10", "--draws", "4", "--sigma", "0.05"])
  assert time.perf_counter() - start < 30
  assert curve.n == 4 and len(curve.values) == len(curve.etas)
  out = capsys.readouterr().out
  assert "mean smoothed accuracy" in out
  assert out.count("eta ") == len(curve.etas)
