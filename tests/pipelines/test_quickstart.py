"""`jaxue quickstart`: files, report, caching, resume, refusals, flags."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxue import certify as certify_lib
from jaxue import cli
from jaxue import noise as noise_lib
from jaxue import runs
from jaxue import train
from jaxue.pipelines import _common
from jaxue.pipelines import quickstart

TINY = dict(train_size=200, test_size=200, widths=(4, 8, 8), epochs=1,
            draws=8, certify_test_size=100, max_rounds=2, quiet=True)
FLAGS = ["--train-size", "200", "--test-size", "200", "--widths", "4,8,8",
         "--epochs", "1", "--draws", "8", "--certify-test-size", "100",
         "--max-rounds", "2", "--quiet"]
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OUTPUTS = ("results.json", "report.md", "samples.png", "victim_curves.png",
           "certified_learnability.png")


def _forbid_work(monkeypatch):
  """Makes every crafting, training and certification call fail."""

  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished stage was computed again")

  monkeypatch.setattr(noise_lib, "craft", must_not_run)
  monkeypatch.setattr(train, "train_victim", must_not_run)
  monkeypatch.setattr(certify_lib, "sample_accuracies", must_not_run)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("quickstart") / "quick"
  start = time.perf_counter()
  results = quickstart.run(quickstart.Config(**TINY), out)
  return out, results, time.perf_counter() - start


def test_writes_every_file_and_the_report(quick):
  out, results, _ = quick
  for name in OUTPUTS:
    assert (out / name).is_file(), name
  saved = json.loads((out / "results.json").read_text())
  assert saved == runs.jsonable(results)
  for key in ("dataset", "train_size", "epochs", "epsilon", "wall_seconds",
              "command", "backend", "config", "jaxue_version"):
    assert key in saved
  assert saved["train_size"] == 200 and saved["test_size"] == 200
  # The default budget on Fashion-MNIST, resolved and recorded.
  assert saved["epsilon"] == pytest.approx(32 / 255)
  assert set(saved["victim_accuracy"]) == {"clean", "random", "em-classwise",
                                           "pue-classwise"}
  assert all(0 <= a <= 1 for a in saved["victim_accuracy"].values())
  assert set(saved["craft"]) == {"random", "em-classwise", "pue-classwise"}
  assert saved["craft"]["em-classwise"]["rounds"] <= 2
  cert = saved["certification"]
  assert cert["n"] == 8 and cert["sigma"] == pytest.approx(0.05)
  assert cert["test_size"] == 100
  assert set(cert["curves"]) == {"em-classwise", "pue-classwise"}
  assert len(cert["curves"]["em-classwise"]) == len(certify_lib.DEFAULT_ETAS)

  report = (out / "report.md").read_text()
  for name, summary in cert["accuracy_summary"].items():
    assert f"{summary['mean']:.4f}" in report, name
    assert f"{summary['unperturbed']:.4f}" in report, name
  # N = 8 certifies no eta: the whole grid is shown, as abstentions.
  assert report.count("abstains") >= 2 * len(certify_lib.DEFAULT_ETAS)
  assert "largest certified eta" in report
  assert "PUE against EM" in report
  assert "experiments/pue_vs_em/" in report
  assert "docs/results.md" in report
  for name, acc in saved["victim_accuracy"].items():
    assert f"{acc:.4f}" in report, name
  assert "robust rounds" in report and "Wall times" in report


def test_releases_and_models_are_consumable(quick, tmp_path):
  out, results, _ = quick
  data = _common.load_data("fashion_mnist", None, 200, 0)
  for method in ("random", "em-classwise", "pue-classwise"):
    arrays, meta = runs.load_arrays(out / method / "release.npz")
    assert arrays["images"].dtype == np.uint8
    assert meta["dataset"] == data.train_fingerprint
    assert meta["method"] == method
    assert meta["epsilon"] == pytest.approx(32 / 255)
    np.testing.assert_array_equal(arrays["train_indices"], data.indices)
  for method in ("em-classwise", "pue-classwise"):
    model, variables, description = runs.load_model(
        out / "models" / method, dataset=data.train_fingerprint)
    assert model.num_classes == 10
    assert set(variables) == {"params", "batch_stats"}
    assert description["extra"]["method"] == method
  # `jaxue certify` finds both surrogates and certifies them identically.
  assert cli.main(["certify", "--models", str(out), "--out",
                   str(tmp_path / "cert"), "--draws", "8", "--test-size",
                   "100", "--sigma-sweep", "", "--quiet"]) == 0
  for method in ("em-classwise", "pue-classwise"):
    mine = json.loads((out / "certificates" / f"{method}.json").read_text())
    theirs = json.loads((tmp_path / "cert" / "certificates" /
                         f"{method}.json").read_text())
    assert mine["accuracies_sha256"] == theirs["accuracies_sha256"]
  # `jaxue evaluate` trains the quickstart's victim on its release.
  assert cli.main(["evaluate", "--release", str(out / "em-classwise"),
                   "--out", str(tmp_path / "eval"), "--epochs", "1",
                   "--test-size", "200", "--quiet"]) == 0
  evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert evaluated["victim_accuracy"] == (
      results["victim_accuracy"]["em-classwise"])


def test_rerun_returns_cached_results_without_work(quick, monkeypatch):
  out, results, first_seconds = quick
  _forbid_work(monkeypatch)
  start = time.perf_counter()
  again = quickstart.run(quickstart.Config(**TINY), out)
  assert again == runs.jsonable(results)
  assert time.perf_counter() - start < min(10.0, first_seconds / 2)
  # The default epsilon given explicitly is the same run.
  assert cli.main(["quickstart", "--out", str(out), "--epsilon", "32/255"]
                  + FLAGS) == 0


def test_resumes_only_the_missing_stages(quick, tmp_path, monkeypatch):
  """A run that lost a victim and its final report recomputes just them,
  and gets the same numbers (keys derive from positions, not history)."""
  out, results, _ = quick
  copy = tmp_path / "quick"
  shutil.copytree(out, copy)
  (copy / "report" / runs.RESULT_FILE).unlink()
  (copy / "victims" / "random" / "seed0" / runs.RESULT_FILE).unlink()
  (copy / "results.json").unlink()
  real = train.train_victim
  trained = []

  def counting(*args, **kwargs):
    trained.append(args)
    return real(*args, **kwargs)

  _forbid_work(monkeypatch)
  monkeypatch.setattr(train, "train_victim", counting)
  again = quickstart.run(quickstart.Config(**TINY), copy)
  assert len(trained) == 1
  assert again["victim_accuracy"] == results["victim_accuracy"]
  assert again["certification"]["curves"] == (
      runs.jsonable(results["certification"]["curves"]))


@pytest.mark.slow
def test_resumes_after_sigkill_bit_for_bit(quick, tmp_path):
  """Killed while crafting EM (before its second round's checkpoint), the
  rerun resumes from round 0's checkpoint and ends exactly where an
  uninterrupted run does."""
  _, results, _ = quick
  out = tmp_path / "quick"
  script = ("import sys; from jaxue.pipelines import quickstart as q; "
            "q.run(q.Config(**dict(eval(sys.argv[1]))), sys.argv[2])")
  env = dict(os.environ, JAXUE_KILL_AT="craft:round:2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO_ROOT))
  killed = subprocess.run([sys.executable, "-c", script, repr(TINY),
                           str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert (out / "em-classwise" / "ckpt").is_dir()
  assert not (out / "em-classwise" / runs.RESULT_FILE).exists()
  resumed = quickstart.run(quickstart.Config(**TINY), out)
  for key in ("victim_accuracy", "victim_curves"):
    assert resumed[key] == runs.jsonable(results[key]), key
  for key in ("curves", "accuracy_summary", "largest_certified_eta",
              "pue_vs_em", "model_sha256"):
    assert resumed["certification"][key] == (
        runs.jsonable(results["certification"][key])), key
  for method in ("em-classwise", "pue-classwise"):
    assert (resumed["craft"][method]["noisy_accuracy"]
            == results["craft"][method]["noisy_accuracy"])
    assert (resumed["craft"][method]["release_sha256"]
            == results["craft"][method]["release_sha256"])


def test_another_epsilon_is_refused(quick, capsys):
  out, _, _ = quick
  before = (out / "run.json").read_text()
  assert cli.main(["quickstart", "--out", str(out), "--epsilon", "16/255"]
                  + FLAGS) == 2
  err = capsys.readouterr().err
  assert "jaxue quickstart: error:" in err and "epsilon" in err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert (out / "run.json").read_text() == before


def test_no_certify_crafts_em_only(tmp_path):
  out = tmp_path / "quick"
  results = quickstart.run(quickstart.Config(
      **dict(TINY, certify=False, max_rounds=1)), out)
  assert set(results["victim_accuracy"]) == {"clean", "random",
                                             "em-classwise"}
  assert results["certification"] is None
  assert not (out / "certified_learnability.png").exists()
  assert not (out / "models" / "pue-classwise").exists()
  assert (out / "models" / "em-classwise" / "model.json").is_file()
  report = (out / "report.md").read_text()
  assert "--no-certify" in report and "PUE against EM" in report


def test_comparison_line_at_the_smallest_eta_both_certify():
  def certification(em, pue):
    curves = {"em-classwise": [[0.001, em[0]], [0.01, em[1]]],
              "pue-classwise": [[0.001, pue[0]], [0.01, pue[1]]]}
    config = quickstart.Config(draws=100)
    records = {m: {"curve": c, "largest_certified_eta": None,
                   "accuracy_summary": {}, "draws_per_second": None,
                   "certificate": "", "model_sha256": "", "seconds": 0.0}
               for m, c in curves.items()}
    return quickstart._certification(  # pylint: disable=protected-access
        config, records, 100, ["em-classwise", "pue-classwise"])

  line = quickstart.comparison_line(
      certification((None, 0.5), (0.2, 0.3)), "em-classwise")
  assert "was below em-classwise's at eta = 0.01" in line
  assert "(0.3000 against 0.5000)" in line
  assert quickstart.STUDY in line and "docs/results.md" in line
  line = quickstart.comparison_line(
      certification((0.2, 0.5), (0.4, 0.1)), "em-classwise")
  assert "not below (above) em-classwise's at eta = 0.001" in line
  line = quickstart.comparison_line(
      certification((None, None), (0.4, 0.1)), "em-classwise")
  assert "cannot be compared" in line


@pytest.mark.parametrize("argv,message", [
    (["--sigma", "nan"], "--sigma must be a finite number > 0"),
    (["--method", "em-magic"], "--method: unknown 'em-magic'"),
    (["--certify-test-size", "0"], "--certify-test-size must be an integer"),
    (["--certify-test-size", "20000"],
     "--certify-test-size 20000 exceeds the 10000 images"),
    (["--test-size", "20000"], "--test-size 20000 exceeds the 10000 images"),
    (["--train-size", "100"], "below the surrogate batch of 128 images"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, message):
  assert cli.main(["quickstart", "--out", str(tmp_path / "q"), "--quiet"]
                  + argv) == 2
  err = capsys.readouterr().err
  assert message in err, err
  assert "Traceback" not in err
  assert not (tmp_path / "q").exists()
