"""`jaxue certify`: results, resume after SIGKILL, integrity, devices, flags."""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxue import certify as certify_lib
from jaxue import cli
from jaxue import models
from jaxue import runs
from jaxue import train
from jaxue.pipelines import _common
from jaxue.pipelines import certify

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = {"name": "small_cnn", "num_classes": 10, "widths": [4, 8, 8],
        "conv_impl": "lax"}  # lax convolutions compile fastest on CPU.
ETAS = (0.001, 0.01, 0.1)
# Small N: confidence 0.5 lets 16 draws certify the small radii, and
# eta = 0.1 (q_bar ~ 0.9995 at sigma 0.05) still abstains.
FLAGS = ["--draws", "16", "--segment-draws", "4", "--test-size", "100",
         "--etas", ",".join(map(str, ETAS)), "--confidence", "0.5",
         "--quiet"]


def save_tiny_model(path, *, fit=True, seed=0):
  """A small CNN fitted 1 epoch on 200 Fashion-MNIST images (or freshly
  initialised), saved with the fingerprint of its training data."""
  data = _common.load_data("fashion_mnist", None, 200, seed, 100)
  model = models.make_model(**SPEC)
  if fit:
    state, _ = train.train_victim(jax.random.key(seed), model, *data.train,
                                  test=data.test, epochs=1, progress=False)
  else:
    state = train.create_train_state(jax.random.key(seed), model,
                                     (28, 28, 1), train.make_optimizer())
  runs.save_model(path, state.variables, model=SPEC, input_shape=(28, 28, 1),
                  dataset=data.train_fingerprint, extra={"method": "clean"})
  return data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("certify")
  data = save_tiny_model(tmp / "clean")
  # A run directory: its models are found under models/ and named by folder.
  save_tiny_model(tmp / "craft-run" / "models" / "surrogate", fit=False,
                  seed=1)
  return tmp, data


def _config(tmp, **kwargs):
  base = dict(models=(str(tmp / "clean"),), draws=16, segment_draws=4,
              test_size=100, etas=ETAS, confidence=0.5, sigma_sweep=(),
              quiet=True)
  return certify.Config(**{**base, **kwargs})


@pytest.fixture(scope="module")
def full_run(setup):
  """An uninterrupted run over two models with a sigma sweep."""
  tmp, _ = setup
  out = tmp / "full"
  config = _config(tmp, models=(str(tmp / "clean"), str(tmp / "craft-run")),
                   sigma_sweep=(0.05, 0.1), sweep_draws=4)
  return out, config, certify.run(config, out)


def _cli(capsys, argv):
  """Runs ``jaxue certify ARGV``; returns (exit status, stderr)."""
  capsys.readouterr()
  try:
    code = cli.main(["certify"] + argv)
  except SystemExit as e:  # argparse's own errors.
    code = e.code
  return code, capsys.readouterr().err


def _one_line(code, err, message):
  assert code == 2, err
  assert message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _flip_byte_of(path, array):
  """Corrupts ``path`` inside the bytes of ``array``."""
  blob = bytearray(path.read_bytes())
  at = bytes(blob).find(np.ascontiguousarray(array).tobytes())
  assert at >= 0
  blob[at + 3] ^= 0xFF
  path.write_bytes(bytes(blob))


def test_results_figures_report_and_certificates(setup, full_run):
  tmp, data = setup
  out, _, results = full_run
  saved = runs.read_json(out / "results.json")
  for key in ("dataset", "test_size", "test", "sigma", "q", "draws",
              "confidence", "mode", "etas", "models", "min_draws", "devices",
              "wall_seconds", "jaxue_version", "config"):
    assert key in saved, key
  assert saved["dataset"] == "fashion_mnist" and saved["test_size"] == 100
  assert list(saved["models"]) == ["clean", "surrogate"]
  assert saved["mode"] == "per_eta" and saved["draws"] == 16
  assert set(saved["min_draws"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
  report = (out / "report.md").read_text()
  for name, record in saved["models"].items():
    curve = record["curve"]
    assert [e for e, _ in curve] == list(ETAS)
    assert curve[0][1] is not None and curve[-1][1] is None  # Abstains.
    assert record["largest_certified_eta"] == 0.01
    summary = record["accuracy_summary"]
    assert set(summary) == {"mean", "std", "min", "max", "q_quantile",
                            "unperturbed"}
    assert 0 <= summary["min"] <= summary["q_quantile"] <= summary["max"]
    assert record["draws_per_second"] > 0
    assert record["computed_draws"] == 16
    assert set(record["sigma_sweep"]) == {"0.05", "0.1"}
    for number in (summary["mean"], summary["q_quantile"],
                   record["sigma_sweep"]["0.1"]["max"]):
      assert f"{number:.4f}" in report
    certificate = runs.read_json(out / record["certificate"])
    assert certificate["model_sha256"] == record["model_sha256"]
    assert certificate["test"] == saved["test"]
    assert certificate["curve"] == curve
    arrays, meta = runs.load_arrays(out / record["accuracies"])
    np.testing.assert_array_equal(arrays["accuracies"],
                                  results["accuracies"][name])
    assert meta["model_sha256"] == record["model_sha256"]
  needed = certify_lib.min_draws(q=0.9, sigma=0.05, eta=0.1, confidence=0.5)
  assert saved["min_draws"]["0.1"] == needed
  assert "abstain" in report and f"0.1: {needed:,}" in report  # Sizing.
  for png in ("certified_learnability.png", "sigma_sweep.png"):
    assert (out / png).stat().st_size > 0

  # Segments of 4 draws equal one library call with the same key.
  model, variables, _ = runs.load_model(tmp / "clean")
  main_key, _ = jax.random.split(jax.random.key(0))
  want = certify_lib.sample_accuracies(main_key, model.apply, variables,
                                       *data.test, sigma=0.05, num_draws=16)
  assert np.array_equal(results["accuracies"]["clean"], want)


def test_rerun_computes_nothing_and_other_settings_are_refused(
    setup, full_run, capsys):
  tmp, _ = setup
  out, config, first = full_run
  ckpt = out / "draws" / "clean" / "ckpt" / "step_000000016" / "arrays.npz"
  mtime = ckpt.stat().st_mtime_ns
  capsys.readouterr()
  again = certify.run(dataclasses.replace(config, quiet=False,
                                          segment_draws=8), out)
  assert "nothing to compute" in capsys.readouterr().out
  assert ckpt.stat().st_mtime_ns == mtime
  for name in ("clean", "surrogate"):
    assert again["models"][name]["computed_draws"] == 0
    assert again["models"][name]["curve"] == first["models"][name]["curve"]
    assert np.array_equal(again["accuracies"][name],
                          first["accuracies"][name])
  code, err = _cli(capsys, ["--models", f"{tmp / 'clean'},"
                            f"{tmp / 'craft-run'}", "--out", str(out),
                            "--sigma-sweep", "0.05,0.1", "--sweep-draws",
                            "4", "--sigma", "0.2"] + FLAGS)
  _one_line(code, err, "--overwrite")
  assert "sigma" in err


@pytest.mark.parametrize("kill_at", ["certify:segment:2",
                                     "checkpoint:before-commit:2"])
def test_resume_after_sigkill_is_bit_identical(setup, full_run, tmp_path,
                                               kill_at, capsys):
  tmp, _ = setup
  out = tmp_path / "killed"
  argv = ["--models", str(tmp / "clean"), "--out", str(out),
          "--sigma-sweep", ""] + FLAGS
  env = dict(os.environ, JAXUE_KILL_AT=kill_at, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                          else []))
  proc = subprocess.run(
      [sys.executable, "-m", "jaxue", "certify", "--cpu-devices", "1"] +
      argv, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert not (out / "results.json").exists()
  ckpts = runs.Checkpoints(out / "draws" / "clean" / "ckpt")
  assert ckpts.steps() == [4]  # The first segment survived, not the second.

  if kill_at.startswith("certify"):
    # A flipped byte in the saved draws: one line naming the file.
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    npz = broken / "draws" / "clean" / "ckpt" / "step_000000004" / (
        "arrays.npz")
    _flip_byte_of(npz, runs.load_arrays(npz)[0]["['accuracies']"])
    code, err = _cli(capsys, argv[:3] + [str(broken)] + argv[4:])
    _one_line(code, err, "arrays.npz")

  assert _cli(capsys, argv)[0] == 0
  results = runs.read_json(out / "results.json")
  assert results["models"]["clean"]["computed_draws"] == 12
  resumed, _ = runs.load_arrays(out / "certificates" / "clean.npz")
  assert np.array_equal(resumed["accuracies"],
                        full_run[2]["accuracies"]["clean"])


def test_corrupt_model_is_named(setup, tmp_path, capsys):
  tmp, _ = setup
  model = tmp_path / "model"
  shutil.copytree(tmp / "clean", model)
  arrays, _ = runs.load_arrays(model / "variables.npz")
  _flip_byte_of(model / "variables.npz", max(arrays.values(),
                                             key=lambda a: a.size))
  code, err = _cli(capsys, ["--models", str(model), "--out",
                            str(tmp_path / "out")] + FLAGS)
  _one_line(code, err, "variables.npz")
  assert not (tmp_path / "out").exists()


def test_other_datasets_are_refused(setup, tmp_path, capsys):
  tmp, _ = setup
  base = ["--out", str(tmp_path / "out")] + FLAGS
  code, err = _cli(capsys, ["--models", str(tmp / "clean"), "--dataset",
                            "mnist"] + base)
  _one_line(code, err, "--dataset mnist contradicts the model's dataset "
            "fashion_mnist")
  # A model made from MNIST (its model.json says so).
  mnist = tmp_path / "mnist-model"
  shutil.copytree(tmp / "clean", mnist)
  description = runs.read_json(mnist / "model.json")
  description["dataset"]["name"] = "mnist"
  runs.write_json(mnist / "model.json", description)
  code, err = _cli(capsys, ["--models", f"{tmp / 'clean'},{mnist}"] + base)
  _one_line(code, err, "trained on different datasets")
  code, err = _cli(capsys, ["--models", str(mnist), "--dataset",
                            "fashion_mnist"] + base)
  _one_line(code, err, "contradicts the model's dataset mnist")
  # The architecture comes from model.json: no --model / --widths here.
  code, err = _cli(capsys, ["--models", str(tmp / "clean"), "--widths",
                            "4,8,8"] + base)
  assert code == 2 and "unrecognized arguments: --widths" in err
  # No abbreviations: "--model" is not read as "--models".
  code, err = _cli(capsys, base + ["--model", "small_cnn"])
  assert code == 2 and "unrecognized arguments: --model" in err


_DEVICES_SCRIPT = """
import json, sys
import numpy as np
import jax
from jaxue.pipelines import certify
assert jax.device_count() == 8, jax.devices()
base = dict(models=(sys.argv[1],), draws=16, segment_draws=4, test_size=100,
            etas=(0.001, 0.01, 0.1), confidence=0.5, sigma_sweep=(0.05,),
            sweep_draws=4, quiet=True)
many = certify.run(certify.Config(**base), sys.argv[2] + "/many")
one = certify.run(certify.Config(**base, devices="1"), sys.argv[2] + "/one")
assert many["devices"] == 8 and one["devices"] == 1
a, b = many["accuracies"]["clean"], one["accuracies"]["clean"]
assert np.array_equal(a, b), (a, b)
assert many["models"]["clean"]["curve"] == one["models"]["clean"]["curve"]
assert (many["models"]["clean"]["sigma_sweep"] ==
        one["models"]["clean"]["sigma_sweep"])
print("ACCURACIES", json.dumps(a.tolist()))
"""


def test_eight_devices_give_the_accuracies_of_one(setup, full_run, tmp_path,
                                                  run_on_fake_devices):
  tmp, _ = setup
  proc = run_on_fake_devices(_DEVICES_SCRIPT, str(tmp / "clean"),
                             str(tmp_path), timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = next(l for l in proc.stdout.splitlines()
              if l.startswith("ACCURACIES"))
  got = np.asarray(json.loads(line.split(" ", 1)[1]))
  assert np.array_equal(got, full_run[2]["accuracies"]["clean"])


@pytest.mark.parametrize("extra,message", [
    (["--q", "1.5"], "--q must be a number in (0, 1)"),
    (["--q", "0"], "--q must be a number in (0, 1)"),
    (["--sigma", "0"], "--sigma must be a finite number > 0"),
    (["--sigma", "-0.1"], "--sigma must be a finite number > 0"),
    (["--etas", "0.1,-1"], "--etas entries must be a finite number >= 0"),
    (["--sigma-sweep", "0.1,0"], "--sigma-sweep entries must be a finite"),
    (["--draws", "0"], "--draws must be an integer >= 1"),
    (["--simultaneous", "dkw", "--confidence", "0.3"], "Massart"),
    (["--simultaneous", "all"], "unknown 'all'"),
    (["--process-id", "1"], "need --distributed"),
    (["--devices", "2"], "--devices: unknown '2'"),
    (["--names", "a,b"], "--names gives 2 labels for 1 models"),
    (["--test-size", "100000"], "exceeds the 10000 images"),
])
def test_bad_flags_are_one_line(setup, tmp_path, capsys, extra, message):
  tmp, _ = setup
  argv = ["--models", str(tmp / "clean"), "--out", str(tmp_path / "o")]
  code, err = _cli(capsys, argv + FLAGS + extra)
  _one_line(code, err, message)
  assert not (tmp_path / "o" / "results.json").exists()


def test_unparsable_flags_exit_2(setup, tmp_path, capsys):
  tmp, _ = setup
  code, err = _cli(capsys, ["--models", str(tmp / "clean"), "--out",
                            str(tmp_path / "o"), "--etas", "nan"])
  assert code == 2 and "not a comma-separated list of numbers" in err


def test_models_that_are_not_there(setup, tmp_path, capsys):
  tmp, _ = setup
  out = ["--out", str(tmp_path / "o")]
  _one_line(*_cli(capsys, ["--models", str(tmp_path / "nope")] + out),
            "nope does not exist")
  (tmp_path / "empty-run").mkdir()
  _one_line(*_cli(capsys, ["--models", str(tmp_path / "empty-run")] + out),
            "holds no model")
  _one_line(*_cli(capsys, out), "--models is required")
  _one_line(*_cli(capsys, ["--models", f"{tmp / 'clean'},{tmp / 'clean'}"] +
                  out), "two models are named")


def test_default_names_are_qualified_when_they_collide(setup, tmp_path):
  tmp, _ = setup
  other = tmp_path / "other-run"
  shutil.copytree(tmp / "craft-run", other)
  found = certify.find_models([str(tmp / "craft-run"), str(other),
                               str(tmp / "clean")])
  assert [name for name, _ in found] == [
      "craft-run/surrogate", "other-run/surrogate", "clean"]
  found = certify.find_models([str(tmp / "craft-run")], names=["em"])
  assert found == [("em", tmp / "craft-run" / "models" / "surrogate")]


# ------------------------------------------------ expected, target, plan
def test_expected_certificate_beside_the_quantile_curve(setup, full_run):
  tmp, _ = setup
  out, _, results = full_run
  saved = runs.read_json(out / "results.json")
  assert saved["mean_bound"] == "betting" and saved["target_eta"] is None
  report = (out / "report.md").read_text()
  assert "clean quantile" in report and "clean expected" in report
  for name, record in saved["models"].items():
    acc = results["accuracies"][name]
    expected = record["expected"]
    assert [e for e, _ in expected["curve"]] == list(ETAS)
    want = certify_lib.expected_learnability_curve(
        acc, sigma=0.05, etas=ETAS, confidence=0.5)
    assert expected["upper_mean"] == want.upper_mean >= acc.mean()
    assert [v for _, v in expected["curve"]] == list(want.values)
    assert not expected["anytime"] and expected["method"] == "betting"
    assert f"{want.upper_mean:.4f}" in report
    certificate = runs.read_json(out / record["certificate"])
    assert certificate["format"] == certify.CERTIFICATE_FORMAT
    assert certificate["bounds"]["expected"]["curve"] == expected["curve"]
    assert certificate["bounds"]["quantile"]["curve"] == record["curve"]
    model, variables, _ = runs.load_model(record["path"])
    assert certificate["params_sha256"] == certify.params_sha256(variables)
    assert certificate["package"]["version"] and len(
        certificate["package"]["sha256"]) == 64
    assert certificate["key"]["seed"] == 0
    assert certificate["etas"] == list(ETAS) and certificate["n"] == 16
    assert certificate["backend"] == "cpu"


def test_target_eta_stops_at_the_first_certified_look(setup, tmp_path,
                                                      monkeypatch):
  """Looks at 4, 8, 16, 32, 64 draws (J = 5, per-look confidence 0.9):
  eta = 0.005 needs 27 draws at 0.9, so the run stops at the 4th look. A
  crash after the 3rd segment resumes to the same looks and accuracies."""
  tmp, data = setup
  config = _config(tmp, draws=4, draws_max=64, target_eta=0.005,
                   segment_draws=4)
  assert config.schedule() == (4, 8, 16, 32, 64)
  need = certify_lib.min_draws(q=0.9, sigma=0.05, eta=0.005,
                               confidence=0.9)
  assert 16 < need <= 32

  calls = []
  real = runs.fault_point

  def crash_at_third_segment(name):
    real(name)
    if name == "certify:segment":
      calls.append(name)
      if len(calls) == 3:
        raise RuntimeError("simulated crash")

  monkeypatch.setattr(runs, "fault_point", crash_at_third_segment)
  with pytest.raises(RuntimeError, match="simulated crash"):
    certify.run(config, tmp_path / "target")
  monkeypatch.setattr(runs, "fault_point", real)
  results = certify.run(config, tmp_path / "target")
  record = results["models"]["clean"]
  seq = record["sequential"]
  assert [look["draws"] for look in seq["looks"]] == [4, 8, 16, 32]
  assert [look["certified"] for look in seq["looks"]] == [False] * 3 + [True]
  assert seq["certified"] and seq["stopped_at"] == 32 == record["draws"]
  assert record["computed_draws"] == 32 - 8  # Two segments survived.
  assert seq["look_confidence"] == pytest.approx(0.9)
  assert record["confidence"] == pytest.approx(0.9)  # The spent level.
  assert record["expected"]["anytime"]
  acc = results["accuracies"]["clean"]
  model, variables, _ = runs.load_model(tmp / "clean")
  main_key, _ = jax.random.split(jax.random.key(0))
  want = certify_lib.sample_accuracies(main_key, model.apply, variables,
                                       *data.test, sigma=0.05, num_draws=32)
  assert np.array_equal(acc, want)
  for look in seq["looks"]:
    again = certify_lib.check_target(
        want[:look["draws"]], eta=0.005, q=0.9, sigma=0.05, confidence=0.5,
        num_looks=5)
    assert again.to_json() == look
  # A rerun replays the looks and computes nothing.
  again = certify.run(config, tmp_path / "target")
  assert again["models"]["clean"]["computed_draws"] == 0
  assert again["models"]["clean"]["sequential"] == seq
  # The budget spent without a certificate: every look recorded.
  short = certify.run(dataclasses.replace(config, draws_max=16,
                                          target_value=0.0),
                      tmp_path / "short")
  seq = short["models"]["clean"]["sequential"]
  assert [look["draws"] for look in seq["looks"]] == [4, 8, 16]
  assert not seq["certified"] and short["models"]["clean"]["draws"] == 16


def test_plan_sizes_each_kind_and_times_it(setup, tmp_path, capsys):
  tmp, _ = setup
  code, err = _cli(capsys, [
      "--models", str(tmp / "clean"), "--out", str(tmp_path / "plan"),
      "--plan", "--sweep-draws", "4", "--draws", "100", "--draws-max",
      "3200", "--target-eta", "0.1", "--target-value", "0.95",
      "--etas", "0.01,0.05,0.1", "--test-size", "100", "--quiet"])
  assert code == 0, err
  plan = runs.read_json(tmp_path / "plan" / "plan.json")
  assert plan["schedule"] == [100, 200, 400, 800, 1600, 3200]
  model = plan["models"]["clean"]
  assert model["seconds_per_draw"] > 0 and model["pilot_draws"] == 8
  for row in model["etas"]:
    n = certify_lib.min_draws(q=0.9, sigma=0.05, eta=row["eta"],
                              confidence=0.99)
    assert row["quantile_draws"] == n
    assert row["quantile_seconds"] == pytest.approx(
        n * model["seconds_per_draw"])
    c_look = certify_lib.look_confidence(0.99, 6)
    n_look = certify_lib.min_draws(q=0.9, sigma=0.05, eta=row["eta"],
                                   confidence=c_look)
    want = next((s for s in plan["schedule"] if s >= n_look), None)
    assert row["quantile_sequential_draws"] == want
    assert 0 < row["expected_limit"] <= 1
    assert "expected_draws" in row
  assert not (tmp_path / "plan" / "results.json").exists()
  assert not (tmp_path / "plan" / "draws").exists()


@pytest.mark.parametrize("extra,message", [
    (["--draws-max", "100"], "--draws-max needs --target-eta"),
    (["--target-value", "0.5"], "--target-value needs --target-eta"),
    (["--target-bound", "expected"], "--target-bound needs --target-eta"),
    (["--target-eta", "0.1", "--draws-max", "8"], "is below --draws"),
    (["--target-eta", "-1"], "--target-eta must be a finite number >= 0"),
    (["--target-eta", "0.1", "--target-value", "2"],
     "--target-value must be a number in [0, 1]"),
    (["--mean-bound", "hoeffding"], "unknown 'hoeffding'"),
])
def test_bad_target_flags_are_one_line(setup, tmp_path, capsys, extra,
                                       message):
  tmp, _ = setup
  argv = ["--models", str(tmp / "clean"), "--out", str(tmp_path / "o")]
  code, err = _cli(capsys, argv + FLAGS + extra)
  _one_line(code, err, message)


# --------------------------------------------------------- multi-host
_PROCESS_SCRIPT = """
import json, sys
import jax
from jaxue.pipelines import certify
model, out, port, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = certify.Config(
    models=(model,), draws=16, segment_draws=4, test_size=100,
    etas=(0.001, 0.01, 0.1), confidence=0.5, sigma_sweep=(), quiet=True,
    distributed=True, coordinator_address=f"127.0.0.1:{port}",
    num_processes=2, process_id=pid)
results = certify.run(config, out)
assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
print("RESULT", json.dumps({
    "accuracies": results["accuracies"]["clean"].tolist(),
    "computed": results["models"]["clean"]["computed_draws"]}))
"""


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two(model, out, kill_at=None):
  """Two processes on localhost (CPU, gloo collectives, 1 device each)."""
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.pop("JAXUE_KILL_AT", None)
    if kill_at and pid == 1:
      env["JAXUE_KILL_AT"] = kill_at
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                            else []))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", _PROCESS_SCRIPT, str(model), str(out),
         str(port), str(pid)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  return procs


def _result(proc, timeout=120):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  line = next(l for l in out.splitlines() if l.startswith("RESULT"))
  return json.loads(line.split(" ", 1)[1])


def test_two_processes_equal_one_and_resume_after_a_kill(setup, full_run,
                                                         tmp_path):
  """jax.distributed over 2 localhost processes (CPU collectives: gloo, one
  device each, so a segment is 8 draws): process 1 is SIGKILLed after the
  1st segment, process 0 once it has saved that segment (as a scheduler
  would end the job), and both are restarted: the run resumes from the
  saved segment, and every accuracy equals the 1-process run's."""
  tmp, _ = setup
  one = full_run[2]["accuracies"]["clean"]
  out = tmp_path / "two"
  ckpt = runs.Checkpoints(out / "draws" / "clean" / "ckpt")
  first, second = _start_two(tmp / "clean", out, kill_at="certify:segment:1")
  second.communicate(timeout=120)
  assert second.returncode == -9
  for _ in range(600):  # Process 0 saves the segment it shares with 1.
    if ckpt.steps() or first.poll() is not None:
      break
    time.sleep(0.1)
  first.kill()
  first.communicate(timeout=60)
  assert ckpt.steps() == [8]
  _, tree, _ = ckpt.restore({"accuracies": np.zeros((8,))})
  assert np.array_equal(tree["accuracies"], one[:8])
  assert not (out / "results.json").exists()

  results = [_result(p) for p in _start_two(tmp / "clean", out)]
  for r in results:  # Both processes hold all accuracies.
    assert np.array_equal(np.asarray(r["accuracies"]), one)
    assert r["computed"] == 8
  saved, _ = runs.load_arrays(out / "certificates" / "clean.npz")
  assert np.array_equal(saved["accuracies"], one)
  assert runs.read_json(out / "results.json")["processes"] == 2
