"""Smoke test of experiments.certify: results, resume and CLI errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import certify as certify_exp
from jaxue import certify
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import models
from jaxue import train
from tests.test_experiments import _fake_idx_dir

SPEC = {"name": "small_cnn", "num_classes": 10, "widths": [4, 4, 4]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("certify")
  model = models.make_model(**SPEC)
  for i, method in enumerate(("em-classwise", "random")):
    state = train.create_train_state(jax.random.key(i), model, (28, 28, 1),
                                     train.make_optimizer(0.1))
    checkpoint.save_model(tmp / f"ckpt{i}", state, model=SPEC,
                          input_shape=(28, 28, 1), extra={"method": method})
  return tmp, _fake_idx_dir(tmp / "data")


def _args(tmp, data_dir, out, *extra):
  return ["--checkpoint", str(tmp / "ckpt0"), "--checkpoint",
          str(tmp / "ckpt1"), "--out", str(out), "--data-dir", str(data_dir),
          "--n", "12", "--sweep-draws", "4", "--sigma-sweep", "0.05,0.1",
          "--test-size", "50", "--etas", "0.001,0.01,0.1",
          "--segment-draws", "4", *extra]


def test_certify_results_and_resume(setup, capsys):
  tmp, data_dir = setup
  out = tmp / "out"
  first = certify_exp.main(_args(tmp, data_dir, out))
  saved = json.loads((out / "results.json").read_text())
  for key in ("sigma", "q", "n", "confidence", "mode", "curves",
              "largest_certified_eta", "accuracy_summary", "sigma_sweep",
              "draws_per_second", "min_draws", "wall_seconds", "command",
              "commit", "config"):
    assert key in saved, key
  names = ["em-classwise", "random"]
  assert list(saved["curves"]) == names
  assert saved["n"] == 12 and saved["mode"] == "per_eta"
  for name in names:
    assert [e for e, _ in saved["curves"][name]] == [0.001, 0.01, 0.1]
    assert set(saved["sigma_sweep"][name]) == {"0.05", "0.1"}
    summary = saved["accuracy_summary"][name]
    assert set(summary) == {"mean", "std", "min", "max", "q_quantile",
                            "unperturbed"}
    assert 0 <= summary["min"] <= summary["q_quantile"] <= summary["max"] <= 1
    assert saved["draws_per_second"][name] > 0
  assert set(saved["min_draws"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
  for png in ("certified_learnability.png", "sigma_sweep.png"):
    assert (out / png).exists()

  npz = out / "accuracies-em-classwise.npz"
  with np.load(npz) as f:
    acc = f["accuracies"]
  assert acc.shape == (12,)
  # Three segments of 4 draws equal one library call with the same key.
  model, variables, _ = checkpoint.load_model(tmp / "ckpt0")
  x_test, y_test = data_lib.load("fashion_mnist", "test", data_dir)
  main_key, _ = jax.random.split(jax.random.key(0))
  want = certify.sample_accuracies(main_key, model.apply, variables,
                                   x_test[:50], y_test[:50], sigma=0.05,
                                   num_draws=12)
  np.testing.assert_array_equal(acc, want)
  assert first["accuracy_summary"]["em-classwise"]["mean"] == pytest.approx(
      want.mean())

  mtime = npz.stat().st_mtime_ns
  capsys.readouterr()
  again = certify_exp.main(_args(tmp, data_dir, out))
  text = capsys.readouterr().out
  assert "nothing to compute" in text
  assert again["computed_draws"] == {"em-classwise": 0, "random": 0}
  assert npz.stat().st_mtime_ns == mtime
  assert again["curves"] == saved["curves"]

  # Another σ in the same --out is refused.
  with pytest.raises(SystemExit) as e:
    certify_exp.main(_args(tmp, data_dir, out, "--sigma", "0.2"))
  assert e.value.code == 2
  assert "use another --out" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--q", "1.5"), ("--q", "0"),
                                        ("--sigma", "0"),
                                        ("--sigma", "-0.1")])
def test_bad_flags_exit_2(setup, flag, value, capsys):
  tmp, data_dir = setup
  with pytest.raises(SystemExit) as e:
    certify_exp.main(_args(tmp, data_dir, tmp / "bad", flag, value))
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_dkw_needs_confidence_of_a_half(setup, capsys):
  tmp, data_dir = setup
  with pytest.raises(SystemExit) as e:
    certify_exp.main(_args(tmp, data_dir, tmp / "bad", "--simultaneous",
                           "dkw", "--confidence", "0.3"))
  assert e.value.code == 2
  assert "Massart" in capsys.readouterr().err
  assert not (tmp / "bad" / "results.json").exists()


def test_missing_checkpoint_is_named(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    certify_exp.main(["--checkpoint", str(tmp_path / "nope"), "--out",
                      str(tmp_path / "out")])
  assert e.value.code == 2
  assert "nope" in capsys.readouterr().err


_DEVICES_SCRIPT = """
import json, sys
import numpy as np
import jax
from experiments import certify as certify_exp
assert jax.device_count() == 8
argv = json.loads(sys.argv[1])
many = certify_exp.main(argv + ["--out", sys.argv[2] + "/many"])
one = certify_exp.main(argv + ["--out", sys.argv[2] + "/one", "--devices",
                               "1"])
assert many["devices"] == 8 and one["devices"] == 1, (many["devices"],
                                                      one["devices"])
for name in ("em-classwise", "random"):
  a = np.load(sys.argv[2] + f"/many/accuracies-{name}.npz")["accuracies"]
  b = np.load(sys.argv[2] + f"/one/accuracies-{name}.npz")["accuracies"]
  np.testing.assert_array_equal(a, b)
assert many["curves"] == one["curves"]
print("DEVICES_OK")
"""


def test_draws_sharded_over_fake_devices_match_one_device(
    setup, tmp_path, run_on_fake_devices):
  tmp, data_dir = setup
  argv = _args(tmp, data_dir, "unused")
  argv = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:]
  proc = run_on_fake_devices(_DEVICES_SCRIPT, json.dumps(argv),
                             str(tmp_path), timeout=300)
  assert proc.returncode == 0 and "DEVICES_OK" in proc.stdout, (
      proc.stderr[-4000:])


_CPU_DEVICES_SCRIPT = """
import json, sys
import numpy as np
import jax
from experiments import certify as certify_exp
argv = json.loads(sys.argv[1])
split = certify_exp.main(argv + ["--out", sys.argv[2] + "/split",
                                 "--cpu-devices", "3"])
assert jax.device_count() == 3, jax.devices()
one = certify_exp.main(argv + ["--out", sys.argv[2] + "/one", "--devices",
                               "1"])
assert split["devices"] == 3 and one["devices"] == 1
for name in ("em-classwise", "random"):
  a = np.load(sys.argv[2] + f"/split/accuracies-{name}.npz")["accuracies"]
  b = np.load(sys.argv[2] + f"/one/accuracies-{name}.npz")["accuracies"]
  np.testing.assert_array_equal(a, b)
print("CPU_DEVICES_OK")
"""


def test_cpu_devices_flag_splits_the_host(setup, tmp_path):
  tmp, data_dir = setup
  argv = _args(tmp, data_dir, "unused")
  argv = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parent.parent)
  proc = subprocess.run(
      [sys.executable, "-c", _CPU_DEVICES_SCRIPT, json.dumps(argv),
       str(tmp_path)], env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0 and "CPU_DEVICES_OK" in proc.stdout, (
      proc.stderr[-4000:])


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_cpu_devices_exit_2(setup, value, capsys):
  tmp, data_dir = setup
  with pytest.raises(SystemExit) as e:
    certify_exp.main(_args(tmp, data_dir, tmp / "bad") +
                     ["--cpu-devices", value])
  assert e.value.code == 2
  assert "--cpu-devices" in capsys.readouterr().err


def test_distributed_flags_need_distributed(setup, capsys):
  tmp, data_dir = setup
  with pytest.raises(SystemExit) as e:
    certify_exp.main(_args(tmp, data_dir, tmp / "bad", "--process-id", "1"))
  assert e.value.code == 2
  assert "need --distributed" in capsys.readouterr().err
