"""`jaxue evaluate`: victims on a release, its integrity checks, defences,
per-seed resume and one-line errors."""

import json

import jax
import numpy as np
import pytest

from jaxue import cli
from jaxue import runs
from jaxue import train
from jaxue.pipelines import craft
from jaxue.pipelines import evaluate

from . import fakes

TINY = dict(widths=(4, 8, 8), epochs=1, quiet=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A fake dataset, a random-noise release of 200 of its images (a craft
  run directory) and a second dataset of other images."""
  tmp = tmp_path_factory.mktemp("evaluate")
  data_dir = fakes.fake_idx_dir(tmp / "data")
  craft.run(craft.Config(method="random", data_dir=str(data_dir),
                         train_size=200, quiet=True), tmp / "release")
  other = fakes.fake_idx_dir(tmp / "other", invert=True)
  return tmp, data_dir, other


def _config(setup, **kwargs):
  tmp, data_dir, _ = setup
  fields = dict(TINY, release=str(tmp / "release"), data_dir=str(data_dir))
  fields.update(kwargs)
  return evaluate.Config(**fields)


def test_victims_train_and_write_their_files(setup):
  tmp = setup[0]
  out = tmp / "eval"
  results = evaluate.run(_config(setup, seeds=2, data_parallel=True), out)
  assert len(results["victim_accuracy_per_seed"]) == 2
  assert results["victim_accuracy"] == pytest.approx(
      np.mean(results["victim_accuracy_per_seed"]))
  assert results["victim_accuracy_std"] == pytest.approx(
      np.std(results["victim_accuracy_per_seed"]))
  assert [len(c) for c in results["victim_curves"]] == [1, 1]
  assert results["release"]["method"] == "random"
  assert results["dataset"] == "fashion_mnist"
  assert results["train_size"] == 200 and results["test_size"] == 60
  saved = json.loads((out / "results.json").read_text())
  assert saved["victim_accuracy"] == pytest.approx(results["victim_accuracy"])
  assert (out / "victim_curves.png").exists()
  _, meta = runs.load_arrays(tmp / "release" / "release.npz")
  for k in range(2):
    model, _, description = runs.load_model(
        out / "models" / f"victim-seed{k}", dataset=meta["dataset"])
    assert model.name == "small_cnn(4,8,8)"
    assert description["extra"]["victim_seed"] == k
  # Rerun: every victim is done, nothing is trained again.
  again = evaluate.run(_config(setup, seeds=2), out)
  assert again["victim_accuracy_per_seed"] == results[
      "victim_accuracy_per_seed"]


def test_clean_victims_use_the_craft_subset(setup):
  """--clean draws the training subset as craft does: the victim records
  the same data fingerprint as the release."""
  tmp, data_dir, _ = setup
  out = tmp / "clean"
  results = evaluate.run(evaluate.Config(
      clean=True, data_dir=str(data_dir), train_size=200, **TINY), out)
  assert results["training_data"] == "clean" and results["release"] is None
  _, meta = runs.load_arrays(tmp / "release" / "release.npz")
  runs.load_model(out / "models" / "victim-seed0", dataset=meta["dataset"])


def test_killed_run_does_not_retrain_finished_seeds(setup, monkeypatch):
  tmp = setup[0]
  out = tmp / "resume"
  trained = []
  real = train.train_victim

  class Killed(Exception):
    pass

  def dies_on_the_second(*args, **kwargs):
    trained.append(kwargs.get("progress"))
    if len(trained) == 2:
      raise Killed
    return real(*args, **kwargs)

  monkeypatch.setattr(train, "train_victim", dies_on_the_second)
  with pytest.raises(Killed):
    evaluate.run(_config(setup, seeds=2), out)
  assert (out / "victim-seed0" / "result.json").exists()
  assert not (out / "victim-seed1" / "result.json").exists()

  trained.clear()

  def records(*args, **kwargs):
    trained.append(jax_key_data(args[0]))
    return real(*args, **kwargs)

  monkeypatch.setattr(train, "train_victim", records)
  results = evaluate.run(_config(setup, seeds=2), out)
  assert len(trained) == 1  # Seed 1 only.
  assert len(results["victim_accuracy_per_seed"]) == 2
  # Seed 1's key is fold_in(key(seed), 1), as in an uninterrupted run.
  assert trained[0] == jax_key_data(jax.random.fold_in(jax.random.key(0),
                                                       1))


def jax_key_data(key):
  return jax.random.key_data(key).tolist()


def test_defences_partial_protection_and_adversarial_training(setup):
  tmp = setup[0]
  results = evaluate.run(_config(setup, augment=True, defence="cutout",
                                 cutout_size=8, poison_ratio=0.5),
                         tmp / "defended")
  assert results["protected_images"] == 100
  assert results["defence"] == "cutout" and results["augment"] is True
  results = evaluate.run(_config(setup, adversarial=True, adv_steps=1,
                                 defence="jpeg", jpeg_quality=50),
                         tmp / "adversarial")
  assert results["adversarial"]["steps"] == 1
  assert results["adversarial"]["epsilon"] == pytest.approx(4 / 255)
  assert 0 <= results["victim_accuracy"] <= 1


def test_victim_model_defaults_to_the_surrogate():
  surrogate = {"name": "small_cnn", "num_classes": 10, "widths": [4, 4, 4]}
  config = evaluate.Config(release="r")
  assert evaluate.victim_model(config, surrogate, 10)["widths"] == [4, 4, 4]
  wider = evaluate.Config(release="r", widths=(8, 8, 8))
  assert evaluate.victim_model(wider, surrogate, 10)["widths"] == [8, 8, 8]
  resnet = evaluate.Config(release="r", model="resnet18")
  spec = evaluate.victim_model(resnet, surrogate, 10)
  assert spec["name"] == "resnet18" and spec["widths"] is None
  model_free = evaluate.victim_model(config, None, 10)
  assert model_free["name"] == "small_cnn"
  assert model_free["widths"] == [16, 32, 64]


def _fails(capsys, argv, message):
  assert cli.main(["evaluate"] + argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("jaxue evaluate: error:") and message in err, err
  assert "Traceback" not in err and len(err.splitlines()) == 1


def test_release_from_other_data_is_refused(setup, capsys):
  tmp, _, other = setup
  _fails(capsys, ["--release", str(tmp / "release"), "--data-dir",
                  str(other), "--out", str(tmp / "o1")],
         "release.npz was made from other data")
  assert not (tmp / "o1").exists()


@pytest.mark.parametrize("flags,message", [
    (["--dataset", "mnist"],
     "--dataset mnist contradicts the release, made from fashion_mnist"),
    (["--epsilon", "8/255"],
     "--epsilon 8/255 contradicts the release, made at epsilon 32/255"),
    (["--train-size", "100"],
     "--train-size 100 contradicts the release of 200 images"),
])
def test_contradicting_flags_are_refused(setup, capsys, flags, message):
  tmp, data_dir, _ = setup
  _fails(capsys, ["--release", str(tmp / "release"), "--data-dir",
                  str(data_dir), "--out", str(tmp / "o2")] + flags, message)
  assert not (tmp / "o2").exists()


def _bad_release(path, *, n=20, indices=None, meta=True):
  arrays = {"images": np.zeros((n, 28, 28, 1), np.uint8),
            "labels": (np.arange(n) % 10).astype(np.int32),
            "train_indices": (np.arange(n) if indices is None else indices)}
  record = {"dataset": {"name": "fashion_mnist"},
            "dataset_name": "fashion_mnist"} if meta else {}
  runs.save_arrays(path / "release.npz", arrays, meta=record)
  return path


def test_bad_releases_one_line(setup, capsys):
  tmp, data_dir, _ = setup
  out = ["--data-dir", str(data_dir), "--out", str(tmp / "o3")]
  _fails(capsys, ["--release", str(tmp / "none")] + out, "no release at")
  fake = tmp / "fake.npz"
  fake.write_text("not an archive")
  _fails(capsys, ["--release", str(fake)] + out,
         "is corrupt or not a jaxue array file")
  plain = tmp / "plain"
  plain.mkdir()
  np.savez(plain / "release.npz", images=np.zeros((2, 28, 28, 1), np.uint8))
  _fails(capsys, ["--release", str(plain)] + out, "has no integrity record")
  _fails(capsys, ["--release", str(_bad_release(tmp / "empty", n=0))] + out,
         "holds no images")
  _fails(capsys, ["--release", str(_bad_release(
      tmp / "float", indices=np.arange(20, dtype=np.float32)))] + out,
         "train_indices must be integers")
  _fails(capsys, ["--release", str(_bad_release(
      tmp / "negative", indices=-np.arange(1, 21)))] + out, "positions >= 0")
  _fails(capsys, ["--release", str(_bad_release(tmp / "nometa",
                                                meta=False))] + out,
         "records no dataset fingerprint")
  _fails(capsys, ["--release", str(tmp / "release" / "craft")] + out,
         "no release at")
  evaluated = tmp / "evaluated"
  runs.Run(evaluated, "evaluate", {})
  _fails(capsys, ["--release", str(evaluated)] + out,
         "holds a evaluate run without release.npz")
  blocker = tmp / "afile"
  blocker.write_text("mine")
  _fails(capsys, ["--release", str(tmp / "release"), "--data-dir",
                  str(data_dir), "--out", str(blocker)], "is a file")
  assert blocker.read_text() == "mine"


@pytest.mark.parametrize("flags,message", [
    ([], "--release is required"),
    (["--clean", "--release", "r"], "--release and --clean exclude"),
    (["--clean", "--poison-ratio", "0.5"], "--poison-ratio needs --release"),
    (["--clean", "--epsilon", "8/255"], "--epsilon needs --release"),
    (["--clean", "--learning-rate", "-1"], "finite number > 0"),
    (["--clean", "--poison-ratio", "2"], "--poison-ratio must be a number"),
    (["--clean", "--adversarial", "--defence", "mixup"],
     "--adversarial does not combine with --defence mixup"),
    (["--clean", "--adversarial", "--adv-radius", "0"],
     "--adv-radius must be a number in (0, 1]"),
    (["--clean", "--adv-steps", "3"], "--adv-steps applies with "
     "--adversarial only"),
    (["--clean", "--cutout-size", "3"],
     "--cutout-size applies with --defence cutout only"),
    (["--clean", "--jpeg-quality", "96", "--defence", "jpeg"],
     "--jpeg-quality must be an integer in [1, 95]"),
    (["--clean", "--defence", "magic"], "--defence: unknown 'magic'"),
])
def test_bad_flags_one_line(tmp_path, capsys, flags, message):
  _fails(capsys, flags + ["--out", str(tmp_path / "o")], message)


def test_projection_defence_and_the_peak_accuracy(setup, tmp_path):
  results = evaluate.run(_config(setup, defence="orthogonal-projection",
                                 epochs=2), tmp_path / "projected")
  assert 0 <= results["projection_linear_accuracy"] <= 1
  for seed, curve in enumerate(results["victim_curves"]):
    assert results["victim_peak_accuracy_per_seed"][seed] == max(curve)
    epoch = results["victim_peak_epoch_per_seed"][seed]
    assert curve[epoch - 1] == max(curve)
  assert results["victim_peak_accuracy"] >= results["victim_accuracy"]
  with pytest.raises(ValueError, match="--adversarial does not combine"):
    _config(setup, defence="ueraser-max", adversarial=True)
