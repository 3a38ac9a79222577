"""Certified (q, eta)-learnability of saved models (PUE, NDSS 2025).

    jaxue certify --models runs/em,runs/clean/models/victim-seed0 \\
        --sigma 0.05 --draws 1000 --out runs/certify

Wang et al., "Provably Unlearnable Data Examples", NDSS 2025 (arXiv
2405.03316), section "Certified (q, eta)-Learnability" and its Monte-Carlo
certification. Each entry of --models is a model folder (model.json, written
by jaxue) or a run directory, whose models/*/ are all certified (named by
folder; --names relabels). The test set is that of the dataset the models
were trained on (recorded in their model.json; a contradicting --dataset is
refused), its first --test-size images.

For every model: a short sigma sweep (mean, range and q-quantile of the
smoothed accuracy over --sweep-draws draws per sigma, to choose sigma: the
paper's 0.25 drives a small CNN to chance), then N = --draws Monte-Carlo
accuracies at --sigma and two certificates over the eta grid, side by side:
the (q, eta) quantile certificate (the paper's; it abstains where N is too
small) and the expected-learnability certificate (a bound on the expected
smoothed accuracy of every model within eta, from an upper confidence bound
U on the mean accuracy, --mean-bound: Salman et al., NeurIPS 2019, Lemma 2;
Waudby-Smith & Ramdas, JRSS-B 2024; one confidence for the whole curve,
never abstains). See docs/certificates.md.
Draw i of a model uses fold_in(k, i), k the first key of split(key(seed));
the sweep uses the second key and the same directions at every sigma.

Certifying a target (--target-eta E): draws are made in segments and looked
at after --draws, 2x, 4x, ... draws up to --draws-max (a schedule fixed in
advance); the run stops at the first look where the --target-bound
certificate at E exists (and is <= --target-value, if given). The quantile
certificate is taken at the per-look confidence 1 - (1 - c)/J over the J
looks (alpha-spending, Bonferroni), the expected one from the betting
confidence sequence (anytime-valid), so both hold with confidence c at the
stopping look. results.json records every look.

Planning (--plan): times --sweep-draws draws per model and prints, per eta,
the draws each certificate kind needs and their time here (plan.json);
nothing else is computed.

Writes in --out:
  results.json                 per model: both curves (null = abstains), the
                               largest certified eta, accuracy summary,
                               draws/s, the sigma sweep, the looks; the
                               draws N needed per eta
  certificates/NAME.json       the self-contained certificate: sha256 of the
                               smoothed parameters, of the test set and of
                               the jaxue sources; key, sigma, N, q, c, the
                               bounds and eta grid (`jaxue verify`)
  certificates/NAME.npz        the N accuracies in draw order (sha256)
  certified_learnability.png   the whole eta grid, quantile solid, expected
                               dashed; 'x' marks abstentions
  sigma_sweep.png              smoothed accuracy against sigma
  report.md                    every number printed
  draws/NAME/, sweep/NAME/     resume state

Resume: the accuracies are saved every --segment-draws draws; rerunning the
same command continues where it stopped, with the same accuracies as an
uninterrupted run (a draw depends only on its index). Another --draws, sigma
or seed in the same --out is refused: use --overwrite or another --out.

Devices: draws are sharded over every visible device (--devices all) or run
on one (--devices 1), with identical accuracies. Multi-host (--distributed):
start the same command on every host; each calls jax.distributed.initialize()
(cluster auto-detection on SLURM, Open MPI and Cloud TPU, or
--coordinator-address, --num-processes, --process-id); every process
computes, process 0 alone writes --out (put it on a shared filesystem).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import hashlib
import pathlib
import re
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxue import certify
from jaxue import data as data_lib
from jaxue import runs
from jaxue import train
from jaxue.pipelines import _common
from jaxue.pipelines import _figures
from jaxue.pipelines import options
from jaxue.pipelines.options import option

MODES = {"none": None, "union": "union", "dkw": "dkw"}
DEFAULT_DRAWS_MAX = 100_000
CERTIFICATE_FORMAT = "jaxue-certificate/1"
DEFAULT_SIGMA_SWEEP = (0.01, 0.02, 0.05, 0.1, 0.25)
SIZING_ETAS = (0.1, 0.2, 0.3, 0.4, 0.5)
CHUNKS_PER_BLOCK = 4  # Draws per compiled call: 4 chunks per device.


@dataclasses.dataclass(frozen=True)
class Config:
  """Flags of ``jaxue certify`` (see the module docstring)."""
  models: tuple[str, ...] | None = option(
      None, "model folders (with model.json) or run directories (their "
      "models/*/), comma-separated", parse=options.parse_name_list,
      metavar="PATH[,PATH...]")
  names: tuple[str, ...] | None = option(
      None, "one label per model found, in order (default: the model "
      "folder's recorded method or its name; a run directory's models by "
      "folder)", parse=options.parse_name_list, metavar="NAME[,NAME...]")
  dataset: str | None = options.dataset(
      None, "dataset (default: the one the models were trained on; "
      "another one is refused)")
  data_dir: str | None = options.data_dir()
  test_size: int | None = options.test_size()
  sigma: float = options.sigma()
  draws: int = options.draws()
  q: float = options.q()
  confidence: float = options.confidence()
  etas: tuple[float, ...] = option(
      certify.DEFAULT_ETAS, "radii eta of the curve (default: the published "
      "grid 0.001 ... 2.0 plus 0.02 and 0.75)",
      parse=options.parse_float_list,
      check=options.each(options.nonnegative_float), metavar="ETA,...")
  simultaneous: str = option(
      "none", "none: a bound per eta (the paper); union/dkw: one bound for "
      "the whole curve", choices=tuple(MODES))
  mean_bound: str = option(
      "betting", "upper bound on the mean accuracy behind the expected-"
      "learnability certificate: betting (Waudby-Smith & Ramdas 2024) or "
      "bernstein (Maurer & Pontil 2009)", choices=certify.MEAN_BOUNDS)
  target_eta: float | None = option(
      None, "draw until this eta is certified or --draws-max is spent, "
      "looking at --draws, 2x, 4x, ... draws (alpha-spending over the "
      "looks)", parse=options.parse_fraction,
      check=options.optional(options.nonnegative_float), metavar="ETA")
  target_value: float | None = option(
      None, "with --target-eta: the learnability to certify there (default: "
      "any certificate: the quantile bound does not abstain, the expected "
      "bound is < 1)", parse=options.parse_fraction,
      check=options.optional(options.unit_interval), metavar="ACC")
  target_bound: str = option(
      "quantile", "with --target-eta: the certificate that must meet the "
      "target", choices=certify.TARGET_BOUNDS)
  draws_max: int | None = option(
      None, f"with --target-eta: the draw budget (default "
      f"{DEFAULT_DRAWS_MAX:,})", parse=int,
      check=options.optional(options.positive_int), metavar="N")
  plan: bool = option(
      False, "only plan: time --sweep-draws draws per model and print, per "
      "eta, the draws each certificate kind needs and how long they would "
      "take here (plan.json)", runtime=True)
  sigma_sweep: tuple[float, ...] = option(
      DEFAULT_SIGMA_SWEEP, "sigma values to explore ('' to skip)",
      parse=options.parse_float_list,
      check=options.each(options.positive_float, nonempty=False),
      metavar="SIGMA,...")
  sweep_draws: int = option(32, "draws per sweep sigma", parse=int,
                            check=options.positive_int)
  seed: int = options.seed()
  chunk_size: int | None = option(
      None, "draws vmapped together per device (default: 1 on CPU, 16 "
      "else)", parse=int, check=options.optional(options.positive_int),
      runtime=True)
  batch_size: int | None = option(
      None, "test images per forward pass (default: 50 on CPU, 1000 else)",
      parse=int, check=options.optional(options.positive_int), runtime=True)
  segment_draws: int | None = option(
      None, "draws between saves (default: 16 chunks per device)",
      parse=int, check=options.optional(options.positive_int), runtime=True)
  devices: str = option(
      "all", "shard draws over all visible devices, or use 1 (same "
      "accuracies)", choices=("all", "1"), runtime=True)
  distributed: bool = option(
      False, "multi-host: call jax.distributed.initialize() first "
      "(auto-detects SLURM / Open MPI / Cloud TPU)", runtime=True)
  coordinator_address: str | None = option(
      None, "host:port of process 0 (with --distributed)", parse=str,
      metavar="HOST:PORT", runtime=True)
  num_processes: int | None = option(
      None, "processes in all (with --distributed)", parse=int,
      check=options.optional(options.positive_int), runtime=True)
  process_id: int | None = option(
      None, "this process's id (with --distributed)", parse=int,
      check=options.optional(options.nonnegative_int), runtime=True)
  quiet: bool = options.quiet()

  def __post_init__(self):
    options.validate(self)
    if not self.models:
      raise ValueError("--models is required (model folders or run "
                       "directories)")
    if self.names is not None and len(set(self.names)) != len(self.names):
      raise ValueError(f"--names must be distinct, got {self.names}")
    if not self.distributed and any(
        v is not None for v in (self.coordinator_address,
                                self.num_processes, self.process_id)):
      raise ValueError("--coordinator-address, --num-processes and "
                       "--process-id need --distributed")
    if self.simultaneous == "dkw" and self.confidence < 0.5:
      raise ValueError(
          f"--simultaneous dkw needs --confidence >= 0.5 (Massart's "
          f"condition for the one-sided DKW bound), got {self.confidence}")
    if self.target_eta is None:
      for flag, value, default in (
          ("--draws-max", self.draws_max, None),
          ("--target-value", self.target_value, None),
          ("--target-bound", self.target_bound, "quantile")):
        if value != default and not (self.plan and flag == "--target-value"):
          raise ValueError(f"{flag} needs --target-eta")
    elif self.draws_max is not None and self.draws_max < self.draws:
      raise ValueError(f"--draws-max {self.draws_max} is below --draws "
                       f"{self.draws} (the first look)")
    if self.mean_bound == "bernstein" and self.draws < 2:
      raise ValueError("--mean-bound bernstein needs --draws >= 2")

  @property
  def budget(self) -> int:
    """Draws at most: --draws, or --draws-max with --target-eta."""
    if self.target_eta is None:
      return self.draws
    return self.draws_max or max(DEFAULT_DRAWS_MAX, self.draws)

  def schedule(self) -> tuple[int, ...] | None:
    """The looks of a --target-eta run (None without one)."""
    if self.target_eta is None:
      return None
    return certify.look_schedule(self.draws, self.budget)


# ------------------------------------------------------------------ models
def file_name(name: str) -> str:
  """A model's label as a file name."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _default_name(path: pathlib.Path, run_dir: pathlib.Path | None) -> str:
  if run_dir is None:
    extra = runs.read_json(path / "model.json").get("extra") or {}
    return str(extra.get("method") or path.name)
  return path.name


def find_models(paths: Sequence[str], names: Sequence[str] | None = None
                ) -> list[tuple[str, pathlib.Path]]:
  """``(name, folder)`` of every model that ``paths`` designate.

  A path is a model folder (it holds model.json) or a run directory (every
  ``models/*/model.json`` in it, named by folder). Without ``names`` a model
  folder is named by its recorded method, else its folder; names that
  collide are qualified by the parent folder.

  Raises:
    RunError: a path is missing or holds no model, ``names`` does not match
      the models found, or two models get the same name.
  """
  found: list[tuple[pathlib.Path, pathlib.Path | None]] = []
  for text in paths:
    path = pathlib.Path(text)
    if (path / "model.json").is_file():
      found.append((path, None))
    elif path.is_dir():
      inner = sorted(p.parent for p in path.glob("models/*/model.json"))
      if not inner:
        raise runs.RunError(f"{path} holds no model (neither model.json nor "
                            "models/*/model.json)")
      found += [(p, path) for p in inner]
    elif path.exists():
      raise runs.RunError(f"{path} is a file, not a model folder or run "
                          "directory")
    else:
      raise runs.RunError(f"{path} does not exist (--models)")
  if names is not None:
    if len(names) != len(found):
      raise runs.RunError(
          f"--names gives {len(names)} labels for {len(found)} models "
          f"({', '.join(str(p) for p, _ in found)})")
    labels = list(names)
  else:
    plain = [_default_name(p, r) for p, r in found]
    labels = [
        f"{(r if r is not None else p.parent).name}/{p.name}"
        if plain.count(label) > 1 else label
        for label, (p, r) in zip(plain, found)]
  taken: dict[str, pathlib.Path] = {}
  for label, (path, _) in zip(labels, found):
    if file_name(label) in taken:
      raise runs.RunError(
          f"two models are named {label!r} ({taken[file_name(label)]} and "
          f"{path}); label them with --names")
    taken[file_name(label)] = path
  return list(zip(labels, (p for p, _ in found)))


def dataset_of(descriptions: Mapping[str, tuple[pathlib.Path,
                                                Mapping[str, Any]]],
               flag: str | None) -> str:
  """The dataset the models were trained on; ``flag`` (--dataset) may only
  repeat it.

  Args:
    descriptions: name -> (folder, its model.json).
    flag: the --dataset value, or None.

  Raises:
    RunError: the models come from different datasets, or ``flag``
      contradicts theirs.
  """
  recorded = {}
  for name, (path, description) in descriptions.items():
    fingerprint = description.get("dataset") or {}
    if fingerprint.get("name"):
      recorded[name] = (path, data_lib.get_info(fingerprint["name"]).name)
  kinds = sorted({d for _, d in recorded.values()})
  if len(kinds) > 1:
    raise runs.RunError(
        "the models were trained on different datasets (" + ", ".join(
            f"{n}: {d}" for n, (_, d) in recorded.items()) +
        "); certify them in separate runs")
  wanted = data_lib.get_info(flag).name if flag else None
  if kinds and wanted and wanted != kinds[0]:
    path = next(p for p, d in recorded.values())
    whose = "model's" if len(descriptions) == 1 else "models'"
    raise runs.RunError(
        f"--dataset {flag} contradicts the {whose} dataset {kinds[0]} "
        f"(recorded in {path / 'model.json'}); leave --dataset out")
  return kinds[0] if kinds else (wanted or options.DATASET)


def check_fits(path: pathlib.Path, model, description: Mapping[str, Any],
               images: np.ndarray, labels: np.ndarray, dataset: str) -> None:
  """Raises a one-line ValueError if the model cannot take the images."""
  shape = tuple(description["input_shape"])
  if shape != tuple(images.shape[1:]):
    raise ValueError(f"{path} takes {shape} images but {dataset} images are "
                     f"{tuple(images.shape[1:])}")
  if len(labels) and model.num_classes <= int(labels.max()):
    raise ValueError(f"{path} has {model.num_classes} classes but {dataset} "
                     f"has labels up to {int(labels.max())}")


# ------------------------------------------------------------ statistics
def summarize(accuracies: np.ndarray, q: float) -> dict[str, float]:
  """Mean, std, min, max and the empirical q-quantile a_(ceil(qN))."""
  acc = np.asarray(accuracies, np.float64)
  return {"mean": float(acc.mean()), "std": float(acc.std()),
          "min": float(acc.min()), "max": float(acc.max()),
          "q_quantile": float(np.quantile(acc, q, method="inverted_cdf"))}


def sizing(*, q: float, sigma: float, confidence: float,
           simultaneous: str | None, num_etas: int
           ) -> dict[float, int | None]:
  """`certify.min_draws` for `SIZING_ETAS` (None: no finite N).

  In "union" mode each eta gets confidence 1 - (1 - c)/m; "dkw" is sized
  like the per-eta bound (it needs somewhat more draws).
  """
  if simultaneous == "union":
    confidence = 1.0 - (1.0 - confidence) / num_etas
  needed = {}
  for eta in SIZING_ETAS:
    try:
      needed[eta] = certify.min_draws(q=q, sigma=sigma, eta=eta,
                                      confidence=confidence)
    except ValueError:  # 1 - q_bar underflows: no finite N.
      needed[eta] = None
  return needed


def _count(n: int | None) -> str:
  if n is None:
    return "inf"
  return f"{n:,}" if n < 10**9 else f"{n:.2e}"


# ------------------------------------------------------------ multi-host
def _writer() -> bool:
  """Whether this process writes the run directory (process 0 only)."""
  return jax.process_index() == 0


def _from_writer(accuracies: np.ndarray, num_images: int) -> np.ndarray:
  """Process 0's saved accuracies on every process, so all resume alike.

  Sent as integer counts (exact; float64 would not survive the transfer
  without x64) and divided by the test size as `sample_accuracies` does.
  """
  if jax.process_count() == 1:
    return accuracies
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental import multihost_utils
  count = int(multihost_utils.broadcast_one_to_all(
      np.int32(len(accuracies))))
  if count == 0:
    return np.zeros((0,), np.float64)
  mine = (np.rint(accuracies * num_images) if _writer()
          else np.zeros((count,)))
  counts = multihost_utils.broadcast_one_to_all(mine.astype(np.int32))
  return np.asarray(counts, np.int64) / float(num_images)


# ------------------------------------------------------------ one model
class CertifiedModel:
  """One model to certify: where it lives and what it is."""

  def __init__(self, name: str, path: pathlib.Path):
    self.name = name
    self.file = file_name(name)
    self.path = path
    self.model, self.variables, self.description = runs.load_model(path)
    self.sha256 = self.description.get("sha256") or runs.sha256_arrays(
        runs.flatten(self.variables))
    self.params_sha256 = params_sha256(self.variables)


def params_sha256(variables: Mapping[str, Any]) -> str:
  """sha256 of the smoothed (trainable) parameters, ``variables["params"]``
  (the arrays `certify.perturb_params` perturbs)."""
  return runs.sha256_arrays(runs.flatten(variables["params"]))


def _sample(config: Config, mesh, m: CertifiedModel, key: jax.Array, test,
            sigma: float, first: int, count: int) -> np.ndarray:
  return certify.sample_accuracies(
      key, m.model.apply, m.variables, *test, sigma=sigma, num_draws=count,
      first_draw=first, chunk_size=config.chunk_size,
      batch_size=config.batch_size, chunks_per_block=CHUNKS_PER_BLOCK,
      mesh=mesh)


def _sweep(config: Config, run: runs.Run | None, mesh, m: CertifiedModel,
           key: jax.Array, test, base: Mapping[str, Any]
           ) -> dict[float, dict[str, float]]:
  """The sigma sweep of one model; each sigma is a stage (cached)."""
  sweep = {}
  num_images = len(test[1])
  for sigma in config.sigma_sweep:
    stage = file = None
    acc = np.zeros((0,), np.float64)
    if run is not None:
      stage = run.stage(f"sweep/{m.file}/sigma_{float(sigma)!r}",
                        dict(base, sigma=float(sigma),
                             draws=config.sweep_draws))
      file = stage.path / "accuracies.npz"
      if stage.done:
        arrays, meta = runs.load_arrays(file)
        _check_meta(meta, base, file)
        acc = arrays["accuracies"]
    acc = _from_writer(acc, num_images)
    if len(acc) != config.sweep_draws:
      acc = _sample(config, mesh, m, key, test, sigma, 0, config.sweep_draws)
      if stage is not None:
        runs.save_arrays(file, {"accuracies": acc}, meta=dict(base))
        stage.finish({"sigma": float(sigma), "draws": config.sweep_draws})
    sweep[float(sigma)] = summarize(acc, config.q)
  return sweep


def _check_meta(meta: Mapping[str, Any], base: Mapping[str, Any],
                where: pathlib.Path) -> None:
  """The saved draws belong to this model and this test set."""
  for field, what in (("model_sha256", "model"), ("test", "test set")):
    if meta.get(field) != runs.jsonable(base[field]):
      raise runs.RunError(f"{where} holds draws of another {what}; use "
                          "--overwrite or another --out")


def target_look(config: Config, accuracies: np.ndarray, num_looks: int
          ) -> certify.Look:
  return certify.check_target(
      accuracies, eta=config.target_eta, q=config.q, sigma=config.sigma,
      confidence=config.confidence, num_looks=num_looks,
      bound=config.target_bound, target_value=config.target_value,
      method=config.mean_bound)


def _draws(config: Config, run: runs.Run | None, mesh, m: CertifiedModel,
           key: jax.Array, test, base: Mapping[str, Any], say
           ) -> tuple[np.ndarray, float, int, list[certify.Look]]:
  """The accuracies at sigma, resumed from the last saved segment.

  Without --target-eta: N = --draws of them. With it: segments end at every
  look of `Config.schedule`, each look is `certify.check_target`, and the
  draws stop at the first look that certifies the target (or the budget).
  A resumed run replays the looks on the saved prefix (a look depends only
  on the draws before it), so it stops where an uninterrupted run would.

  Returns:
    (accuracies, seconds spent on all of them, draws computed now, looks).
  """
  n = config.budget
  schedule = config.schedule()
  num_images = len(test[1])
  stage = checkpoints = None
  acc, seconds = np.zeros((0,), np.float64), 0.0
  if run is not None:
    stage_config = dict(base, sigma=config.sigma, draws=config.draws)
    if schedule is not None:
      stage_config.update(draws_max=n, target_eta=config.target_eta,
                          target_value=config.target_value,
                          target_bound=config.target_bound,
                          mean_bound=config.mean_bound, q=config.q,
                          confidence=config.confidence)
    stage = run.stage(f"draws/{m.file}", stage_config)
    checkpoints = stage.checkpoints(keep=1)
    steps = checkpoints.steps()
    if steps:
      like = {"accuracies": np.zeros((steps[-1],), np.float64)}
      step, tree, meta = checkpoints.restore(like)
      _check_meta(meta, base, checkpoints.directory / f"step_{step:09d}")
      acc, seconds = tree["accuracies"], float(meta.get("seconds", 0.0))
  acc = _from_writer(acc, num_images)
  done = len(acc)
  looks: list[certify.Look] = []
  stopped = False
  pending = list(schedule or ())
  while pending and pending[0] <= len(acc) and not stopped:
    looks.append(target_look(config, acc[:pending.pop(0)], len(schedule)))
    stopped = looks[-1].certified
  if stopped:
    acc = acc[:looks[-1].draws]
  if done:
    say(f"{m.name}: resuming: {min(done, n)} of {n} draws already in "
        f"{stage.path if stage else 'the run'}" +
        ("; nothing to compute" if done >= n or stopped else ""))
  devices = 1 if mesh is None else mesh.size
  block = (CHUNKS_PER_BLOCK * devices *
           (config.chunk_size or certify.default_chunk_size()))
  segment = -(-(config.segment_draws or 4 * block) // block) * block
  with tqdm(total=n, initial=min(done, n), unit="draw",
            desc=f"certify {m.name}",
            disable=(config.quiet or done >= n or stopped
                     or not _writer())) as bar:
    while len(acc) < n and not stopped:
      count = min(segment, n - len(acc))
      if pending:  # A segment ends at each look.
        count = min(count, pending[0] - len(acc))
      start = time.perf_counter()
      acc = np.concatenate([acc, _sample(config, mesh, m, key, test,
                                         config.sigma, len(acc), count)])
      seconds += time.perf_counter() - start
      runs.fault_point("certify:segment")  # Every process: multi-host tests.
      if checkpoints is not None:
        checkpoints.save(len(acc), {"accuracies": acc},
                         meta=dict(base, seconds=seconds))
      bar.update(count)
      if pending and len(acc) == pending[0]:
        pending.pop(0)
        looks.append(target_look(config, acc, len(schedule)))
        stopped = looks[-1].certified
        look = looks[-1]
        say(f"{m.name}: look {len(looks)}/{len(schedule)} at {look.draws} "
            f"draws: eta {config.target_eta:g}: quantile "
            f"{format_value(look.quantile)}, expected {look.expected:.4f}" +
            (" -> certified" if stopped else ""))
  if stage is not None and not stage.done and (len(acc) >= n or stopped):
    stage.finish({"draws": len(acc), "seconds": round(seconds, 3)})
  return acc, seconds, max(len(acc) - done, 0), looks


def format_value(v: float | None) -> str:
  return "abstain" if v is None else f"{v:.4f}"


def package_fingerprint() -> dict[str, str]:
  """jaxue's version and the sha256 of its source files (paths and bytes,
  in path order): what a certificate was computed with."""
  import jaxue  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(jaxue.__file__).parent
  digest = hashlib.sha256()
  for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root).as_posix()).encode() + b"\0")
    digest.update(path.read_bytes())
  return {"name": "jaxue", "version": jaxue.__version__,
          "sha256": digest.hexdigest()}


def certificate_bounds(config: Config, accuracies: np.ndarray
                       ) -> tuple[certify.CertificationCurve,
                                  certify.ExpectedCurve]:
  """The quantile and expected curves of a run's accuracies, as certify
  computes them (with --target-eta both hold at the stopping look: the
  quantile one at the per-look confidence, the expected one from the
  betting confidence sequence)."""
  schedule = config.schedule()
  confidence = config.confidence
  anytime = False
  if schedule is not None:
    if config.mean_bound == "betting":
      anytime = True
    confidence = certify.look_confidence(config.confidence, len(schedule))
  curve = certify.learnability_curve(
      accuracies, q=config.q, sigma=config.sigma, etas=config.etas,
      confidence=confidence, simultaneous=MODES[config.simultaneous])
  expected = certify.expected_learnability_curve(
      accuracies, sigma=config.sigma, etas=config.etas,
      confidence=config.confidence if anytime else confidence,
      method=config.mean_bound, anytime=anytime)
  return curve, expected


def certify_model(config: Config, run: runs.Run | None, mesh, m: CertifiedModel,
                   test, test_fingerprint: Mapping[str, Any], say
                   ) -> dict[str, Any]:
  """Sweep, draws and certificate of one model (writes its certificate)."""
  main_key, sweep_key = jax.random.split(jax.random.key(config.seed))
  base = {"model_sha256": m.sha256, "test": dict(test_fingerprint),
          "seed": config.seed}
  batch_size = config.batch_size or certify.default_batch_size()
  correct = train.evaluate(m.model.apply, m.variables, *test,
                           batch_size=batch_size) * len(test[1])
  unperturbed = round(correct) / len(test[1])  # evaluate is float32.
  sweep = _sweep(config, run, mesh, m, sweep_key, test, base)
  for sigma, st in sweep.items():
    say(f"{m.name}: sigma {sigma:g}: mean {st['mean']:.4f} (min "
        f"{st['min']:.4f}, max {st['max']:.4f}), {config.q:g}-quantile "
        f"{st['q_quantile']:.4f} over {config.sweep_draws} draws "
        f"(unperturbed {unperturbed:.4f})")
  acc, seconds, computed, looks = _draws(config, run, mesh, m, main_key,
                                         test, base, say)
  rate = round(len(acc) / seconds, 4) if seconds > 0 else None
  if computed and rate:
    say(f"{m.name}: {computed} draws at sigma {config.sigma:g}: "
        f"{rate:.3g} draws/s ({len(test[1])} test images, "
        f"{jax.default_backend()})")
  curve, expected = certificate_bounds(config, acc)
  summary = dict(summarize(acc, config.q), unperturbed=unperturbed)
  schedule = config.schedule()
  sequential = None
  if schedule is not None:
    stop = looks[-1] if looks else None
    sequential = {
        "target_eta": config.target_eta, "target_value": config.target_value,
        "target_bound": config.target_bound, "draws_max": config.budget,
        "schedule": list(schedule),
        "look_confidence": certify.look_confidence(config.confidence,
                                                   len(schedule)),
        "spending": "Bonferroni over the looks of the schedule (quantile); "
                    "none needed for the betting confidence sequence",
        "looks": [look.to_json() for look in looks],
        "certified": bool(stop is not None and stop.certified),
        "stopped_at": len(acc)}
    say(f"{m.name}: target eta {config.target_eta:g} " +
        (f"certified after {len(acc)} draws" if sequential["certified"]
         else f"not certified within {config.budget} draws"))
  record = {
      "path": str(m.path), "model_sha256": m.sha256,
      "params_sha256": m.params_sha256,
      "model": m.description.get("model"),
      "extra": m.description.get("extra") or {},
      "trained_on": m.description.get("dataset"),
      "draws": len(acc),
      "curve": [[e, v] for e, v in zip(curve.etas, curve.values)],
      "ranks": list(curve.ranks),
      "confidence": curve.confidence,
      "largest_certified_eta": curve.largest_certified_eta,
      "expected": dict(expected.to_json(),
                       largest_eta_below_1=expected.largest_eta_at_most(
                           np.nextafter(1.0, 0.0))),
      "sequential": sequential,
      "accuracy_summary": summary,
      "draws_per_second": rate, "computed_draws": computed,
      "sigma_sweep": {f"{s:g}": st for s, st in sweep.items()},
      "certificate": f"certificates/{m.file}.json",
      "accuracies": f"certificates/{m.file}.npz",
  }
  if run is not None:
    digest = runs.save_arrays(
        run.path / "certificates" / f"{m.file}.npz", {"accuracies": acc},
        meta=dict(base, sigma=config.sigma, draws=len(acc)))
    backend = (mesh.devices.flat[0].platform if mesh is not None
               else jax.default_backend())
    runs.write_json(run.path / "certificates" / f"{m.file}.json", {
        "format": CERTIFICATE_FORMAT, "name": m.name,
        **curve.to_json(),
        "bounds": {
            "quantile": dict(curve.to_json(), kind="quantile",
                             reference="Wang et al., NDSS 2025"),
            "expected": dict(expected.to_json(), kind="expected",
                             reference="Salman et al., NeurIPS 2019 "
                             "(Lemma 2) with " + _MEAN_REFERENCES[
                                 config.mean_bound])},
        "sequential": sequential,
        "etas": list(config.etas), "q": config.q, "sigma": config.sigma,
        "n": len(acc), "confidence": config.confidence,
        "simultaneous": config.simultaneous,
        "mean_bound": config.mean_bound,
        "seed": config.seed,
        "key": {"seed": config.seed,
                "impl": str(jax.random.key_impl(main_key)),
                "draw_key_data": np.asarray(
                    jax.random.key_data(main_key)).tolist(),
                "derivation": "draw i perturbs the smoothed parameters "
                              "by sigma * normal(fold_in(k, i)), k = "
                              "split(key(seed))[0] (jaxue.certify."
                              "perturb_params)"},
        "test": dict(test_fingerprint),
        "test_selection": "the first test.shape[0] images of the test "
                          "split",
        "model_path": str(m.path),
        "model_sha256": m.sha256, "params_sha256": m.params_sha256,
        "model_spec": m.description.get("model"),
        "input_shape": m.description.get("input_shape"),
        "package": package_fingerprint(),
        "backend": backend, "jax_version": jax.__version__,
        "batch_size": batch_size,
        "accuracy_summary": summary,
        "accuracies_file": f"{m.file}.npz", "accuracies_sha256": digest})
  return {"record": record, "curve": curve, "expected": expected,
          "accuracies": acc}


_MEAN_REFERENCES = {
    "betting": "the betting bound of Waudby-Smith & Ramdas, JRSS-B 2024",
    "bernstein": "the empirical-Bernstein bound of Maurer & Pontil, COLT "
                 "2009"}


# ------------------------------------------------------------------ run
def _initialize_distributed(config: Config) -> None:
  if config.distributed and not jax.distributed.is_initialized():
    jax.distributed.initialize(config.coordinator_address,
                               config.num_processes, config.process_id)


def run(config: Config, workdir, *, overwrite: bool = False
        ) -> dict[str, Any]:
  """Certifies every model of ``config.models`` into the run ``workdir``.

  Returns:
    The results (as written to results.json), plus ``"accuracies"``:
    name -> the N accuracies (not in the file; certificates/NAME.npz).
  """
  _initialize_distributed(config)
  writer = _writer()
  timer = _common.Timer()
  lines: list[str] = []

  def say(text: str) -> None:
    lines.append(text)
    _common.log(config.quiet, text)

  with timer("load"):
    found = find_models(config.models, config.names)
    loaded = [CertifiedModel(name, path) for name, path in found]
    dataset = dataset_of({m.name: (m.path, m.description) for m in loaded},
                         config.dataset)
    info = data_lib.get_info(dataset)
    images, labels = data_lib.load(dataset, "test", config.data_dir)
    if config.test_size is not None and config.test_size > len(labels):
      raise ValueError(f"--test-size {config.test_size} exceeds the "
                       f"{len(labels)} images of the {dataset} test set")
    test = (images[:config.test_size], labels[:config.test_size])
    test_fingerprint = runs.dataset_fingerprint(info.name, "test", *test)
  for m in loaded:
    check_fits(m.path, m.model, m.description, *test, dataset)
  run_dir = (runs.Run(workdir, "certify", options.fingerprinted(config),
                      overwrite=overwrite) if writer else None)
  mesh = _common.draw_mesh() if config.devices == "all" else None
  devices = 1 if mesh is None else mesh.size
  if config.plan:
    return _plan(config, run_dir, mesh, loaded, test, say)
  say(f"certifying {', '.join(m.name for m in loaded)} on {len(test[1])} "
      f"{dataset} test images: sigma {config.sigma:g}, q {config.q:g}, N "
      f"{config.draws}, confidence {config.confidence:g}, mode "
      f"{config.simultaneous} ({jax.default_backend()}, {devices} "
      f"device{'s' if devices > 1 else ''}, {jax.process_count()} "
      f"process{'es' if jax.process_count() > 1 else ''})")

  done = {}
  for m in loaded:
    with timer(f"certify_{m.file}"):
      done[m.name] = certify_model(config, run_dir, mesh, m, test,
                                    test_fingerprint, say)

  if config.sigma_sweep:
    rows = []
    for name, r in done.items():
      summary = r["record"]["accuracy_summary"]
      rows.append((name, 0, f"{summary['unperturbed']:.4f}", "", "", ""))
      rows += [(name, s, f"{st['mean']:.4f}", f"{st['min']:.4f}",
                f"{st['max']:.4f}", f"{st['q_quantile']:.4f}")
               for s, st in r["record"]["sigma_sweep"].items()]
    say(f"\nsmoothed accuracy over {config.sweep_draws} draws per sigma "
        "(sigma 0: unperturbed)")
    say(_common.format_table(rows, ("model", "sigma", "mean", "min", "max",
                                    f"{config.q:g}-quantile")))
  rows = [(name, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"{s['min']:.4f}",
           f"{s['max']:.4f}", f"{s['q_quantile']:.4f}",
           f"{s['unperturbed']:.4f}",
           "-" if r["record"]["draws_per_second"] is None
           else f"{r['record']['draws_per_second']:.3g}")
          for name, r in done.items()
          for s in [r["record"]["accuracy_summary"]]]
  draws = sorted({r["record"]["draws"] for r in done.values()})
  n_text = "/".join(str(n) for n in draws)
  say(f"\nsmoothed accuracy over N = {n_text} draws at sigma "
      f"{config.sigma:g}")
  say(_common.format_table(rows, ("model", "mean", "std", "min", "max",
                                  f"{config.q:g}-quantile", "unperturbed",
                                  "draws/s")))
  first = next(iter(done.values()))
  say(f"\ncertified learnability, sigma {config.sigma:g}, N {n_text}: "
      f"quantile = the ({config.q:g}, eta) certificate (confidence "
      f"{first['curve'].confidence:.6g} per eta, mode "
      f"{config.simultaneous}; abstain: N too small for that eta); "
      f"expected = the bound on the expected smoothed accuracy "
      f"({config.mean_bound}, confidence {first['expected'].confidence:g} "
      "for the whole curve). Lower is better for the data owner.")
  rows = [[f"{eta:g}"] + [v for r in done.values() for v in (
      format_value(r["curve"].values[i]), f"{r['expected'].values[i]:.4f}")]
          for i, eta in enumerate(config.etas)]
  rows.append(["largest eta"] + [v for r in done.values() for v in (
      "-" if r["curve"].largest_certified_eta is None
      else f"{r['curve'].largest_certified_eta:g}",
      format_eta(r["record"]["expected"]["largest_eta_below_1"]))])
  rows.append(["upper mean U", *[v for r in done.values() for v in (
      "", f"{r['expected'].upper_mean:.4f}")]])
  say(_common.format_table(rows, ["eta"] + [
      f"{name} {kind}" for name in done for kind in ("quantile",
                                                     "expected")]))
  mode = MODES[config.simultaneous]
  needed = sizing(q=config.q, sigma=config.sigma,
                  confidence=config.confidence, simultaneous=mode,
                  num_etas=len(config.etas))
  say(f"\ndraws N needed to certify eta at sigma {config.sigma:g}, q "
      f"{config.q:g}, confidence {config.confidence:g}: " +
      ", ".join(f"{eta:g}: {_count(n)}" for eta, n in needed.items()))

  if writer:
    with timer("figures"):
      _figures.certified_curves(
          run_dir.path / "certified_learnability.png",
          {name: r["record"]["curve"] for name, r in done.items()},
          ylabel="certified learnability",
          title=f"sigma {config.sigma:g}, N {n_text}, confidence "
          f"{config.confidence:g}; solid: ({config.q:g}, eta) quantile "
          f"({config.simultaneous}), dashed: expected ({config.mean_bound})",
          expected={name: r["record"]["expected"]["curve"]
                    for name, r in done.items()})
      if config.sigma_sweep:
        series = {}
        for name, r in done.items():
          sweep = r["record"]["sigma_sweep"]
          series[f"{name} mean"] = [(float(s), st["mean"])
                                    for s, st in sweep.items()]
          series[f"{name} {config.q:g}-quantile"] = [
              (float(s), st["q_quantile"]) for s, st in sweep.items()]
        unperturbed = ", ".join(
            f"{n} {r['record']['accuracy_summary']['unperturbed']:.3f}"
            for n, r in done.items())
        _figures.line_plot(
            run_dir.path / "sigma_sweep.png", series, xlabel="sigma",
            ylabel="smoothed test accuracy", logx=True,
            title=f"{config.sweep_draws} draws per sigma; unperturbed: "
            f"{unperturbed}")

  results = {
      "dataset": dataset, "test_size": len(test[1]),
      "test": test_fingerprint, "sigma": config.sigma, "q": config.q,
      "draws": config.draws, "confidence": config.confidence,
      "mode": next(iter(done.values()))["curve"].mode,
      "mean_bound": config.mean_bound, "target_eta": config.target_eta,
      "target_value": config.target_value,
      "target_bound": config.target_bound,
      "draws_max": config.budget if config.target_eta is not None else None,
      "etas": list(config.etas), "seed": config.seed,
      "sweep_draws": config.sweep_draws,
      "models": {name: r["record"] for name, r in done.items()},
      "min_draws": {f"{eta:g}": n for eta, n in needed.items()},
      "devices": devices, "processes": jax.process_count(),
      "wall_seconds": dict(timer.seconds,
                           total=round(sum(timer.seconds.values()), 2)),
      **_common.metadata(config),
  }
  if writer:
    runs.write_json(run_dir.path / "results.json", results)
    figures = ["certified_learnability.png"] + (
        ["sigma_sweep.png"] if config.sigma_sweep else [])
    runs.write_text(run_dir.path / "report.md", _report(config, lines))
    _common.log(config.quiet, f"wrote {run_dir.path / 'results.json'}, "
                f"report.md, {', '.join(figures)}, certificates/")
  results["accuracies"] = {name: r["accuracies"] for name, r in done.items()}
  return results


def _report(config: Config, lines: Sequence[str]) -> str:
  models = ", ".join(config.models)
  return ("# jaxue certify\n\n"
          f"Models: {models}. Figures: certified_learnability.png"
          + (", sigma_sweep.png" if config.sigma_sweep else "") +
          ". Numbers: results.json, certificates/.\n\n```\n" +
          "\n".join(lines).strip("\n") + "\n```\n")


def format_eta(eta: float | None) -> str:
  return "-" if eta is None else f"{eta:g}"


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
    if seconds >= size:
      return f"{seconds / size:.3g} {unit}"
  return f"{seconds:.3g} s"


# ------------------------------------------------------------------ plan
_PLAN_MAX_SIMULATED = 1 << 20  # Predicted mean bounds up to ~1M draws.


def predicted_upper_mean(pilot: np.ndarray, n: int, *, confidence: float,
                         method: str, seed: int = 0) -> float:
  """The mean bound that N draws like ``pilot`` would give: the bound on N
  draws resampled from the pilot (a forecast, not a certificate)."""
  rng = np.random.default_rng(seed)
  sample = rng.choice(np.asarray(pilot, np.float64), size=n, replace=True)
  return certify.mean_upper_bound(sample, confidence=confidence,
                                  method=method)


def _plan(config: Config, run_dir: runs.Run | None, mesh, loaded, test,
          say) -> dict[str, Any]:
  """--plan: per eta, the draws each certificate kind needs and their time
  at the draw rate measured here."""
  main_key, _ = jax.random.split(jax.random.key(config.seed))
  pilot_draws = max(config.sweep_draws, 2)
  c = config.confidence
  if config.simultaneous == "union":
    c = 1.0 - (1.0 - c) / len(config.etas)
  schedule = certify.look_schedule(
      config.draws, config.draws_max or max(DEFAULT_DRAWS_MAX, config.draws))
  c_look = certify.look_confidence(config.confidence, len(schedule))
  models = {}
  for m in loaded:
    # The first call compiles; the second, on the next draws, is timed.
    pilot = _sample(config, mesh, m, main_key, test, config.sigma, 0,
                    pilot_draws)
    start = time.perf_counter()
    pilot = np.concatenate([pilot, _sample(
        config, mesh, m, main_key, test, config.sigma, pilot_draws,
        pilot_draws)])
    per_draw = (time.perf_counter() - start) / pilot_draws
    upper_cache: dict[int, float] = {}

    def upper(n: int) -> float | None:
      if n > _PLAN_MAX_SIMULATED:
        return None
      if n not in upper_cache:
        upper_cache[n] = predicted_upper_mean(
            pilot, n, confidence=config.confidence,
            method=config.mean_bound, seed=config.seed)
      return upper_cache[n]

    rows = []
    for eta in config.etas:
      try:
        fixed = certify.min_draws(q=config.q, sigma=config.sigma, eta=eta,
                                  confidence=c)
      except ValueError:
        fixed = None
      try:
        need = certify.min_draws(q=config.q, sigma=config.sigma, eta=eta,
                                 confidence=c_look)
        sequential = next((n for n in schedule if n >= need), None)
      except ValueError:
        sequential = None
      at = fixed if fixed is not None else None
      u_at = upper(at) if at is not None else None
      row = {
          "eta": eta, "quantile_draws": fixed,
          "quantile_seconds": None if fixed is None else fixed * per_draw,
          "quantile_sequential_draws": sequential,
          "quantile_sequential_seconds": (None if sequential is None
                                          else sequential * per_draw),
          "expected_at_quantile_draws": (
              None if u_at is None else certify.expected_level(
                  u_at, sigma=config.sigma, eta=eta)),
          "expected_limit": certify.expected_level(
              float(np.mean(pilot)), sigma=config.sigma, eta=eta),
      }
      if config.target_value is not None:
        n = 16  # Powers of 2 from here: the forecast's resolution.
        while n <= _PLAN_MAX_SIMULATED and certify.expected_level(
            upper(n), sigma=config.sigma, eta=eta) > config.target_value:
          n *= 2
        row["expected_draws"] = n if n <= _PLAN_MAX_SIMULATED else None
        row["expected_seconds"] = (None if row["expected_draws"] is None
                                   else n * per_draw)
      rows.append(row)
    models[m.name] = {"seconds_per_draw": per_draw,
                      "pilot_draws": len(pilot),
                      "pilot_mean": float(np.mean(pilot)),
                      "pilot_std": float(np.std(pilot)), "etas": rows}
    say(f"\n{m.name}: {per_draw:.3g} s per draw here ({len(test[1])} test "
        f"images, {jax.default_backend()}, {1 if mesh is None else mesh.size}"
        f" devices); pilot mean accuracy {np.mean(pilot):.4f} over "
        f"{len(pilot)} draws")
    header = ["eta", "quantile N", "time", f"sequential N (looks "
              f"{schedule[0]}..{schedule[-1]})", "time",
              "expected at quantile N", "expected, N -> inf"]
    if config.target_value is not None:
      header += [f"expected N for <= {config.target_value:g}", "time"]
    table = []
    for row in rows:
      line = [f"{row['eta']:g}", _count(row["quantile_draws"]),
              _duration(row["quantile_seconds"]),
              _count(row["quantile_sequential_draws"]),
              _duration(row["quantile_sequential_seconds"]),
              "-" if row["expected_at_quantile_draws"] is None
              else f"{row['expected_at_quantile_draws']:.4f}",
              f"{row['expected_limit']:.4f}"]
      if config.target_value is not None:
        line += [_count(row["expected_draws"]),
                 _duration(row["expected_seconds"])]
      table.append(line)
    say(_common.format_table(table, header))
  say(f"\nquantile N: the fewest draws with a certificate at confidence "
      f"{c:.6g} (fixed N); sequential N: the first look of --target-eta's "
      f"schedule with one, at the per-look confidence {c_look:.6g}; "
      "expected: the forecast bound from draws resampled from the pilot "
      "(the expected certificate never abstains; its value falls with N).")
  plan = {"sigma": config.sigma, "q": config.q,
          "confidence": config.confidence, "mean_bound": config.mean_bound,
          "schedule": list(schedule), "look_confidence": c_look,
          "target_value": config.target_value, "models": models,
          "test_size": len(test[1]), **_common.metadata(config)}
  if run_dir is not None:
    runs.write_json(run_dir.path / "plan.json", plan)
    _common.log(config.quiet, f"wrote {run_dir.path / 'plan.json'}")
  return plan
