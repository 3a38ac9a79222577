"""`jaxue recover`: results, resume per radius, integrity and bad input."""

import dataclasses
import math
import shutil

import numpy as np
import pytest

from jaxue import cli
from jaxue import runs
from jaxue.pipelines import recover
from .test_certify import save_tiny_model

ETAS = (0.5, 2.0)
# 0.005 of the 60,000 training images: a 300-image recovery set.
FLAGS = ["--etas", "0.5,2", "--fraction", "0.005", "--epochs", "1",
         "--batch-size", "100", "--random-directions", "2", "--test-size",
         "100", "--quiet"]


@pytest.fixture(scope="module")
def theta0(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("recover")
  save_tiny_model(tmp / "theta0")
  return tmp


def _config(tmp, **kwargs):
  base = dict(checkpoint=str(tmp / "theta0"), etas=ETAS, fraction=0.005,
              epochs=1, batch_size=100, random_directions=2, test_size=100,
              quiet=True)
  return recover.Config(**{**base, **kwargs})


@pytest.fixture(scope="module")
def full_run(theta0):
  out = theta0 / "full"
  return out, recover.run(_config(theta0), out)


def _cli(capsys, argv):
  capsys.readouterr()
  try:
    code = cli.main(["recover"] + argv)
  except SystemExit as e:  # argparse's own errors.
    code = e.code
  return code, capsys.readouterr().err


def _one_line(code, err, message):
  assert code == 2, err
  assert message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _without_timings(per_eta):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in per_eta]


def test_recover_results(full_run):
  out, results = full_run
  saved = runs.read_json(out / "results.json")
  assert [e for e, _ in saved["recovery"]] == list(ETAS)
  assert [e for e, _ in saved["random_directions"]] == list(ETAS)
  assert saved["recovery_size"] == 300 and saved["test_size"] == 100
  assert saved["dataset"] == "fashion_mnist"
  assert saved["theta0_accuracy"] == pytest.approx(results["theta0_accuracy"])
  for name in ("theta0_norm", "model_sha256", "recovery_set", "test",
               "wall_seconds", "jaxue_version", "config"):
    assert name in saved, name
  report = (out / "report.md").read_text()
  for r in saved["per_eta"]:
    assert 0 <= r["test_accuracy"] <= 1
    assert r["distance"] <= r["eta"] + 1e-5  # Inside the ball.
    assert len(r["history"]["train_loss"]) == 1
    assert f"{r['test_accuracy']:.4f}" in report
    assert f"{r['random']['test_accuracy']:.4f}" in report
  assert f"{saved['theta0_norm']:.3f}" in report
  assert (out / "recovery.png").stat().st_size > 0
  assert saved["computed_radii"] == 2


def test_recover_resumes_per_radius(theta0, full_run, tmp_path, monkeypatch,
                                    capsys):
  out = tmp_path / "out"
  reached = []

  def killed_at_second_radius(name):
    if name == "recover:radius":
      reached.append(name)
      if len(reached) == 2:
        raise KeyboardInterrupt  # Dies before radius 2 is committed.

  monkeypatch.setattr(runs, "fault_point", killed_at_second_radius)
  with pytest.raises(KeyboardInterrupt):
    recover.run(_config(theta0), out)
  monkeypatch.undo()
  assert (out / "eta_0.5" / "result.json").exists()
  assert not (out / "eta_2.0" / "result.json").exists()

  resumed = recover.run(_config(theta0, quiet=False), out)
  assert "1 of 2 radii resumed" in capsys.readouterr().out
  assert resumed["computed_radii"] == 1
  _, first = full_run
  assert resumed["recovery"] == first["recovery"]
  assert resumed["random_directions"] == first["random_directions"]
  assert (_without_timings(resumed["per_eta"]) ==
          _without_timings(first["per_eta"]))
  # The same command again computes nothing; other settings are refused.
  assert recover.run(_config(theta0), out)["computed_radii"] == 0
  code, err = _cli(capsys, ["--checkpoint", str(theta0 / "theta0"), "--out",
                            str(out)] + FLAGS + ["--learning-rate", "0.1"])
  _one_line(code, err, "--overwrite")


@pytest.mark.parametrize("kwargs,message", [
    ({"etas": (-1.0,)}, "--etas entries must be a finite number >= 0"),
    ({"etas": (math.nan,)}, "--etas entries must be a finite number >= 0"),
    ({"etas": (math.inf,)}, "--etas entries must be a finite number >= 0"),
    ({"etas": ()}, "--etas must be a non-empty list"),
    ({"etas": (1.0, 1.0)}, "--etas must be distinct"),
    ({"fraction": 1.5}, "--fraction must be a number in (0, 1]"),
    ({"fraction": 0.0}, "--fraction must be a number in (0, 1]"),
    ({"learning_rate": 0.0}, "--learning-rate must be a finite number > 0"),
    ({"weight_decay": -1.0}, "--weight-decay must be a finite number >= 0"),
    ({"project": "cube"}, "--project: unknown 'cube'"),
    ({"random_directions": -1}, "--random-directions must be an integer"),
    ({"checkpoint": None}, "--checkpoint is required"),
])
def test_bad_config(theta0, kwargs, message):
  with pytest.raises(ValueError, match="^" + message.replace(
      "(", r"\(").replace(")", r"\)").replace("[", r"\[")):
    _config(theta0, **kwargs)


@pytest.mark.parametrize("extra,message", [
    (["--etas", "1,-2"], "--etas entries must be a finite number >= 0"),
    (["--fraction", "1.5"], "--fraction must be a number in (0, 1]"),
    (["--learning-rate", "0"], "finite number > 0"),
    (["--project", "cube"], "--project: unknown 'cube'"),
    (["--dataset", "mnist"], "--dataset mnist contradicts the model's "
     "dataset fashion_mnist"),
    (["--batch-size", "1000"], "the recovery set has 300 images"),
    (["--name", "victim"], "needs a run directory"),
])
def test_bad_flags_are_one_line(theta0, tmp_path, capsys, extra, message):
  argv = ["--checkpoint", str(theta0 / "theta0"), "--out",
          str(tmp_path / "o")] + FLAGS + extra
  _one_line(*_cli(capsys, argv), message)
  assert not (tmp_path / "o" / "results.json").exists()


def test_checkpoints_that_are_not_there_or_ambiguous(theta0, tmp_path,
                                                      capsys):
  out = ["--out", str(tmp_path / "o")] + FLAGS
  _one_line(*_cli(capsys, ["--checkpoint", str(tmp_path / "nope")] + out),
            "nope does not exist")
  (tmp_path / "empty").mkdir()
  _one_line(*_cli(capsys, ["--checkpoint", str(tmp_path / "empty")] + out),
            "not a jaxue model checkpoint")
  run_dir = tmp_path / "eval-run"
  for name in ("victim-seed0", "victim-seed1"):
    shutil.copytree(theta0 / "theta0", run_dir / "models" / name)
  _one_line(*_cli(capsys, ["--checkpoint", str(run_dir)] + out),
            "holds 2 models (victim-seed0, victim-seed1); pick one with "
            "--name")
  _one_line(*_cli(capsys, ["--checkpoint", str(run_dir), "--name", "x"] +
                  out), "has no 'x'")
  assert recover.find_model(str(run_dir), "victim-seed1") == (
      run_dir / "models" / "victim-seed1")


def test_model_integrity_is_verified(theta0, tmp_path, capsys):
  out = ["--out", str(tmp_path / "o")] + FLAGS
  broken = tmp_path / "broken"
  shutil.copytree(theta0 / "theta0", broken)
  arrays, _ = runs.load_arrays(broken / "variables.npz")
  biggest = max(arrays.values(), key=lambda a: a.size)
  blob = bytearray((broken / "variables.npz").read_bytes())
  blob[bytes(blob).find(np.ascontiguousarray(biggest).tobytes()) + 5] ^= 1
  (broken / "variables.npz").write_bytes(bytes(blob))
  _one_line(*_cli(capsys, ["--checkpoint", str(broken)] + out),
            "variables.npz")
  # A model that claims the whole training split, but other images.
  other = tmp_path / "other"
  shutil.copytree(theta0 / "theta0", other)
  description = runs.read_json(other / "model.json")
  description["dataset"] = {"name": "fashion_mnist", "split": "train",
                            "shape": [60000, 28, 28, 1], "sha256": "0" * 64}
  runs.write_json(other / "model.json", description)
  _one_line(*_cli(capsys, ["--checkpoint", str(other)] + out),
            "differs in sha256")


def test_sphere_projection_and_no_random_directions(theta0, tmp_path):
  results = recover.run(_config(theta0, etas=(0.5,), project="sphere",
                                random_directions=0), tmp_path / "o")
  assert results["random_directions"] == []
  (r,) = results["per_eta"]
  assert "random" not in r
  assert r["distance"] == pytest.approx(0.5, rel=1e-4)  # On the sphere.
  assert dataclasses.asdict(_config(theta0))["project"] == "ball"
