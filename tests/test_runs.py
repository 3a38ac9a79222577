"""Run directories: config refusal, kill-safe checkpoints, integrity."""

import json
import os
import signal
import subprocess
import sys

import chex
import numpy as np
import pytest

from jaxue import runs


def _tree(value: float):
  return {"state": {"w": np.full((3, 2), value, np.float32),
                    "step": np.int32(value)},
          "noise": np.arange(6, dtype=np.float32) * value}


def test_run_records_config_and_refuses_other_settings(tmp_path):
  runs.Run(tmp_path / "r", "craft", {"epsilon": 8 / 255, "seed": 0})
  saved = runs.read_run(tmp_path / "r")
  assert saved["kind"] == "craft"
  assert saved["fingerprint"] == runs.fingerprint({"seed": 0,
                                                   "epsilon": 8 / 255})
  runs.Run(tmp_path / "r", "craft", {"epsilon": 8 / 255, "seed": 0})
  with pytest.raises(runs.RunError, match=r"epsilon 0\.06.*run has 0\.03"):
    runs.Run(tmp_path / "r", "craft", {"epsilon": 16 / 255, "seed": 0})
  with pytest.raises(runs.RunError, match="holds a craft run"):
    runs.Run(tmp_path / "r", "certify", {"epsilon": 8 / 255, "seed": 0})
  fresh = runs.Run(tmp_path / "r", "craft", {"epsilon": 16 / 255, "seed": 0},
                   overwrite=True)
  assert fresh.config["epsilon"] == 16 / 255


def test_an_option_added_later_keeps_earlier_runs_at_its_default(tmp_path):
  runs.Run(tmp_path / "r", "craft", {"seed": 0})
  runs.Run(tmp_path / "r", "craft", {"seed": 0, "new_option": None})
  with pytest.raises(runs.RunError, match=r"new_option 3 \(the run has null"):
    runs.Run(tmp_path / "r", "craft", {"seed": 0, "new_option": 3})
  run = runs.Run(tmp_path / "s", "craft", {})
  run.stage("cell", {"method": "em"})
  run.stage("cell", {"method": "em", "added": None})
  with pytest.raises(runs.RunError, match="added true"):
    run.stage("cell", {"method": "em", "added": True})


def test_run_never_deletes_foreign_files(tmp_path):
  (tmp_path / "mine.txt").write_text("precious")
  with pytest.raises(runs.RunError, match="holds no jaxue run"):
    runs.Run(tmp_path, "craft", {}, overwrite=True)
  assert (tmp_path / "mine.txt").read_text() == "precious"
  (tmp_path / "file").write_text("x")
  with pytest.raises(runs.RunError, match="is a file"):
    runs.Run(tmp_path / "file", "craft", {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_directory_is_one_line(tmp_path):
  tmp_path.chmod(0o500)
  try:
    with pytest.raises(runs.RunError, match="permission denied"):
      runs.Run(tmp_path / "r", "craft", {})
  finally:
    tmp_path.chmod(0o700)


def test_stage_is_keyed_by_its_config(tmp_path):
  run = runs.Run(tmp_path, "table", {})
  stage = run.stage("cell", {"method": "em", "epsilon": 0.1})
  assert not stage.done
  stage.finish({"accuracy": 0.5})
  again = run.stage("cell", {"method": "em", "epsilon": 0.1})
  assert again.done and again.result() == {"accuracy": 0.5}
  with pytest.raises(runs.RunError, match="epsilon 0.2"):
    run.stage("cell", {"method": "em", "epsilon": 0.2})


def test_checkpoints_roundtrip_and_keep_last(tmp_path):
  ckpt = runs.Checkpoints(tmp_path / "ckpt")
  assert ckpt.restore(_tree(0.0)) is None
  for step in range(3):
    ckpt.save(step, _tree(float(step)), {"history": [step]})
  assert ckpt.steps() == [2]
  step, tree, meta = ckpt.restore(_tree(0.0))
  assert step == 2 and meta == {"history": [2]}
  chex.assert_trees_all_equal(tree, _tree(2.0), strict=True)


def test_flipped_byte_is_detected(tmp_path):
  ckpt = runs.Checkpoints(tmp_path / "ckpt")
  ckpt.save(1, _tree(1.0))
  path = tmp_path / "ckpt" / "step_000000001" / "arrays.npz"
  data = bytearray(path.read_bytes())
  # Flip a byte inside the stored (uncompressed) float data.
  index = data.find(np.float32(1.0).tobytes())
  data[index] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(runs.RunError, match="arrays.npz.*corrupt"):
    ckpt.restore(_tree(0.0))


def test_truncated_and_foreign_files_name_the_file(tmp_path):
  path = tmp_path / "a.npz"
  runs.save_arrays(path, {"x": np.ones(4)}, meta={"k": 1})
  path.write_bytes(path.read_bytes()[:50])
  with pytest.raises(runs.RunError, match=r"a\.npz is corrupt"):
    runs.load_arrays(path)
  np.savez(tmp_path / "plain.npz", x=np.ones(2))
  with pytest.raises(runs.RunError, match="no integrity record"):
    runs.load_arrays(tmp_path / "plain.npz")
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(runs.RunError, match=r"bad\.json is corrupt"):
    runs.read_json(tmp_path / "bad.json")


def test_restore_refuses_another_structure(tmp_path):
  ckpt = runs.Checkpoints(tmp_path)
  ckpt.save(0, {"w": np.zeros(3, np.float32)})
  with pytest.raises(runs.RunError, match="expected float32"):
    ckpt.restore({"w": np.zeros(4, np.float32)})
  with pytest.raises(runs.RunError, match="lacks"):
    ckpt.restore({"v": np.zeros(3, np.float32)})


def test_files_respect_umask_and_failures_leave_no_temporaries(tmp_path):
  old = os.umask(0o027)
  try:
    runs.write_json(tmp_path / "x.json", {"a": 1})
    runs.Checkpoints(tmp_path / "c").save(0, _tree(1.0))
  finally:
    os.umask(old)
  assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640
  step_dir = tmp_path / "c" / "step_000000000"
  assert step_dir.stat().st_mode & 0o777 == 0o750
  assert (step_dir / "arrays.npz").stat().st_mode & 0o777 == 0o640

  class Unserialisable:
    pass

  with pytest.raises(TypeError):
    runs.write_json(tmp_path / "y.json", {"a": Unserialisable()})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "x.json"]


def test_dataset_fingerprint_mismatch(tmp_path):
  images = np.zeros((4, 2, 2, 1), np.uint8)
  recorded = runs.dataset_fingerprint("mnist", "train", images)
  runs.check_dataset(recorded, runs.dataset_fingerprint("mnist", "train",
                                                        images.copy()), "x")
  other = images.copy()
  other[0, 0, 0, 0] = 1
  with pytest.raises(runs.RunError, match="differs in sha256"):
    runs.check_dataset(recorded, runs.dataset_fingerprint(
        "mnist", "train", other), "the release")


_SAVER = """
import sys
import numpy as np
from jaxue import runs
ckpt = runs.Checkpoints(sys.argv[1])
for step in range(5):
  ckpt.save(step, {"x": np.full(1000, step, np.float64)}, {"step": step})
"""


@pytest.mark.parametrize("point", [
    "checkpoint:before-commit:3", "checkpoint:before-prune:3",
    "write:before-rename:5", "write:before-rename:6"])
def test_sigkill_inside_a_save_keeps_the_last_good_checkpoint(tmp_path,
                                                              point):
  env = dict(os.environ, JAXUE_KILL_AT=point, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SAVER, str(tmp_path)],
                        env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  step, tree, meta = runs.Checkpoints(tmp_path).restore(
      {"x": np.zeros(1000, np.float64)})
  # The state and its progress counter always agree.
  assert meta["step"] == step
  np.testing.assert_array_equal(tree["x"], np.full(1000, step, np.float64))
  assert step in (1, 2)


def test_model_roundtrip_and_integrity(tmp_path):
  import jax
  from jaxue import models
  model = models.make_model("small_cnn", num_classes=3, widths=(2, 2, 2))
  variables = model.init(jax.random.key(0), (8, 8, 1))
  images = np.zeros((5, 8, 8, 1), np.uint8)
  data = runs.dataset_fingerprint("mnist", "train", images)
  runs.save_model(tmp_path / "m", variables,
                  model={"name": "small_cnn", "num_classes": 3,
                         "widths": [2, 2, 2]},
                  input_shape=(8, 8, 1), dataset=data, extra={"method": "em"})
  _, restored, description = runs.load_model(tmp_path / "m", dataset=data)
  assert description["extra"] == {"method": "em"}
  chex.assert_trees_all_equal(restored, jax.device_get(variables))
  other = runs.dataset_fingerprint("mnist", "train", images + 1)
  with pytest.raises(runs.RunError, match="made from mnist/train"):
    runs.load_model(tmp_path / "m", dataset=other)
  spec = json.loads((tmp_path / "m" / "model.json").read_text())
  spec["sha256"] = "0" * 64
  (tmp_path / "m" / "model.json").write_text(json.dumps(spec))
  with pytest.raises(runs.RunError, match="does not match the sha256"):
    runs.load_model(tmp_path / "m")
