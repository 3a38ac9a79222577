"""End-to-end smoke runs of the experiment scripts and their CLI errors."""

import json
import pathlib

import jax
import numpy as np
import pytest

from experiments import craft
from experiments import evaluate
from experiments import quickstart
from jaxue import checkpoint
from jaxue import models
from jaxue import train

FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _fake_idx_dir(tmp_path, n_train=240, n_test=60):
  """Writes a tiny Fashion-MNIST-shaped IDX dataset (gz)."""
  tmp_path.mkdir(parents=True, exist_ok=True)
  import gzip
  import struct
  rng = np.random.default_rng(0)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for c in range(10):  # A class-dependent bright bar makes it learnable.
      images[labels == c, 2 * c + 2: 2 * c + 5, 4:24] = 220
    with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
      f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
      f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
  return tmp_path


@pytest.mark.slow
def test_quickstart_smoke(tmp_path):
  data_dir = _fake_idx_dir(tmp_path / "data")
  out = tmp_path / "quick"
  results = quickstart.main([
      "--out", str(out), "--data-dir", str(data_dir), "--train-size", "200",
      "--epochs", "2", "--max-rounds", "2", "--widths", "4,8,8",
      "--cert-draws", "4", "--cert-test-size", "40", "--pue-draws", "2"])
  saved = json.loads((out / "results.json").read_text())
  assert saved["victim_accuracy"] == pytest.approx(results["victim_accuracy"])
  for key in ("dataset", "train_size", "epochs", "epsilon", "wall_seconds",
              "command", "commit", "backend", "config"):
    assert key in saved
  assert set(saved["victim_accuracy"]) == {"clean", "random", "em-classwise",
                                           "pue-classwise"}
  cert = saved["certification"]
  assert cert["n"] == 4 and cert["sigma"] == pytest.approx(0.05)
  assert set(cert["curves"]) == {"em-classwise", "pue-classwise"}
  assert all(0 <= a <= 1 for a in saved["victim_accuracy"].values())
  assert saved["train_size"] == 200
  for name in ("samples.png", "victim_curves.png", "report.md", "noise.npz",
               "released.npz", "certified_learnability.png"):
    assert (out / name).exists(), name
  with np.load(out / "released.npz") as f:
    assert f["images"].dtype == np.uint8
  model, variables, _ = checkpoint.load_model(out / "surrogate")
  assert model.num_classes == 10
  assert set(variables) == {"params", "batch_stats"}


@pytest.mark.slow
def test_craft_then_evaluate_and_resume(tmp_path, capsys):
  data_dir = _fake_idx_dir(tmp_path / "data")
  out = tmp_path / "craft"
  args = ["--out", str(out), "--data-dir", str(data_dir), "--method",
          "em-classwise", "--epsilon", "16/255", "--widths", "4,4,4",
          "--train-size", "200", "--stop-error", "0"]
  craft.main(args + ["--max-rounds", "1"])
  result = craft.main(args + ["--max-rounds", "2"])
  assert "resuming after round 0" in capsys.readouterr().out
  assert result["craft"]["rounds"] == 2
  assert result["craft"]["resumed_from_round"] == 1
  assert result["epsilon"] == pytest.approx(16 / 255)
  noise = np.load(out / "noise.npz")["noise"]
  assert noise.shape == (10, 28, 28, 1)
  assert np.abs(noise).max() <= 16 / 255 + 1e-6
  ev = evaluate.main(["--released", str(out), "--data-dir", str(data_dir),
                      "--widths", "4,4,4", "--epochs", "1", "--out",
                      str(tmp_path / "eval")])
  assert 0 <= ev["victim_accuracy"] <= 1
  assert (tmp_path / "eval" / "victim" / "model.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["--epsilon", "0"], "epsilon must be in (0, 1]"),
    (["--epsilon", "300/255"], "epsilon must be in (0, 1]"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_craft_bad_flags_one_line_no_traceback(tmp_path, capsys, argv,
                                               message):
  with pytest.raises(SystemExit) as exit_info:
    craft.main(["--out", str(tmp_path / "x")] + argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error:") and message in err
  assert "Traceback" not in err and len(err.splitlines()) == 1


def test_evaluate_missing_release(tmp_path, capsys):
  with pytest.raises(SystemExit):
    evaluate.main(["--released", str(tmp_path / "none"), "--out",
                   str(tmp_path / "o")])
  assert "no released dataset" in capsys.readouterr().err


def test_checkpoint_roundtrip(tmp_path):
  model_spec = {"name": "small_cnn", "num_classes": 3, "widths": [2, 2, 2]}
  model = models.make_model(**model_spec)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer())
  checkpoint.save_model(tmp_path / "m", state, model=model_spec,
                        input_shape=(8, 8, 1), extra={"note": "x"})
  loaded, variables, description = checkpoint.load_model(tmp_path / "m")
  assert description["extra"] == {"note": "x"}
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(
      state.variables)):
    np.testing.assert_array_equal(a, b)
  x = np.zeros((2, 8, 8, 1), np.float32)
  np.testing.assert_array_equal(loaded.apply(variables, x, False)[0],
                                model.apply(state.variables, x, False)[0])
  with pytest.raises(FileNotFoundError, match="model.json"):
    checkpoint.load_model(tmp_path)
