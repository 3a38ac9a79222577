"""Verify a certificate written by `jaxue certify`: bounds and draws.

    jaxue verify --certificate runs/certify/certificates/em.json
    jaxue verify --certificate CERT --spot-check 8 [--checkpoint DIR]

A certificate (certificates/NAME.json with its per-draw accuracies
NAME.npz) is self-contained: it records the sha256 of the smoothed
parameters, of the test set and of the jaxue sources, the key, sigma, N, q,
c, the bound kinds and the eta grid. Verification:

1. The accuracies file matches the sha256 in the certificate.
2. Every bound is recomputed from the stored accuracies: the (q, eta)
   quantile curve (its ranks and values), the expected-learnability curve
   and its mean bound U, and, for a --target-eta run, every look and the
   stopping decision. Any difference fails.
3. With --spot-check K: the model (--checkpoint DIR, default the recorded
   model folder) must have the certified parameters (sha256 of the smoothed
   parameters) and the test set (the recorded dataset's first images, from
   --data-dir or the standard locations) the certified fingerprint; then K
   randomly chosen draws are recomputed (draw i depends only on (key, i))
   and must reproduce the stored accuracies: exactly on the backend that
   made the certificate, within --tolerance on another (default 0.002, i.e.
   0.2 points of accuracy: accelerators' reduced-precision matmuls can flip
   a prediction that sits on a tie).

A failure exits with status 2 and one line saying what differs. --out
(optional) also writes verification.json there.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import secrets
from typing import Any

import jax
import numpy as np

from jaxue import certify as certify_lib
from jaxue import data as data_lib
from jaxue import runs
from jaxue.pipelines import _common
from jaxue.pipelines import certify
from jaxue.pipelines import options
from jaxue.pipelines.options import option

# The certify pipeline's look and formatting helpers, so that verification
# recomputes exactly what certify computed.
# pylint: disable=protected-access

# Verification writes nothing unless --out is given.
DEFAULT_OUT = ""
CROSS_BACKEND_TOLERANCE = 0.002
# Recomputed expected bounds may differ from the recorded ones in the last
# bits where numpy's reductions differ between machines.
_FLOAT_RTOL = 1e-9


class VerificationError(runs.RunError):
  """A certificate that does not verify (one line: what differs)."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Flags of ``jaxue verify`` (see the module docstring)."""
  certificate: str | None = option(
      None, "the certificate: certificates/NAME.json of a certify run",
      parse=str, metavar="CERT")
  checkpoint: str | None = option(
      None, "the model folder to check (default: the one the certificate "
      "records)", parse=str, metavar="DIR")
  spot_check: int = option(
      0, "recompute K randomly chosen draws", parse=int,
      check=options.nonnegative_int, metavar="K")
  tolerance: float | None = option(
      None, "largest accuracy difference a recomputed draw may show "
      f"(default: 0 on the certificate's backend, {CROSS_BACKEND_TOLERANCE} "
      "on another)", parse=float,
      check=options.optional(options.unit_interval))
  data_dir: str | None = options.data_dir()
  seed: int | None = option(
      None, "seed choosing the spot-checked draws (default: fresh "
      "randomness)", parse=int, check=options.optional(options.seed_value))
  quiet: bool = options.quiet()

  def __post_init__(self):
    options.validate(self)
    if not self.certificate:
      raise ValueError("--certificate is required (certificates/NAME.json "
                       "of a certify run)")
    if self.checkpoint is not None and not self.spot_check:
      raise ValueError("--checkpoint needs --spot-check K (the model is "
                       "only used to recompute draws)")


def _fail(text: str) -> None:
  raise VerificationError(f"verification failed: {text}")


def _load(path: pathlib.Path) -> tuple[dict[str, Any], np.ndarray]:
  if not path.is_file():
    raise runs.RunError(f"{path} does not exist (--certificate)")
  cert = runs.read_json(path)
  if not isinstance(cert, dict) or cert.get("format") != (
      certify.CERTIFICATE_FORMAT):
    raise runs.RunError(f"{path} is not a jaxue certificate (format "
                        f"{certify.CERTIFICATE_FORMAT})")
  npz = path.parent / cert["accuracies_file"]
  try:
    arrays, _ = runs.load_arrays(npz)
  except runs.RunError as e:
    _fail(f"the accuracies: {e}")
  digest = runs.sha256_arrays(arrays)
  if digest != cert.get("accuracies_sha256"):
    _fail(f"{npz} is not the certificate's accuracies file (sha256 "
          f"{digest[:12]}..., the certificate records "
          f"{str(cert.get('accuracies_sha256'))[:12]}...): an accuracy "
          "was changed or the file swapped")
  acc = np.asarray(arrays["accuracies"], np.float64)
  if acc.shape != (cert["n"],):
    _fail(f"{npz} holds {acc.shape} accuracies, the certificate N = "
          f"{cert['n']}")
  return cert, acc


def _config_of(cert: dict[str, Any]) -> certify.Config:
  """The certify settings that recompute the certificate's bounds."""
  seq = cert.get("sequential")
  fields = dict(models=("-",), sigma=cert["sigma"], q=cert["q"],
                confidence=cert["confidence"], etas=tuple(cert["etas"]),
                simultaneous=cert["simultaneous"],
                mean_bound=cert["mean_bound"], sigma_sweep=(), quiet=True)
  if seq is None:
    fields["draws"] = cert["n"]
  else:
    fields.update(draws=seq["schedule"][0], draws_max=seq["draws_max"],
                  target_eta=seq["target_eta"],
                  target_value=seq["target_value"],
                  target_bound=seq["target_bound"])
  return certify.Config(**fields)


def _same(a: Any, b: Any, exact: bool) -> bool:
  if a is None or b is None:
    return a is None and b is None
  if exact:
    return float(a) == float(b)
  return math.isclose(float(a), float(b), rel_tol=_FLOAT_RTOL,
                      abs_tol=1e-12)


def check_bounds(cert: dict[str, Any], acc: np.ndarray) -> list[str]:
  """Recomputes every bound of ``cert`` from ``acc``; fails on a change.

  Returns:
    One line per check passed.
  """
  config = _config_of(cert)
  curve, expected = certify.certificate_bounds(config, acc)
  quantile = cert["bounds"]["quantile"]
  for (eta, value), rank, (_, want), want_rank in zip(
      zip(curve.etas, curve.values), curve.ranks, quantile["curve"],
      quantile["ranks"]):
    if rank != want_rank or not _same(value, want, exact=True):
      _fail(f"the quantile bound at eta {eta:g} recomputes to "
            f"{certify.format_value(value)} (rank {rank}) from the stored "
            f"accuracies, the certificate says {certify.format_value(want)} "
            f"(rank {want_rank})")
  recorded = cert["bounds"]["expected"]
  if not _same(expected.upper_mean, recorded["upper_mean"], exact=False):
    _fail(f"the mean bound U recomputes to {expected.upper_mean:.6f} from "
          f"the stored accuracies, the certificate says "
          f"{recorded['upper_mean']:.6f}")
  for (eta, value), (_, want) in zip(zip(expected.etas, expected.values),
                                     recorded["curve"]):
    if not _same(value, want, exact=False):
      _fail(f"the expected bound at eta {eta:g} recomputes to "
            f"{value:.6f}, the certificate says {want:.6f}")
  lines = [f"quantile curve: {len(curve.etas)} etas recomputed (largest "
           f"certified eta {certify.format_eta(curve.largest_certified_eta)})",
           f"expected curve: U = {expected.upper_mean:.4f} "
           f"({expected.method}) recomputed"]
  seq = cert.get("sequential")
  if seq is not None:
    schedule = config.schedule()
    if list(schedule) != seq["schedule"]:
      _fail(f"the look schedule recomputes to {list(schedule)}, the "
            f"certificate says {seq['schedule']}")
    looks = []
    for n in schedule:
      if n > len(acc):
        break
      looks.append(certify.target_look(config, acc[:n], len(schedule)))
      if looks[-1].certified:
        break
    if len(looks) != len(seq["looks"]):
      _fail(f"the stored accuracies give {len(looks)} looks, the "
            f"certificate records {len(seq['looks'])}")
    for look, want in zip(looks, seq["looks"]):
      if (look.draws != want["draws"] or look.certified != want["certified"]
          or not _same(look.quantile, want["quantile"], exact=True)
          or not _same(look.expected, want["expected"], exact=False)):
        _fail(f"the look at {look.draws} draws recomputes to {look}, the "
              f"certificate records {want}")
    stop_certified = bool(looks and looks[-1].certified)
    if stop_certified != seq["certified"] or (
        stop_certified and looks[-1].draws != len(acc)):
      _fail("the stopping decision does not follow from the looks")
    lines.append(f"sequential: {len(looks)} looks recomputed, target eta "
                 f"{seq['target_eta']:g} "
                 + ("certified" if stop_certified else "not certified") +
                 f" at {len(acc)} draws")
  return lines


def _model(cert: dict[str, Any], checkpoint: str | None):
  path = pathlib.Path(checkpoint or cert["model_path"])
  model, variables, description = runs.load_model(path)
  digest = certify.params_sha256(variables)
  if digest != cert["params_sha256"]:
    _fail(f"the model {path} is not the certified one: the sha256 of its "
          f"smoothed parameters is {digest[:12]}..., the certificate's "
          f"{cert['params_sha256'][:12]}...")
  return path, model, variables, description


def _test_set(cert: dict[str, Any], data_dir: str | None):
  recorded = cert["test"]
  size = int(recorded["shape"][0])
  images, labels = data_lib.load(recorded["name"], "test", data_dir)
  if size > len(labels):
    _fail(f"the test set has {len(labels)} images, the certificate "
          f"{size}")
  test = (images[:size], labels[:size])
  actual = runs.dataset_fingerprint(recorded["name"], "test", *test)
  if actual != recorded:
    _fail(f"the test set is not the certified one: the first {size} "
          f"{recorded['name']} test images have sha256 "
          f"{actual['sha256'][:12]}..., the certificate's "
          f"{recorded['sha256'][:12]}...")
  return test


def spot_check(cert: dict[str, Any], acc: np.ndarray, *, k: int,
               checkpoint: str | None = None, data_dir: str | None = None,
               tolerance: float | None = None, seed: int | None = None
               ) -> dict[str, Any]:
  """Recomputes ``k`` random draws of a certificate and compares them.

  Returns:
    {"draws": indices, "max_difference", "tolerance", "same_backend"}.
  """
  path, model, variables, _ = _model(cert, checkpoint)
  test = _test_set(cert, data_dir)
  key_info = cert["key"]
  key = jax.random.split(jax.random.key(key_info["seed"],
                                        impl=key_info["impl"]))[0]
  if np.asarray(jax.random.key_data(key)).tolist() != (
      key_info["draw_key_data"]):
    _fail("the certificate's key data do not follow from its seed")
  same_backend = jax.default_backend() == cert["backend"]
  if tolerance is None:
    tolerance = 0.0 if same_backend else CROSS_BACKEND_TOLERANCE
  rng = np.random.default_rng(secrets.randbits(63) if seed is None
                              else seed)
  draws = sorted(int(i) for i in rng.choice(len(acc), size=min(k, len(acc)),
                                            replace=False))
  worst = 0.0
  for i in draws:
    again = certify_lib.sample_accuracies(
        key, model.apply, variables, *test, sigma=cert["sigma"],
        num_draws=1, first_draw=i, batch_size=cert.get("batch_size"))[0]
    diff = abs(float(again) - float(acc[i]))
    worst = max(worst, diff)
    if diff > tolerance:
      _fail(f"draw {i} does not reproduce: the stored accuracy is "
            f"{acc[i]:.6f}, recomputed {again:.6f} with the model {path} "
            f"(difference {diff:.6f} > tolerance {tolerance:g}, "
            f"{jax.default_backend()} vs the certificate's "
            f"{cert['backend']})")
  return {"draws": draws, "max_difference": worst, "tolerance": tolerance,
          "same_backend": same_backend, "model": str(path)}


def run(config: Config, workdir="", *, overwrite: bool = False
        ) -> dict[str, Any]:
  """Verifies ``config.certificate``; raises `VerificationError` if it does
  not verify.

  Returns:
    What was checked (also written to ``workdir``/verification.json when
    ``workdir`` is given).
  """
  path = pathlib.Path(config.certificate)
  cert, acc = _load(path)
  checks = [f"accuracies: {len(acc)} draws match the certificate's sha256"]
  checks += check_bounds(cert, acc)
  spot = None
  if config.spot_check:
    spot = spot_check(cert, acc, k=config.spot_check,
                      checkpoint=config.checkpoint, data_dir=config.data_dir,
                      tolerance=config.tolerance, seed=config.seed)
    checks.append(
        f"model: the smoothed parameters match (sha256 "
        f"{cert['params_sha256'][:12]}...); test set: matches (sha256 "
        f"{cert['test']['sha256'][:12]}...)")
    checks.append(
        f"spot check: draws {', '.join(map(str, spot['draws']))} reproduce"
        f" (largest difference {spot['max_difference']:.3g}, tolerance "
        f"{spot['tolerance']:g}, "
        + ("same backend" if spot["same_backend"] else
           f"{jax.default_backend()} vs {cert['backend']}") + ")")
  package = certify.package_fingerprint()
  if package["sha256"] != cert["package"]["sha256"]:
    checks.append(f"note: made with jaxue {cert['package']['version']} "
                  f"(sources {cert['package']['sha256'][:12]}...), verified "
                  f"with {package['version']} ({package['sha256'][:12]}...)")
  for line in checks:
    _common.log(config.quiet, line)
  _common.log(config.quiet, f"{path}: verified")
  result = {"certificate": str(path), "verified": True, "checks": checks,
            "spot_check": spot, "package": package}
  if workdir:
    runs.Run(workdir, "verify", options.fingerprinted(config),
             overwrite=overwrite)
    runs.write_json(pathlib.Path(workdir) / "verification.json", result)
  return result
