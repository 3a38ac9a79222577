"""Bad input gets a one-line error naming the problem: the command line and
the library, probed with wrong paths, ranges, files and a full disk."""

import errno
import json
import os

import jax
import numpy as np
import pytest

from jaxue import certify
from jaxue import cli
from jaxue import defences
from jaxue import models
from jaxue import runs
from jaxue import train


def _one_line_error(capsys, argv, message):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err, err
  assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_out_that_is_a_file(tmp_path, capsys):
  blocker = tmp_path / "afile"
  blocker.write_text("mine")
  _one_line_error(capsys, ["evaluate", "--clean", "--train-size", "200",
                           "--out", str(blocker)], "is a file")
  assert blocker.read_text() == "mine"


def test_train_size_larger_than_the_dataset(tmp_path, capsys):
  _one_line_error(capsys, ["craft", "--method", "random", "--train-size",
                           "100000000", "--out", str(tmp_path / "o")],
                  "exceeds the 60000 images")


@pytest.mark.parametrize("argv, message", [
    (["craft", "--epsilon", "nan"], "--epsilon"),
    (["craft", "--epsilon", "2"], "--epsilon"),
    (["craft", "--seed", "-1"], "--seed"),
    (["craft", "--train-size", "0"], "--train-size"),
    (["certify", "--models", "x", "--sigma", "inf"], "--sigma"),
    (["certify", "--models", "x", "--draws", "0"], "--draws"),
    (["certify", "--models", "x", "--q", "1"], "--q"),
    (["evaluate", "--clean", "--epochs", "0"], "--epochs"),
    (["evaluate", "--clean", "--widths", "0,4,4"], "--widths"),
])
def test_degenerate_values_name_the_flag(tmp_path, capsys, argv, message):
  argv = argv + ["--out", str(tmp_path / "o")]
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse's own usage error.
    code = e.code
  assert code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err, err
  assert not (tmp_path / "o").exists()


def test_corrupt_release_is_named(tmp_path, capsys):
  fake = tmp_path / "r" / "release.npz"
  fake.parent.mkdir()
  fake.write_text("not an archive")
  _one_line_error(capsys, ["evaluate", "--release", str(fake.parent),
                           "--out", str(tmp_path / "o")], "release.npz")


def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
  def full(*args, **kwargs):
    del args, kwargs
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(runs.os, "replace", full)
  _one_line_error(capsys, ["craft", "--method", "random", "--train-size",
                           "200", "--out", str(tmp_path / "o")],
                  "No space left on device")
  # No temporary file is left behind.
  assert not list(tmp_path.rglob("*.tmp"))


def test_cutout_larger_than_the_image():
  images = np.zeros((2, 28, 28, 1), np.float32)
  with pytest.raises(ValueError, match="exceeds the 28x28"):
    defences.cutout(jax.random.key(0), images, size=100)
  with pytest.raises(ValueError, match="exceeds the 28x28"):
    defences.make_defence("cutout", (28, 28, 1), 10, cutout_size=29)


def _saved_model(path, spec=None):
  spec = spec or {"name": "small_cnn", "num_classes": 3, "widths": [2, 2, 2]}
  model = models.make_model(**spec)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 1),
                                   train.make_optimizer())
  runs.save_model(path, state.variables, model=spec, input_shape=(8, 8, 1))
  return model, state


def test_load_model_names_a_broken_description(tmp_path):
  path = tmp_path / "m"
  _saved_model(path)
  spec = path / "model.json"
  good = json.loads(spec.read_text())
  spec.write_text("{not json")
  with pytest.raises(runs.RunError, match=r"model\.json is corrupt"):
    runs.load_model(path)
  spec.write_text(json.dumps({"input_shape": [8, 8, 1]}))
  with pytest.raises(runs.RunError, match="not a jaxue model description"):
    runs.load_model(path)
  good["model"]["widths"] = [4, 2, 2]
  spec.write_text(json.dumps(good))
  with pytest.raises(runs.RunError, match="variables.npz"):
    runs.load_model(path)
  # A small CNN saved without convolution biases, described as one with.
  _saved_model(path, {"name": "small_cnn_nobias", "num_classes": 3,
                      "widths": [2, 2, 2]})
  good = json.loads(spec.read_text())
  good["model"]["name"] = "small_cnn"
  spec.write_text(json.dumps(good))
  with pytest.raises(runs.RunError, match="lacks"):
    runs.load_model(path)


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
