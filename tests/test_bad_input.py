"""Bad input gets a one-line error naming the problem (found by probing the
scripts and library with wrong paths, dtypes, ranges and mismatches)."""

import json
import pathlib

import jax
import numpy as np
import pytest

from experiments import craft
from experiments import evaluate
from experiments import quickstart
from experiments import recover
from experiments import table
from jaxue import certify
from jaxue import checkpoint
from jaxue import defences
from jaxue import models
from jaxue import train


def _one_line_error(capsys, run, message):
  with pytest.raises(SystemExit) as exit_info:
    run()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error:") and message in err, err
  assert "Traceback" not in err and len(err.splitlines()) == 1


def _release(path, *, indices=None, labels=None, n=20):
  path.mkdir(parents=True, exist_ok=True)
  labels = np.arange(n) % 10 if labels is None else labels
  arrays = dict(images=np.zeros((n, 28, 28, 1), np.uint8),
                labels=labels.astype(np.int32))
  if indices is not None:
    arrays["train_indices"] = indices
  np.savez(path / "released.npz", **arrays)
  return path


def test_out_that_is_a_file(tmp_path, capsys):
  blocker = tmp_path / "afile"
  blocker.write_text("mine")
  _one_line_error(capsys, lambda: evaluate.main(
      ["--released", str(_release(tmp_path / "r")), "--out", str(blocker)]),
                  "is a file where a folder is needed")
  assert blocker.read_text() == "mine"


def test_train_size_larger_than_the_dataset(tmp_path, capsys):
  _one_line_error(capsys, lambda: craft.main(
      ["--method", "random", "--train-size", "100000000", "--out",
       str(tmp_path / "o")]), "exceeds the 60000 images")


def test_released_file_that_is_not_an_npz(tmp_path, capsys):
  fake = tmp_path / "released.npz"
  fake.write_text("not an archive")
  _one_line_error(capsys, lambda: evaluate.main(
      ["--released", str(fake), "--out", str(tmp_path / "o")]),
                  "is not a .npz archive")


@pytest.mark.parametrize("indices,message", [
    (np.arange(20, dtype=np.float32), "train_indices must be integers"),
    (-np.arange(1, 21), "positions >= 0"),
])
def test_clean_originals_rejects_bad_train_indices(tmp_path, indices,
                                                    message):
  labels = np.arange(20) % 10
  clean = (np.zeros((100, 28, 28, 1), np.uint8), np.arange(100) % 10)
  path = _release(tmp_path / "r", indices=indices, labels=labels)
  with pytest.raises(ValueError, match=message):
    evaluate.clean_originals(path, "fashion_mnist", clean, labels)


@pytest.mark.parametrize("main,argv", [
    (evaluate.main, ["--clean", "--learning-rate", "-1"]),
    (recover.main, ["--checkpoint", "c", "--learning-rate", "0"]),
    (quickstart.main, ["--sigma", "nan"]),
])
def test_rates_and_sigma_must_be_positive_and_finite(tmp_path, capsys, main,
                                                     argv):
  with pytest.raises(SystemExit) as exit_info:
    main(["--out", str(tmp_path / "o")] + argv)
  assert exit_info.value.code == 2
  assert "finite number > 0" in capsys.readouterr().err


def test_cutout_larger_than_the_image():
  images = np.zeros((2, 28, 28, 1), np.float32)
  with pytest.raises(ValueError, match="exceeds the 28x28"):
    defences.cutout(jax.random.key(0), images, size=100)
  with pytest.raises(ValueError, match="exceeds the 28x28"):
    defences.make_defence("cutout", (28, 28, 1), 10, cutout_size=29)


def test_table_from_checks_the_folder(tmp_path, capsys):
  crafted = tmp_path / "em"
  _release(crafted)
  (crafted / "results.json").write_text(json.dumps(
      {"method": "em-classwise", "train_size": 20}))
  base = ["--out", str(tmp_path / "t"), "--methods", "random",
          "--defences", "none"]
  _one_line_error(capsys, lambda: table.main(
      base + ["--from", f"random={crafted}"]),
                  "holds a 'em-classwise' release, not 'random'")
  _one_line_error(capsys, lambda: table.main(
      base + ["--from", f"random={tmp_path / 'nothing'}"]),
                  "no experiments.craft output there")


def _saved_model(path):
  spec = {"name": "small_cnn", "num_classes": 3, "widths": [2, 2, 2]}
  model = models.make_model(**spec)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer())
  checkpoint.save_model(path, state, model=spec, input_shape=(8, 8, 1))
  return model, state


def test_load_model_names_a_broken_description(tmp_path):
  path = tmp_path / "m"
  _saved_model(path)
  spec = path / "model.json"
  good = json.loads(spec.read_text())
  spec.write_text("{not json")
  with pytest.raises(ValueError, match="not a jaxue model description"):
    checkpoint.load_model(path)
  spec.write_text(json.dumps({"input_shape": [8, 8, 1]}))
  with pytest.raises(ValueError, match="not a jaxue model description"):
    checkpoint.load_model(path)
  good["model"]["widths"] = [4, 2, 2]
  spec.write_text(json.dumps(good))
  with pytest.raises(ValueError, match="do not match the model"):
    checkpoint.load_model(path)


def test_sample_accuracies_checks_images_and_labels_against_the_model(
    tmp_path):
  model, state = _saved_model(tmp_path / "m")
  images = np.zeros((4, 8, 8, 1), np.uint8)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    certify.sample_accuracies(key, model.apply, state.variables, images,
                              np.array([0, 1, 2, 3]), sigma=0.1,
                              num_draws=1)
  with pytest.raises(ValueError, match="cannot be applied to images"):
    certify.sample_accuracies(key, model.apply, state.variables,
                              np.zeros((4, 8, 8, 3), np.uint8),
                              np.zeros(4, np.int32), sigma=0.1, num_draws=1)


def test_model_widths_must_be_positive():
  with pytest.raises(ValueError, match="widths must be integers >= 1"):
    models.make_model("small_cnn", widths=(0, 4, 4))


def test_empty_release(tmp_path, capsys):
  _one_line_error(capsys, lambda: evaluate.main(
      ["--released", str(_release(tmp_path / "r", n=0)), "--out",
       str(tmp_path / "o")]), "holds no images")


def test_fixtures_write_what_evaluate_reads(tmp_path):
  images, labels = evaluate.load_released(_release(tmp_path / "r"))
  assert images.shape == (20, 28, 28, 1) and labels.dtype == np.int32
  assert pathlib.Path(tmp_path / "r" / "released.npz").is_file()
