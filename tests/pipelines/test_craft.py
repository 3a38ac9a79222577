"""`jaxue craft`: every method family, resume after SIGKILL (bit for bit),
integrity of checkpoints, config refusal and one-line flag errors."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxue import cli
from jaxue import data
from jaxue import noise as noise_lib
from jaxue import runs
from jaxue import train
from jaxue.pipelines import craft

from . import fakes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("craft")


@pytest.fixture(scope="module")
def data_dir(tmp):
  return fakes.fake_idx_dir(tmp / "data")


def _common_flags(data_dir):
  return ["--data-dir", str(data_dir), "--train-size", "200", "--widths",
          "4,8,8", "--quiet"]


# Tiny settings of the checkpointing methods: a few rounds / blocks each.
FAULT_CONFIGS = {
    "em": dict(method="em-classwise", max_rounds=3, stop_error=0.0,
               train_steps=2),
    # Round 1 reaches 0.7 noisy accuracy: round 2 takes the robust steps.
    "pue": dict(method="pue-classwise", max_rounds=3, stop_error=0.0,
                train_steps=10, sigma_step=0.025, surrogate_draws=1,
                noise_draws=1),
    # 3 surrogate steps, then 2 regeneration batches: 5 units.
    "rem": dict(method="rem", rem_train_steps=3, checkpoint_every=1,
                noise_steps=1, eot_draws=1, attack_steps=1),
}
_RUN_SCRIPT = """
import ast, sys
from jaxue.pipelines import craft
craft.run(craft.Config(**ast.literal_eval(sys.argv[1])), sys.argv[2])
"""


def _fault_config(family, data_dir):
  return dict(FAULT_CONFIGS[family], data_dir=str(data_dir), train_size=200,
              widths=(4, 8, 8), quiet=True)


def _craft_process(out, family, data_dir, *, tmp, kill_at=None):
  """``craft.run`` in a fresh process (one CPU device, as this one; a
  compilation cache shared by these processes)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax-cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  env.pop("JAXUE_KILL_AT", None)
  env.pop("XLA_FLAGS", None)
  if kill_at:
    env["JAXUE_KILL_AT"] = kill_at
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                          else []))
  return subprocess.run(
      [sys.executable, "-c", _RUN_SCRIPT,
       repr(_fault_config(family, data_dir)), str(out)], env=env,
      capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def reference(tmp, data_dir):
  """Uninterrupted runs of the checkpointing methods: family -> run dir."""
  done = {}

  def get(family):
    if family not in done:
      out = tmp / f"ref-{family}"
      proc = _craft_process(out, family, data_dir, tmp=tmp)
      assert proc.returncode == 0, proc.stderr
      done[family] = out
    return done[family]

  return get


def _arrays(path):
  arrays, meta = runs.load_arrays(path)
  return arrays, meta


def _assert_same_outputs(ref, out):
  for name in ("noise.npz", "release.npz"):
    expected, _ = _arrays(ref / name)
    got, _ = _arrays(out / name)
    assert set(expected) == set(got)
    for key in expected:
      assert np.array_equal(expected[key], got[key]), (name, key)
  expected, _ = _arrays(ref / "models" / "surrogate" / "variables.npz")
  got, _ = _arrays(out / "models" / "surrogate" / "variables.npz")
  assert all(np.array_equal(expected[k], got[k]) for k in expected)


# EM/PUE checkpoint N holds round N; REM's holds the first N units. The
# "write:before-rename" point counts every atomic write: run.json (1),
# stage.json (2), then the first checkpoint's arrays.npz (3) and meta.json
# (4); the 5th lands inside the second checkpoint.
# The first test of a family also makes its reference run (cold compiles:
# 20-40 s on 2 busy cores), hence slow.
@pytest.mark.parametrize("family,kill_at,last_checkpoint", [
    pytest.param("em", "craft:round:2", 0, marks=pytest.mark.slow),
    ("em", "checkpoint:before-commit:2", 0),
    ("em", "checkpoint:before-prune:2", 1),
    ("em", "write:before-rename:5", 0),
    pytest.param("pue", "craft:round:2", 0, marks=pytest.mark.slow),
    pytest.param("rem", "craft:round:2", 1,  # In the surrogate steps.
                 marks=pytest.mark.slow),
    ("rem", "checkpoint:before-prune:4", 4),  # In the regeneration.
])
def test_sigkill_then_resume_is_bit_identical(tmp, data_dir, reference,
                                              family, kill_at,
                                              last_checkpoint):
  ref = reference(family)
  out = tmp / f"kill-{family}-{kill_at.replace(':', '-')}"
  proc = _craft_process(out, family, data_dir, tmp=tmp, kill_at=kill_at)
  assert proc.returncode == -9, proc.stderr
  assert not (out / "release.npz").exists()
  assert runs.Checkpoints(out / "craft" / "ckpt").steps()[-1] == (
      last_checkpoint)
  proc = _craft_process(out, family, data_dir, tmp=tmp)
  assert proc.returncode == 0, proc.stderr
  results = json.loads((out / "results.json").read_text())
  if family == "rem":
    assert results["craft"]["resumed_from_step"] == last_checkpoint
  else:
    assert results["craft"]["resumed_from_round"] == last_checkpoint + 1
  _assert_same_outputs(ref, out)
  # Finished: the stage is done and its checkpoints are gone.
  assert (out / "craft" / "result.json").exists()
  assert not (out / "craft" / "ckpt").exists()


def test_checkpointing_families_write_their_files(reference):
  for family, method in (("em", "em-classwise"), ("pue", "pue-classwise"),
                         ("rem", "rem")):
    out = reference(family)
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == method
    assert results["epsilon"] == pytest.approx(32 / 255)
    release, meta = _arrays(out / "release.npz")
    assert release["images"].dtype == np.uint8
    assert release["images"].shape == (200, 28, 28, 1)
    assert release["labels"].dtype == np.int32
    assert meta["method"] == method and meta["dataset_name"] == (
        "fashion_mnist")
    assert meta["dataset"]["shape"] == [200, 28, 28, 1]
    assert meta["model"]["widths"] == [4, 8, 8]
    assert meta["mode"] == ("samplewise" if family == "rem" else
                            "classwise")
    noise, _ = _arrays(out / "noise.npz")
    lead = 200 if family == "rem" else 10
    assert noise["noise"].shape == (lead, 28, 28, 1)
    assert np.abs(noise["noise"]).max() <= 32 / 255 + 1e-6
    model, variables, description = runs.load_model(
        out / "models" / "surrogate", dataset=meta["dataset"])
    assert model.num_classes == 10 and set(variables) == {"params",
                                                          "batch_stats"}
    assert description["extra"]["method"] == method
  em = json.loads((reference("em") / "results.json").read_text())
  assert em["craft"]["rounds"] == 3
  pue = json.loads((reference("pue") / "results.json").read_text())
  assert pue["craft"]["pue"]["surrogate_draws"] == 1
  rem = json.loads((reference("rem") / "results.json").read_text())
  assert rem["craft"]["block_steps"] == [1, 2, 3, 4, 5]  # 3 + 2 batches.


def test_finished_run_returns_saved_results(reference, data_dir,
                                            monkeypatch):
  out = reference("em")
  saved = json.loads((out / "results.json").read_text())

  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished craft was recomputed")

  monkeypatch.setattr(noise_lib, "craft", must_not_run)
  # data_parallel is a runtime setting: not in the run's fingerprint.
  config = craft.Config(**_fault_config("em", data_dir), data_parallel=True)
  assert craft.run(config, out) == saved


def test_corrupt_checkpoint_is_one_line_naming_the_file(tmp, data_dir,
                                                        monkeypatch, capsys):
  """An interrupted run's checkpoint with a flipped byte is refused on
  resume, naming arrays.npz."""
  out = tmp / "corrupt"
  calls = []

  class Interrupted(Exception):
    pass

  def interrupt(name):
    if name == "craft:round":
      calls.append(name)
      if len(calls) == 2:
        raise Interrupted

  monkeypatch.setattr(runs, "fault_point", interrupt)
  argv = ["craft", "--out", str(out), "--method", "em-classwise",
          "--max-rounds", "3", "--stop-error", "0", "--train-steps", "2"
          ] + _common_flags(data_dir)
  with pytest.raises(Interrupted):
    cli.main(argv)
  monkeypatch.undo()
  arrays = out / "craft" / "ckpt" / "step_000000000" / "arrays.npz"
  raw = bytearray(arrays.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  arrays.write_bytes(bytes(raw))
  capsys.readouterr()
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert err.startswith("jaxue craft: error:") and "arrays.npz" in err
  assert "corrupt" in err


def test_rerun_with_other_settings_is_refused(tmp, data_dir, capsys):
  out = tmp / "random"
  base = ["craft", "--out", str(out), "--method", "random"] + _common_flags(
      data_dir)
  assert cli.main(base + ["--epsilon", "8/255"]) == 0
  assert cli.main(base + ["--epsilon", "8/255"]) == 0  # Same: resumes.
  capsys.readouterr()
  assert cli.main(base + ["--epsilon", "16/255"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "epsilon" in err
  assert "--overwrite" in err
  released, meta = _arrays(out / "release.npz")
  assert meta["epsilon"] == pytest.approx(8 / 255)
  assert cli.main(base + ["--epsilon", "16/255", "--overwrite"]) == 0
  _, meta = _arrays(out / "release.npz")
  assert meta["epsilon"] == pytest.approx(16 / 255)
  clean, _ = data.load("fashion_mnist", "train", str(data_dir))
  diff = np.abs(released["images"].astype(int)
                - clean[released["train_indices"]].astype(int))
  assert diff.max() <= 8 + 1e-9  # round(x + delta) moves <= 8/255.


def test_model_free_ops_lsp_and_ar(tmp, data_dir, capsys):
  flags = _common_flags(data_dir)
  clean, _ = data.load("fashion_mnist", "train", str(data_dir))

  tmp = tmp / "model-free"

  def run(name, *extra):
    assert cli.main(["craft", "--out", str(tmp / name), "--method", name,
                     *extra] + flags) == 0
    return json.loads((tmp / name / "results.json").read_text())

  ops = run("ops")
  assert ops["pixels_changed"] == 1 and ops["epsilon"] is None
  assert ops["model"] is None and len(ops["craft"]["positions"]) == 10
  assert not (tmp / "ops" / "models").exists()
  release, meta = _arrays(tmp / "ops" / "release.npz")
  released, labels = release["images"], release["labels"]
  assert meta["pixels_changed"] == 1 and meta["mode"] == "samplewise"
  assert released.dtype == np.uint8 and released.shape == (200, 28, 28, 1)
  changed = (released != clean[release["train_indices"]]).reshape(
      200, -1).sum(1)
  assert changed.max() <= 1
  noise, _ = _arrays(tmp / "ops" / "noise.npz")
  rows, cols = noise["ops_positions"][labels].T
  np.testing.assert_array_equal(released[np.arange(200), rows, cols, 0],
                                noise["ops_values"][labels, 0] * 255)

  lsp = run("lsp", "--patch-size", "14")
  assert lsp["l2_epsilon"] == pytest.approx(28 * 6 / 255)
  assert lsp["noise_l2_max"] <= lsp["l2_epsilon"] + 1e-4
  assert lsp["noise_shape"] == [10, 28, 28, 1] and lsp["mode"] == "classwise"
  assert lsp["craft"]["patch_size"] == 14 and lsp["epsilon"] is None

  ar = run("ar", "--l2-epsilon", "0.5")
  assert ar["l2_epsilon"] == 0.5 and ar["noise_shape"] == [200, 28, 28, 1]
  assert ar["noise_l2_max"] <= 0.5 + 1e-4
  noise, _ = _arrays(tmp / "ar" / "noise.npz")
  assert noise["ar_coefficients"].shape[:2] == (10, 1)
  # Ten classes: the published CIFAR-10 distinctness bound by default.
  assert ar["craft"]["min_response"] == 10.0

  random = run("random")
  assert random["epsilon"] == pytest.approx(32 / 255)  # Grayscale default.
  assert random["noise_shape"] == [200, 28, 28, 1]
  assert random["noise_linf"] <= 32 / 255 + 1e-6


@pytest.mark.parametrize("augment", [True, False])
def test_error_max_surrogate_augmentation(tmp, data_dir, monkeypatch,
                                          augment):
  """Error-max's clean surrogate trains with the dataset's standard
  augmentation (as the reference's attacked model does) unless told not
  to."""
  seen = []
  real_train_victim = train.train_victim

  def recording(*args, **kwargs):
    seen.append(kwargs.get("augment"))
    return real_train_victim(*args, **kwargs)

  monkeypatch.setattr(train, "train_victim", recording)
  out = tmp / f"error-max-{augment}"
  config = craft.Config(method="error-max", data_dir=str(data_dir),
                        train_size=200, test_size=60, widths=(4, 4, 4),
                        clean_epochs=1, pgd_steps=2, epsilon=16 / 255,
                        surrogate_augment=augment, quiet=True)
  result = craft.run(config, out)
  assert result["craft"]["surrogate_augment"] is augment
  assert 0 <= result["craft"]["surrogate_test_accuracy"] <= 1
  assert len(seen) == 1
  if augment:
    assert seen[0].keywords == data.default_augmentation(
        (28, 28, 1)).keywords
  else:
    assert seen[0] is None
  noise, _ = _arrays(out / "noise.npz")
  assert np.abs(noise["noise"]).max() <= 16 / 255 + 1e-6
  assert (out / "models" / "surrogate" / "model.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["--epsilon", "0"], "--epsilon must be a number in (0, 1)"),
    (["--epsilon", "300/255"], "--epsilon must be a number in (0, 1)"),
    (["--method", "magic"], "--method: unknown 'magic'"),
    (["--dataset", "imagenet"], "--dataset: unknown 'imagenet'"),
    (["--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--method", "ops", "--l2-epsilon", "1"],
     "--l2-epsilon applies to --method ar and lsp only"),
    (["--method", "lsp", "--ar-min-response", "3"],
     "--ar-min-response applies to --method ar only"),
    (["--method", "ar", "--ar-min-response", "-1"],
     "--ar-min-response must be a finite number > 0"),
    (["--method", "rem", "--surrogate-draws", "3"],
     "--surrogate-draws applies to --method pue-classwise and "
     "pue-samplewise only"),
    (["--method", "em-classwise", "--rho-a", "2/255"],
     "--rho-a applies to --method rem only"),
    (["--method", "em-classwise", "--reference-loss-scale"],
     "--reference-loss-scale applies to --method pue-classwise"),
    (["--method", "random", "--no-surrogate-augment"],
     "--surrogate-augment applies to --method error-max and "
     "error-max-targeted only"),
    (["--method", "lsp", "--epsilon", "8/255"],
     "--epsilon does not apply to --method lsp (its budget is an L2 norm"),
    (["--method", "ar", "--max-rounds", "3"],
     "--max-rounds applies to --method em-samplewise"),
    (["--method", "em-classwise", "--stop-error", "1"],
     "--stop-error must be a number in [0, 1)"),
    (["--method", "pue-classwise", "--sigma-step", "0"],
     "--sigma-step must be a finite number > 0"),
])
def test_bad_flags_one_line(tmp, capsys, argv, message):
  out = tmp / "bad"
  assert cli.main(["craft", "--out", str(out)] + argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("jaxue craft: error:") and message in err, err
  assert "Traceback" not in err and len(err.splitlines()) == 1
  assert not (out / "run.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["--method", "random", "--train-size", "100000000"],
     "exceeds the 240 images"),
    (["--method", "lsp", "--patch-size", "5", "--train-size", "200"],
     "patch_size 5 does not divide the 28x28"),
    (["--method", "em-classwise", "--train-size", "100"],
     "below the surrogate batch of 128"),
])
def test_bad_settings_found_before_the_run_directory(tmp, data_dir, capsys,
                                                     argv, message):
  """Errors found on loading the data leave no run behind, so that the
  corrected command can use the same --out."""
  out = tmp / "bad-data"
  assert cli.main(["craft", "--out", str(out), "--data-dir",
                   str(data_dir), "--quiet"] + argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err
  assert not out.exists()


def test_resolved_defaults_and_pue_reference_loss_scale():
  base = craft.Config(method="pue-classwise")
  resolved = craft.resolved(base)
  assert resolved.epsilon == pytest.approx(32 / 255)  # fashion_mnist.
  assert resolved.sigma_step == pytest.approx(base.sigma / 5)
  assert (resolved.surrogate_draws, resolved.noise_draws) == (100, 10)
  assert (resolved.pgd_steps, resolved.stop_error) == (1, 0.1)
  assert not craft.pue_config(resolved).reference_loss_scale
  scaled = dataclasses.replace(base, reference_loss_scale=True)
  assert craft.pue_config(craft.resolved(scaled)).reference_loss_scale
  # A flag left at its default and the same value given are one run.
  explicit = craft.Config(method="pue-classwise", epsilon=32 / 255,
                          surrogate_draws=100)
  assert craft.resolved(explicit) == resolved
  rem = craft.resolved(craft.Config(method="rem", epsilon=16 / 255,
                                    rem_train_steps=100))
  assert rem.rho_a == pytest.approx(8 / 255) and rem.lr_decay_every == 40
  assert craft.rem_config(rem).resolved().checkpoint_every == 200
  em = craft.resolved(craft.Config(method="em-samplewise"))
  assert (em.pgd_steps, em.stop_error, em.max_rounds) == (20, 0.01, 100)
  assert em.rho_a is None and em.sigma_step is None
  lsp = craft.resolved(craft.Config(method="lsp"))
  assert lsp.patch_size == 7 and lsp.epsilon is None


def test_help_lists_the_method_flags(capsys):
  with pytest.raises(SystemExit):
    cli.main(["craft", "--help"])
  text = capsys.readouterr().out
  for flag in ("--surrogate-draws", "--noise-draws", "--sigma-step",
               "--draw-chunk", "--reference-loss-scale", "--rho-a",
               "--rem-train-steps", "--checkpoint-every", "--clean-epochs",
               "--no-surrogate-augment", "--l2-epsilon", "--patch-size",
               "--ar-min-response", "--max-rounds", "--stop-error",
               "--pgd-steps", "--train-steps", "--sweep-batch-size",
               "--data-parallel", "--sigma", "--epsilon", "--overwrite"):
    assert flag in text, flag
