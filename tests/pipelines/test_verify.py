"""`jaxue verify`: a certificate verifies; a changed accuracy, a swapped
checkpoint or a swapped test set fails with one line saying why."""

import dataclasses
import gzip
import shutil

import pytest

from jaxue import cli
from jaxue import runs
from jaxue.pipelines import certify
from jaxue.pipelines import verify
from tests.pipelines.test_certify import save_tiny_model

FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
  """A tiny certify run (16 draws) and a --target-eta run of one model."""
  tmp = tmp_path_factory.mktemp("verify")
  save_tiny_model(tmp / "clean")
  save_tiny_model(tmp / "other", fit=False, seed=1)
  base = certify.Config(models=(str(tmp / "clean"),), draws=16,
                        segment_draws=8, test_size=100,
                        etas=(0.001, 0.01, 0.1), confidence=0.5,
                        sigma_sweep=(), quiet=True)
  certify.run(base, tmp / "run")
  certify.run(dataclasses.replace(base, draws=4, draws_max=32,
                                  target_eta=0.005), tmp / "target")
  return tmp


def _copy(certified, tmp_path, run="run"):
  """A copy of a run's certificate and accuracies to tamper with."""
  folder = tmp_path / "cert"
  shutil.copytree(certified / run / "certificates", folder)
  return folder / "clean.json", folder / "clean.npz"


def _cli(capsys, argv):
  capsys.readouterr()
  try:
    code = cli.main(["verify"] + argv)
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def _fails(capsys, argv, message):
  code, _, err = _cli(capsys, argv)
  assert code == 2, err
  assert message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_certificates_verify_and_draws_reproduce(certified, capsys,
                                                 tmp_path):
  for run in ("run", "target"):
    cert = certified / run / "certificates" / "clean.json"
    code, out, err = _cli(capsys, ["--certificate", str(cert),
                                   "--spot-check", "3", "--seed", "1",
                                   "--out", str(tmp_path / run)])
    assert code == 0, err
    assert "verified" in out and "spot check: draws" in out
    result = runs.read_json(tmp_path / run / "verification.json")
    assert result["verified"] and len(result["spot_check"]["draws"]) == 3
    assert result["spot_check"]["max_difference"] == 0.0  # Same backend.
  assert "sequential: 4 looks recomputed" in out  # The target run.
  # Without --spot-check only the stored accuracies are needed.
  code, out, _ = _cli(capsys, ["--certificate", str(
      certified / "run" / "certificates" / "clean.json")])
  assert code == 0 and "spot check" not in out


def test_a_changed_accuracy_fails(certified, capsys, tmp_path):
  cert, npz = _copy(certified, tmp_path)
  arrays, meta = runs.load_arrays(npz)
  acc = arrays["accuracies"].copy()
  acc[5] = min(1.0, acc[5] + 0.01)
  # A rewritten file (consistent in itself) is not the certified one.
  runs.save_arrays(npz, {"accuracies": acc}, meta=meta)
  _fails(capsys, ["--certificate", str(cert)],
         "an accuracy was changed or the file swapped")
  # Its sha256 forged into the certificate: the bounds no longer follow.
  record = runs.read_json(cert)
  record["accuracies_sha256"] = runs.sha256_arrays({"accuracies": acc})
  runs.write_json(cert, record)
  _fails(capsys, ["--certificate", str(cert)], "recomputes to")
  # Bounds forged too: the spot check of that draw catches it.
  forged = certify.certificate_bounds(verify._config_of(record), acc)
  record["bounds"]["quantile"]["curve"] = forged[0].to_json()["curve"]
  record["bounds"]["quantile"]["ranks"] = list(forged[0].ranks)
  record["bounds"]["expected"] = dict(record["bounds"]["expected"],
                                      **forged[1].to_json())
  runs.write_json(cert, record)
  assert _cli(capsys, ["--certificate", str(cert)])[0] == 0
  _fails(capsys, ["--certificate", str(cert), "--spot-check", "16"],
         "draw 5 does not reproduce")
  # A flipped byte in the file: its own integrity record fails.
  _, npz = _copy(certified, tmp_path / "b")
  blob = bytearray(npz.read_bytes())
  at = bytes(blob).find(arrays["accuracies"].tobytes())
  blob[at + 3] ^= 0xFF
  npz.write_bytes(bytes(blob))
  _fails(capsys, ["--certificate", str(npz.with_suffix(".json"))],
         "is corrupt")


def test_a_changed_look_fails(certified, capsys, tmp_path):
  cert, _ = _copy(certified, tmp_path, run="target")
  record = runs.read_json(cert)
  record["sequential"]["looks"][0]["certified"] = True
  runs.write_json(cert, record)
  _fails(capsys, ["--certificate", str(cert)], "the look at 4 draws")


def test_a_swapped_checkpoint_fails(certified, capsys, tmp_path):
  cert = certified / "run" / "certificates" / "clean.json"
  _fails(capsys, ["--certificate", str(cert), "--spot-check", "2",
                  "--checkpoint", str(certified / "other")],
         "is not the certified one: the sha256 of its smoothed parameters")
  # The recorded model folder itself replaced by another model.
  moved, _ = _copy(certified, tmp_path)
  record = runs.read_json(moved)
  record["model_path"] = str(certified / "other")
  runs.write_json(moved, record)
  _fails(capsys, ["--certificate", str(moved), "--spot-check", "2"],
         "is not the certified one")


def test_a_swapped_test_set_fails(certified, capsys, tmp_path):
  data = tmp_path / "fashion"
  data.mkdir()
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"):
    (data / name).symlink_to(f"{FASHION}/{name}")
  with gzip.open(f"{FASHION}/t10k-images-idx3-ubyte.gz") as f:
    images = bytearray(f.read())
  images[16 + 28 * 14 + 14] ^= 0xFF  # One pixel of the first test image.
  with gzip.open(data / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(bytes(images))
  cert = certified / "run" / "certificates" / "clean.json"
  _fails(capsys, ["--certificate", str(cert), "--spot-check", "2",
                  "--data-dir", str(data)],
         "the test set is not the certified one")


def test_bad_flags_and_files_are_one_line(certified, capsys, tmp_path):
  _fails(capsys, [], "--certificate is required")
  _fails(capsys, ["--certificate", str(tmp_path / "none.json")],
         "does not exist")
  _fails(capsys, ["--certificate", str(certified / "run" / "results.json")],
         "is not a jaxue certificate")
  cert = str(certified / "run" / "certificates" / "clean.json")
  _fails(capsys, ["--certificate", cert, "--checkpoint", "x"],
         "--checkpoint needs --spot-check")
  _fails(capsys, ["--certificate", cert, "--spot-check", "-1"],
         "--spot-check must be an integer >= 0")
  _fails(capsys, ["--certificate", cert, "--tolerance", "2"],
         "--tolerance must be a number in [0, 1]")


def test_verification_uses_the_cross_backend_tolerance(certified):
  cert, acc = verify._load(certified / "run" / "certificates" / "clean.json")
  cert = dict(cert, backend="gpu")  # As if made on a GPU.
  spot = verify.spot_check(cert, acc, k=2, seed=0)
  assert not spot["same_backend"]
  assert spot["tolerance"] == verify.CROSS_BACKEND_TOLERANCE
  bumped = acc.copy()
  bumped[spot["draws"][0]] += 0.001  # Within the stated tolerance.
  assert verify.spot_check(cert, bumped, k=2, seed=0)["max_difference"] == (
      pytest.approx(0.001))
  bumped[spot["draws"][0]] += 0.01
  with pytest.raises(verify.VerificationError, match="does not reproduce"):
    verify.spot_check(cert, bumped, k=2, seed=0)
