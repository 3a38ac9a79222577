"""End-to-end smoke runs of the experiment scripts and their CLI errors."""

import argparse
import json
import pathlib

import jax
import numpy as np
import pytest

from experiments import common
from experiments import craft
from experiments import evaluate
from experiments import quickstart
from jaxue import checkpoint
from jaxue import data
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
  # Resumed data-parallel (a mesh of this machine's one device here;
  # tests/test_parallel.py runs 8).
  result = craft.main(args + ["--max-rounds", "2", "--data-parallel"])
  printed = capsys.readouterr().out
  assert "resuming after round 0" in printed
  assert "data-parallel over 1 cpu device(s)" in printed
  assert result["craft"]["rounds"] == 2
  assert result["craft"]["resumed_from_round"] == 1
  assert result["epsilon"] == pytest.approx(16 / 255)
  noise = np.load(out / "noise.npz")["noise"]
  assert noise.shape == (10, 28, 28, 1)
  assert np.abs(noise).max() <= 16 / 255 + 1e-6
  ev = evaluate.main(["--released", str(out), "--data-dir", str(data_dir),
                      "--widths", "4,4,4", "--epochs", "1", "--out",
                      str(tmp_path / "eval"), "--data-parallel"])
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


@pytest.mark.slow
def test_table_defences_partial_protection_and_resume(tmp_path, monkeypatch):
  from experiments import table
  data_dir = _fake_idx_dir(tmp_path / "data")
  out = tmp_path / "table"
  argv = ["--out", str(out), "--data-dir", str(data_dir), "--methods",
          "clean,random", "--defences", "none,jpeg,cutmix", "--train-size",
          "200", "--widths", "4,4,4", "--epochs", "1", "--seeds", "1",
          "--epsilon", "16/255", "--poison-ratio", "0.5"]
  results = table.main(argv)
  acc = results["victim_accuracy"]
  assert set(acc) == {"clean", "random"}
  assert all(set(row) == {"none", "jpeg", "cutmix"} for row in acc.values())
  assert all(0 <= a <= 1 for row in acc.values() for a in row.values())
  saved = json.loads((out / "results.json").read_text())
  assert saved["victim_accuracy"] == acc
  assert saved["poison_ratio"] == 0.5 and saved["train_size"] == 200
  for name in ("table.md", "heatmap.png"):
    assert (out / name).exists(), name
  assert "| random |" in (out / "table.md").read_text()
  cell = json.loads((out / "victims" / "random-jpeg" / "results.json")
                    .read_text())
  assert cell["defence"] == "jpeg" and cell["protected_images"] == 100

  def must_not_run(argv=None):
    raise AssertionError(f"finished cell recomputed: {argv}")

  monkeypatch.setattr(table.evaluate, "main", must_not_run)
  monkeypatch.setattr(table.craft, "main", must_not_run)
  assert table.main(argv)["victim_accuracy"] == acc
  # Another table over the same cells; "standard" is the "none" cell.
  other = argv[:argv.index("--defences")] + [
      "--defences", "standard,jpeg", "--cells", str(out), "--out",
      str(tmp_path / "other")] + argv[argv.index("--defences") + 2:]
  other.remove("--out")
  other.remove(str(out))
  again = table.main(other)["victim_accuracy"]
  assert again == {m: {"standard": row["none"], "jpeg": row["jpeg"]}
                   for m, row in acc.items()}


def test_table_victim_model_reuses_crafted_cells(tmp_path, monkeypatch):
  """--victim-model trains victims of another architecture on the releases
  of an earlier table (--cells) without crafting them again, and keeps
  them apart from the first table's victims."""
  from experiments import table
  data_dir = _fake_idx_dir(tmp_path / "data")
  cells = tmp_path / "table"
  argv = ["--data-dir", str(data_dir), "--methods", "clean,random",
          "--defences", "none", "--train-size", "200", "--widths", "4,4,4",
          "--epochs", "1", "--seeds", "1", "--epsilon", "16/255"]
  first = table.main(["--out", str(cells)] + argv)
  assert first["victim_model"] == "small_cnn"
  models_seen = []
  real_evaluate = table.evaluate.main

  def recording(cell_argv):
    models_seen.append(cell_argv[cell_argv.index("--model") + 1])
    return real_evaluate(cell_argv)

  def must_not_run(argv=None):
    raise AssertionError(f"crafted cell recomputed: {argv}")

  monkeypatch.setattr(table.evaluate, "main", recording)
  monkeypatch.setattr(table.craft, "main", must_not_run)
  # Data-parallel cells keep their cached command lines (no new flag).
  flat = table.main(["--out", str(tmp_path / "flat"), "--cells", str(cells),
                     "--victim-model", "small_cnn_flat", "--data-parallel"]
                    + argv)
  assert models_seen == ["small_cnn_flat", "small_cnn_flat"]
  assert flat["victim_model"] == "small_cnn_flat"
  for method in ("clean", "random"):
    cell = json.loads((cells / "victims-small_cnn_flat" / f"{method}-none"
                       / "results.json").read_text())
    assert cell["model"]["name"] == "small_cnn_flat"
    assert 0 <= flat["victim_accuracy"][method]["none"] <= 1
  assert "flattened head" in (tmp_path / "flat" / "table.md").read_text()
  # The first table's victims are untouched and still cached.
  monkeypatch.setattr(table.evaluate, "main", must_not_run)
  assert table.main(["--out", str(cells)] + argv)["victim_accuracy"] == (
      first["victim_accuracy"])


@pytest.mark.parametrize("flag,expected", [
    ([], "--surrogate-augment"),
    (["--no-surrogate-augment"], "--no-surrogate-augment")])
def test_table_passes_error_max_surrogate_augmentation(tmp_path, flag,
                                                       expected):
  """The table's error-max cells are keyed by the surrogate's augmentation,
  so cells crafted either way are never mixed up."""
  from experiments import table
  args = table.parse_args(["--out", str(tmp_path / "t"), "--methods",
                           "error-max,error-max-targeted"] + flag)
  assert args.surrogate_augment is (expected == "--surrogate-augment")
  for method in ("error-max", "error-max-targeted"):
    argv = table.craft_argv(args, method, tmp_path / method)
    assert expected in argv
    assert craft.parse_args(argv).surrogate_augment is args.surrogate_augment
  assert "surrogate-augment" not in " ".join(
      table.craft_argv(args, "random", tmp_path / "random"))


@pytest.mark.parametrize("flag,bound", [([], 10.0),
                                        (["--ar-min-response", "3"], 3.0)])
def test_table_keys_ar_cells_by_their_distinctness_bound(tmp_path, flag,
                                                         bound):
  """The AR cell's command always names its bound, so a cell crafted under
  another one (e.g. the old default, 3) is never reused silently."""
  from experiments import table
  args = table.parse_args(["--out", str(tmp_path / "t"), "--methods",
                           "ar,lsp"] + flag)
  argv = table.craft_argv(args, "ar", tmp_path / "ar")
  assert argv[argv.index("--ar-min-response") + 1] == repr(bound)
  assert craft.parse_args(argv).ar_min_response == bound
  assert "--ar-min-response" not in table.craft_argv(args, "lsp",
                                                     tmp_path / "lsp")


@pytest.mark.parametrize("argv,message", [
    (["--defences", "none,magic"], "unknown defence(s) ['magic']"),
    (["--methods", "clean,clean"], "lists a method twice"),
    (["--poison-ratio", "0"], "--poison-ratio must be in (0, 1]"),
])
def test_table_bad_flags(tmp_path, capsys, argv, message):
  from experiments import table
  with pytest.raises(SystemExit):
    table.main(["--out", str(tmp_path / "t")] + argv)
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_evaluate_poison_ratio_needs_release(tmp_path, capsys):
  with pytest.raises(SystemExit):
    evaluate.main(["--clean", "--poison-ratio", "0.5", "--out",
                   str(tmp_path / "e")])
  assert "--poison-ratio needs --released" in capsys.readouterr().err


def test_craft_model_free_ops_lsp_and_ar(tmp_path, capsys):
  data_dir = _fake_idx_dir(tmp_path / "data")
  common_args = ["--data-dir", str(data_dir), "--train-size", "200"]
  clean, _ = data.load("fashion_mnist", "train", str(data_dir))
  ops = craft.main(["--out", str(tmp_path / "ops"), "--method", "ops"]
                   + common_args)
  assert ops["pixels_changed"] == 1 and ops["epsilon"] is None
  assert ops["model"] is None and len(ops["craft"]["positions"]) == 10
  with np.load(tmp_path / "ops" / "released.npz") as f:
    released, labels, indices = f["images"], f["labels"], f["train_indices"]
  assert released.dtype == np.uint8 and released.shape == (200, 28, 28, 1)
  changed = (released != clean[indices]).reshape(200, -1).sum(1)
  assert changed.max() <= 1
  with np.load(tmp_path / "ops" / "noise.npz") as f:
    positions, values = f["ops_positions"], f["ops_values"]
  rows, cols = positions[labels].T
  np.testing.assert_array_equal(released[np.arange(200), rows, cols, 0],
                                values[labels, 0] * 255)

  lsp = craft.main(["--out", str(tmp_path / "lsp"), "--method", "lsp",
                    "--patch-size", "14"] + common_args)
  assert lsp["l2_epsilon"] == pytest.approx(28 * 6 / 255)
  assert lsp["noise_l2_max"] <= lsp["l2_epsilon"] + 1e-4
  assert lsp["noise_shape"] == [10, 28, 28, 1]
  assert lsp["craft"]["patch_size"] == 14 and lsp["epsilon"] is None
  with np.load(tmp_path / "lsp" / "released.npz") as f:
    assert f["images"].dtype == np.uint8
  saved = json.loads((tmp_path / "lsp" / "results.json").read_text())
  assert saved["noise_l2_max"] == pytest.approx(lsp["noise_l2_max"])

  ar = craft.main(["--out", str(tmp_path / "ar"), "--method", "ar",
                   "--l2-epsilon", "0.5"] + common_args)
  assert ar["l2_epsilon"] == 0.5 and ar["noise_shape"] == [200, 28, 28, 1]
  assert ar["noise_l2_max"] <= 0.5 + 1e-4
  with np.load(tmp_path / "ar" / "noise.npz") as f:
    assert f["ar_coefficients"].shape[:2] == (10, 1)
  # Ten classes: the published CIFAR-10 distinctness bound by default.
  assert ar["craft"]["min_response"] == 10.0

  capsys.readouterr()
  for argv, message in [(["--method", "ops", "--l2-epsilon", "1"],
                         "--l2-epsilon applies to --method ar and lsp"),
                        (["--method", "lsp", "--ar-min-response", "3"],
                         "--ar-min-response applies to --method ar only"),
                        (["--method", "ar", "--ar-min-response", "-1"],
                         "must be a finite number > 0"),
                        (["--method", "lsp", "--patch-size", "5"],
                         "patch_size 5 does not divide the 28x28")]:
    with pytest.raises(SystemExit):
      craft.main(["--out", str(tmp_path / "bad")] + argv + common_args)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("flag,augmented", [
    ([], True), (["--no-surrogate-augment"], False)])
def test_craft_error_max_surrogate_augmentation(tmp_path, monkeypatch, flag,
                                                augmented):
  """Error-max's clean surrogate trains with the dataset's standard
  augmentation (as the reference's attacked model does) unless told not
  to."""
  data_dir = _fake_idx_dir(tmp_path / "data")
  seen = []
  real_train_victim = train.train_victim

  def recording(*args, **kwargs):
    seen.append(kwargs.get("augment"))
    return real_train_victim(*args, **kwargs)

  monkeypatch.setattr(craft.train, "train_victim", recording)
  result = craft.main(
      ["--out", str(tmp_path / "em"), "--method", "error-max", "--data-dir",
       str(data_dir), "--train-size", "200", "--widths", "4,4,4",
       "--clean-epochs", "1", "--pgd-steps", "2", "--epsilon", "16/255"]
      + flag)
  assert result["craft"]["surrogate_augment"] is augmented
  assert len(seen) == 1
  if augmented:
    assert seen[0] is not None
    assert seen[0].keywords == data.default_augmentation(
        (28, 28, 1)).keywords
  else:
    assert seen[0] is None
  noise = np.load(tmp_path / "em" / "noise.npz")["noise"]
  assert np.abs(noise).max() <= 16 / 255 + 1e-6


@pytest.mark.parametrize("text,expected", [
    ("0.5,2", (0.5, 2.0)), ("1e-3, 4", (0.001, 4.0)), ("", ()), ("1,", (1.0,)),
])
def test_float_list_parses(text, expected):
  assert common.float_list(text) == expected


@pytest.mark.parametrize("parse,text,message", [
    ("float_list", "0.5,x", "not a comma-separated list of numbers"),
    ("float_list", "1,nan", "must be finite"),
    ("etas_arg", "1,inf", "must be finite"),
    ("etas_arg", "1,-2", "etas must be finite numbers >= 0"),
    ("etas_arg", "", "etas must be finite numbers >= 0"),
])
def test_number_lists_reject_bad_input(parse, text, message):
  with pytest.raises(argparse.ArgumentTypeError, match=message):
    getattr(common, parse)(text)


@pytest.mark.slow
def test_error_max_surrogates_smoke_and_resume(tmp_path, monkeypatch):
  from experiments import error_max_surrogates
  data_dir = _fake_idx_dir(tmp_path / "data")
  argv = ["--out", str(tmp_path / "e"), "--data-dir", str(data_dir),
          "--train-size", "200", "--widths", "4,4,4", "--clean-epochs", "1",
          "--pgd-steps", "2", "--epochs", "1", "--surrogates", "2",
          "--seeds", "1"]
  results = error_max_surrogates.main(argv)
  summary = results["summary"]
  assert set(summary) == {"augmented", "unaugmented"}
  for kind, augment in (("augmented", True), ("unaugmented", False)):
    cells = results["cells"][kind]
    assert [c["surrogate"] for c in cells] == [0, 1]
    assert all(c["surrogate_augment"] is augment for c in cells)
    assert summary[kind]["victim_accuracy"] == pytest.approx(
        np.mean([c["victim_accuracy"] for c in cells]))
    assert summary[kind]["below_clean"] == pytest.approx(
        results["clean_victim_accuracy"] - summary[kind]["victim_accuracy"])

  def must_not_run(*args, **kwargs):
    raise AssertionError("finished cell recomputed")

  monkeypatch.setattr(error_max_surrogates.train, "train_victim",
                      must_not_run)
  assert error_max_surrogates.main(argv)["summary"] == summary


def test_craft_pue_reference_loss_scale_flag(tmp_path):
  base = ["--out", str(tmp_path / "p"), "--method", "pue-classwise"]
  assert not craft.pue_config(craft.parse_args(base)).reference_loss_scale
  args = craft.parse_args(base + ["--reference-loss-scale"])
  assert craft.pue_config(args).reference_loss_scale
  # A run with it does not resume one without it (and older runs, which
  # lack the key, still resume without it).
  resume_config = craft._resume_config  # pylint: disable=protected-access
  assert "reference_loss_scale" in resume_config(args)
  assert "reference_loss_scale" not in resume_config(craft.parse_args(base))
