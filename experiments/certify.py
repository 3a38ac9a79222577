"""Certify the (q, η)-learnability of trained models (PUE, NDSS 2025).

    python -m experiments.certify --checkpoint runs/em-cw/surrogate \\
        --checkpoint runs/clean/victim --name em-classwise --name clean \\
        --sigma 0.05 --n 1000 --out runs/certify

Each ``--checkpoint`` is a model saved by `jaxue.checkpoint.save_model` (the
``surrogate/`` of experiments.craft or the quickstart, the ``victim/`` of
experiments.evaluate). For each one: a short σ sweep (mean, range and
q-quantile of the smoothed accuracy, to choose σ: the paper's σ = 0.25 drives
a small CNN to chance), then N Monte-Carlo draws at ``--sigma`` on the clean
test set and the certified learnability over the η grid.

Writes to ``--out``: ``accuracies-NAME.npz`` (the draws, saved every segment:
rerunning the same command resumes, and a larger ``--n`` extends the run),
``results.json``, ``certified_learnability.png`` and ``sigma_sweep.png``.
Draw i of the main run uses ``fold_in(k, i)`` with ``k`` the first key of
``split(key(seed))``; the sweep uses the second key and the same standard
normal directions at every σ.

Devices: draws are sharded over every visible device (``--devices all``,
the default; ``--devices 1`` keeps one), with identical results. On a CPU
host the cores are first presented as one device each (``--cpu-devices``,
default ``auto``), so the draws' shards run concurrently. Multi-host
(``--distributed``): start the same command on every host; each calls
``jax.distributed.initialize()`` (cluster auto-detection on SLURM, Open MPI
and Cloud TPU, or ``--coordinator-address``, ``--num-processes``,
``--process-id``), the draws are sharded over all hosts' devices, every
process receives all accuracies, and process 0 alone writes ``--out`` (put
it on a filesystem all hosts share, so a rerun resumes on every host)::

    # on each of 8 hosts (process id 0..7), 8 GPUs each
    python -m experiments.certify --distributed \
        --coordinator-address host0:1234 --num-processes 8 --process-id $i \
        --checkpoint /shared/pue/surrogate --n 40000 --sigma 0.25 \
        --out /shared/certify
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import hashlib
import json
import math
import pathlib
import re
import time
from typing import Any
import warnings

import jax
import numpy as np
from tqdm.auto import tqdm

from experiments import common
from experiments import figures
from jaxue import certify
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import models
from jaxue import train

MODES = {"none": None, "union": "union", "dkw": "dkw"}
SIZING_ETAS = (0.1, 0.2, 0.3, 0.4, 0.5)
CHUNKS_PER_BLOCK = 4  # Draws per compiled call = 4 chunks (per device).


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.certify", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", action="append",
                 required=True, help="model checkpoint folder (repeatable)")
  p.add_argument("--name", action="append", default=None,
                 help="label per --checkpoint, in order (default: the "
                 "checkpoint's method, else its folder name)")
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--sigma", type=float, default=0.05,
                 help="smoothing noise σ of the certificate (default 0.05)")
  p.add_argument("--q", type=float, default=0.9, help="quantile level q")
  p.add_argument("--n", type=common.positive_int, default=1000,
                 help="Monte-Carlo draws N (default 1000)")
  p.add_argument("--confidence", type=float, default=0.99)
  p.add_argument("--etas", type=common.etas_arg,
                 default=certify.DEFAULT_ETAS,
                 help="comma-separated radii η (default: the published grid "
                 "of 0.001 ... 2.0 plus 0.02 and 0.75)")
  p.add_argument("--simultaneous", choices=tuple(MODES), default="none",
                 help="none: per-η bound (the paper); union/dkw: one bound "
                 "for the whole curve")
  p.add_argument("--sigma-sweep", type=common.float_list,
                 default=(0.01, 0.02, 0.05, 0.1, 0.25),
                 help="σ values to explore ('' to skip)")
  p.add_argument("--sweep-draws", type=common.positive_int, default=32)
  p.add_argument("--chunk-size", type=common.positive_int, default=None,
                 help="draws vmapped together (default: 1 on CPU, 16 else)")
  p.add_argument("--batch-size", type=common.positive_int, default=None,
                 help="test images per forward pass (default: 50 on CPU, "
                 "1000 else)")
  p.add_argument("--segment-draws", type=common.positive_int, default=None,
                 help="draws between saves (default 16 x chunk size)")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--test-size", type=common.positive_int, default=None,
                 help="use only the first N test images (smoke runs)")
  p.add_argument("--seed", type=int, default=0)
  dist = p.add_argument_group("devices and hosts")
  dist.add_argument("--devices", choices=("all", "1"), default="all",
                    help="shard draws over all visible devices (default) "
                    "or use one")
  common.add_cpu_devices_flag(dist)
  dist.add_argument("--distributed", action="store_true",
                    help="multi-host: call jax.distributed.initialize() "
                    "first (auto-detects SLURM / Open MPI / Cloud TPU)")
  dist.add_argument("--coordinator-address", default=None,
                    help="host:port of process 0 (with --distributed)")
  dist.add_argument("--num-processes", type=common.positive_int,
                    default=None, help="processes in all (with "
                    "--distributed)")
  dist.add_argument("--process-id", type=common.nonnegative_int,
                    default=None, help="this process's id (with "
                    "--distributed)")
  args = p.parse_args(argv)
  if not args.distributed and any(
      v is not None for v in (args.coordinator_address, args.num_processes,
                              args.process_id)):
    raise common.UsageError("--coordinator-address, --num-processes and "
                            "--process-id need --distributed")
  if not 0 < args.q < 1:
    raise common.UsageError(f"--q must be in (0, 1), got {args.q}")
  if not 0 < args.confidence < 1:
    raise common.UsageError(
        f"--confidence must be in (0, 1), got {args.confidence}")
  if args.simultaneous == "dkw" and args.confidence < 0.5:
    raise common.UsageError(
        f"--simultaneous dkw needs --confidence >= 0.5 (Massart's condition "
        f"for the one-sided DKW bound), got {args.confidence}")
  for sigma in (args.sigma,) + args.sigma_sweep:
    if not (math.isfinite(sigma) and sigma > 0):
      raise common.UsageError(f"sigma must be a finite number > 0, got "
                              f"{sigma}")
  if not args.etas or not all(math.isfinite(e) and e >= 0 for e in args.etas):
    raise common.UsageError(f"--etas must be numbers >= 0, got {args.etas}")
  if args.name is not None and len(args.name) != len(args.checkpoint):
    raise common.UsageError(
        f"give one --name per --checkpoint ({len(args.name)} names for "
        f"{len(args.checkpoint)} checkpoints)")
  return args


def fingerprint(tree: Any) -> str:
  """A short sha256 of a pytree of arrays (paths, dtypes, shapes, bytes)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    leaf = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}{leaf.shape}".encode())
    h.update(leaf.tobytes())
  return h.hexdigest()[:16]


def _load_saved(path: pathlib.Path | None, config: dict) -> dict:
  """Arrays saved at `path` by a run with the same `config` ({} if none)."""
  if path is None or not path.exists():
    return {}
  with np.load(path) as f:
    saved = {k: f[k] for k in f.files}
  old = json.loads(str(saved.pop("config")))
  if old != config:
    diff = sorted(k for k in old.keys() | config.keys()
                  if old.get(k) != config.get(k))
    raise common.UsageError(
        f"{path} holds draws of another configuration (differs in "
        f"{', '.join(diff)}); use another --out")
  return saved


def summarize(acc: np.ndarray, q: float) -> dict[str, float]:
  """Mean, std, min, max and empirical q-quantile a_(⌈qN⌉) of accuracies."""
  acc = np.asarray(acc, np.float64)
  return {"mean": float(acc.mean()), "std": float(acc.std()),
          "min": float(acc.min()), "max": float(acc.max()),
          "q_quantile": float(np.quantile(acc, q, method="inverted_cdf"))}


def certify_checkpoint(
    key: jax.Array, model: models.Model, variables: dict,
    images: np.ndarray, labels: np.ndarray, *, sigma: float, num_draws: int,
    q: float = 0.9, confidence: float = 0.99,
    etas: Sequence[float] = certify.DEFAULT_ETAS,
    simultaneous: str | None = None, sweep_sigmas: Sequence[float] = (),
    sweep_draws: int = 32, path: pathlib.Path | None = None,
    segment_draws: int | None = None, chunk_size: int | None = None,
    batch_size: int | None = None, mesh: jax.sharding.Mesh | None = None,
    name: str = "model", verbose: bool = True
) -> dict[str, Any]:
  """Sweep σ, draw N smoothed accuracies and certify one model.

  With `path`, every segment of draws (and each sweep σ) is saved there with
  the configuration (key, σ, model and test-set fingerprints); a later call
  with the same configuration resumes from the saved draws, and one with
  another configuration raises `common.UsageError`.

  Args:
    key: typed PRNG key (split into the main run's and the sweep's keys).
    model: the model (`models.Model`).
    variables: its {"params", "batch_stats"}.
    images: uint8 NHWC clean test images.
    labels: their int labels.
    sigma: smoothing noise σ of the certificate.
    num_draws: Monte-Carlo draws N.
    q: quantile level.
    confidence: confidence c.
    etas: radii η of the curve.
    simultaneous: None, "union" or "dkw" (`certify.learnability_curve`).
    sweep_sigmas: σ values to explore with `sweep_draws` draws each.
    sweep_draws: draws per sweep σ.
    path: optional .npz file to save to and resume from.
    segment_draws: draws between saves (default 16 chunks).
    chunk_size: draws vmapped together (`certify.sample_accuracies`).
    batch_size: test images per forward pass (default
      `certify.default_batch_size()`).
    mesh: optional device mesh with a "samples" axis: draws are sharded over
      it (`certify.sample_accuracies`); only process 0 writes `path`.
    name: label in printed messages.
    verbose: print the sweep, a progress bar and the throughput.

  Returns:
    {"accuracies", "curve" (a `certify.CertificationCurve`), "summary"
    (mean, std, min, max, q_quantile, unperturbed), "sigma_sweep"
    ({σ: mean, std, min, max, q_quantile}), "draws_per_second" (over all
    saved draws, compilation included), "computed_draws" (this call),
    "seconds" (this call)}.
  """
  start = time.perf_counter()
  batch_size = batch_size or certify.default_batch_size()
  main_key, sweep_key = jax.random.split(key)
  config = {"sigma": float(sigma),
            "key": np.asarray(jax.random.key_data(key)).tolist(),
            "model": fingerprint(variables),
            "test_set": fingerprint((images, labels))}
  saved = _load_saved(path, config)

  def save():
    if path is not None and jax.process_index() == 0:
      checkpoint.save_npz(path, config=np.array(json.dumps(config)), **saved)

  def sample(k, s, first, count):
    return certify.sample_accuracies(
        k, model.apply, variables, images, labels, sigma=s, num_draws=count,
        first_draw=first, chunk_size=chunk_size, batch_size=batch_size,
        chunks_per_block=CHUNKS_PER_BLOCK, mesh=mesh)

  if "unperturbed" not in saved:
    accuracy = train.evaluate(model.apply, variables, images, labels,
                              batch_size=batch_size)  # float32: round.
    saved["unperturbed"] = np.float64(round(accuracy * len(labels)) /
                                      len(labels))
    save()
  unperturbed = float(saved["unperturbed"])

  sweep = {}
  for s in sweep_sigmas:
    field = f"sweep_{float(s)!r}"
    acc = saved.get(field, np.zeros((0,)))
    if len(acc) < sweep_draws:
      acc = np.concatenate([acc, sample(sweep_key, s, len(acc),
                                        sweep_draws - len(acc))])
      saved[field] = acc
      save()
    sweep[float(s)] = summarize(acc[:sweep_draws], q)
    if verbose:
      st = sweep[float(s)]
      print(f"{name}: sigma {s:g}: mean {st['mean']:.4f} (min {st['min']:.4f},"
            f" max {st['max']:.4f}), {q:g}-quantile {st['q_quantile']:.4f} "
            f"over {sweep_draws} draws (unperturbed {unperturbed:.4f})")

  acc = saved.get("accuracies", np.zeros((0,)))
  seconds = float(saved.get("seconds", 0.0))
  done = len(acc)
  devices = 1 if mesh is None else mesh.size
  block = (CHUNKS_PER_BLOCK * devices
           * (chunk_size or certify.default_chunk_size()))
  segment = -(-(segment_draws or 4 * block) // block) * block
  if verbose and done:
    print(f"{name}: resuming: {min(done, num_draws)} of {num_draws} draws "
          f"already in {path}" + ("; nothing to compute"
                                  if done >= num_draws else ""))
  with tqdm(total=num_draws, initial=min(done, num_draws), unit="draw",
            desc=f"certify {name}", disable=not verbose or done >= num_draws
            ) as bar:
    while len(acc) < num_draws:
      count = min(segment, num_draws - len(acc))
      t0 = time.perf_counter()
      acc = np.concatenate([acc, sample(main_key, sigma, len(acc), count)])
      seconds += time.perf_counter() - t0
      saved.update(accuracies=acc, seconds=np.float64(seconds))
      save()
      bar.update(count)
  computed = max(num_draws - done, 0)
  rate = round(len(acc) / seconds, 4) if seconds > 0 else None
  if verbose and computed and rate:
    print(f"{name}: {computed} draws at sigma {sigma:g}: {rate:.3g} draws/s "
          f"({len(labels)} test images, {jax.default_backend()})")
  acc = acc[:num_draws]
  curve = certify.learnability_curve(acc, q=q, sigma=sigma, etas=etas,
                                     confidence=confidence,
                                     simultaneous=simultaneous)
  return {"accuracies": acc, "curve": curve,
          "summary": dict(summarize(acc, q), unperturbed=unperturbed),
          "sigma_sweep": sweep, "draws_per_second": rate,
          "computed_draws": computed,
          "seconds": round(time.perf_counter() - start, 2)}


def sizing(*, q: float, sigma: float, confidence: float,
           simultaneous: str | None, num_etas: int) -> dict[float, int | None]:
  """`certify.min_draws` for `SIZING_ETAS` (None: no finite N).

  In "union" mode each η gets confidence 1 − (1 − c)/m; "dkw" is sized like
  the per-η bound (it needs somewhat more draws).
  """
  if simultaneous == "union":
    confidence = 1.0 - (1.0 - confidence) / num_etas
  out = {}
  for eta in SIZING_ETAS:
    try:
      out[eta] = certify.min_draws(q=q, sigma=sigma, eta=eta,
                                   confidence=confidence)
    except ValueError:  # 1 − q̄ underflows: no finite N.
      out[eta] = None
  return out


def _load_checkpoints(args: argparse.Namespace) -> dict[str, tuple]:
  paths = [pathlib.Path(p) for p in args.checkpoint]
  for path in paths:
    if not path.is_dir():
      raise FileNotFoundError(f"no checkpoint folder {path}")
  loaded = {}
  for i, path in enumerate(paths):
    model, variables, description = checkpoint.load_model(path)
    name = (args.name[i] if args.name else
            description.get("extra", {}).get("method") or path.name)
    if name in loaded:
      raise common.UsageError(
          f"two checkpoints are named {name!r}; label them with --name")
    loaded[name] = (path, model, variables, description)
  return loaded


def _count(n: int | None) -> str:
  if n is None:
    return "inf"
  return f"{n:,}" if n < 10**9 else f"{n:.2e}"


def _file_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def device_mesh(args: argparse.Namespace) -> jax.sharding.Mesh | None:
  """The draws' mesh over every device of every process (None for one)."""
  if args.distributed:
    jax.distributed.initialize(args.coordinator_address, args.num_processes,
                               args.process_id)
  if args.devices == "1":
    return None
  return common.draw_mesh()


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  common.request_cpu_devices(args)
  mesh = device_mesh(args)
  timer = common.Timer()
  with timer("load"):
    loaded = _load_checkpoints(args)
    x_test, y_test = data_lib.load(args.dataset, "test", args.data_dir)
    x_test, y_test = x_test[:args.test_size], y_test[:args.test_size]
  for name, (path, model, _, description) in loaded.items():
    if tuple(description["input_shape"]) != x_test.shape[1:]:
      raise ValueError(
          f"{path} takes {tuple(description['input_shape'])} images but "
          f"{args.dataset} test images are {x_test.shape[1:]}: pass the "
          "matching --dataset")
    if model.num_classes <= int(y_test.max()):
      raise ValueError(f"{path} has {model.num_classes} classes but "
                       f"{args.dataset} has labels up to {y_test.max()}")
  out = args.out
  out.mkdir(parents=True, exist_ok=True)
  mode = MODES[args.simultaneous]
  print(f"certifying {', '.join(loaded)} on {len(y_test)} {args.dataset} "
        f"test images: sigma {args.sigma:g}, q {args.q:g}, N {args.n}, "
        f"confidence {args.confidence:g}, mode {args.simultaneous} "
        f"({jax.default_backend()})")

  runs = {}
  for name, (path, model, variables, _) in loaded.items():
    with timer(f"certify_{name}"):
      runs[name] = certify_checkpoint(
          jax.random.key(args.seed), model, variables, x_test, y_test,
          sigma=args.sigma, num_draws=args.n, q=args.q,
          confidence=args.confidence, etas=args.etas, simultaneous=mode,
          sweep_sigmas=args.sigma_sweep, sweep_draws=args.sweep_draws,
          path=out / f"accuracies-{_file_name(name)}.npz",
          segment_draws=args.segment_draws, chunk_size=args.chunk_size,
          batch_size=args.batch_size, mesh=mesh, name=name)

  if args.sigma_sweep:
    print(f"\nsmoothed accuracy over {args.sweep_draws} draws per sigma")
    rows = []
    for name, run in runs.items():
      rows.append((name, 0, f"{run['summary']['unperturbed']:.4f}", "", "",
                   ""))
      rows += [(name, f"{s:g}", f"{st['mean']:.4f}", f"{st['min']:.4f}",
                f"{st['max']:.4f}", f"{st['q_quantile']:.4f}")
               for s, st in run["sigma_sweep"].items()]
    common.print_table(rows, ("method", "sigma", "mean", "min", "max",
                              f"{args.q:g}-quantile"))

  print(f"\ncertified ({args.q:g}, eta)-learnability, sigma {args.sigma:g}, "
        f"N {args.n}, confidence {args.confidence:g}, mode "
        f"{args.simultaneous} (lower is better for the data owner)")
  rows = [[f"{eta:g}"] + [("abstain" if v is None else f"{v:.4f}")
                          for v in (r["curve"].values[i]
                                    for r in runs.values())]
          for i, eta in enumerate(args.etas)]
  rows.append(["largest eta"] + [
      "-" if r["curve"].largest_certified_eta is None
      else f"{r['curve'].largest_certified_eta:g}" for r in runs.values()])
  common.print_table(rows, ["eta"] + list(runs))
  needed = sizing(q=args.q, sigma=args.sigma, confidence=args.confidence,
                  simultaneous=mode, num_etas=len(args.etas))
  print(f"\ndraws N needed to certify eta at sigma {args.sigma:g}: " +
        ", ".join(f"{eta:g}: {_count(n)}" for eta, n in needed.items()))

  writer = jax.process_index() == 0  # One process writes --out.
  with timer("figures"), warnings.catch_warnings():
    if writer:
      warnings.filterwarnings("ignore", "No artists with labels")  # All abstain.
      figures.line_plot(
          out / "certified_learnability.png",
          {name: list(zip(r["curve"].etas, r["curve"].values))
           for name, r in runs.items()},
          xlabel="eta (parameter-space radius)",
          ylabel=f"certified ({args.q:g}, eta)-learnability", logx=True,
          title=f"sigma {args.sigma:g}, N {args.n}, confidence "
          f"{args.confidence:g}, {args.simultaneous}")
      if args.sigma_sweep:
        series = {}
        for name, r in runs.items():
          sweep = r["sigma_sweep"]
          series[f"{name} mean"] = [(s, st["mean"]) for s, st in sweep.items()]
          series[f"{name} {args.q:g}-quantile"] = [
              (s, st["q_quantile"]) for s, st in sweep.items()]
        figures.line_plot(
            out / "sigma_sweep.png", series, xlabel="sigma",
            ylabel="smoothed test accuracy", logx=True,
            title=f"{args.sweep_draws} draws per sigma; unperturbed: " +
            ", ".join(f"{n} {r['summary']['unperturbed']:.3f}"
                      for n, r in runs.items()))

  results = {
      "dataset": args.dataset, "test_size": len(y_test),
      "sigma": args.sigma, "q": args.q, "n": args.n,
      "confidence": args.confidence,
      "mode": next(iter(runs.values()))["curve"].mode,
      "checkpoints": {name: str(v[0]) for name, v in loaded.items()},
      "curves": {name: [[e, v] for e, v in zip(r["curve"].etas,
                                               r["curve"].values)]
                 for name, r in runs.items()},
      "ranks": {name: list(r["curve"].ranks) for name, r in runs.items()},
      "largest_certified_eta": {name: r["curve"].largest_certified_eta
                                for name, r in runs.items()},
      "accuracy_summary": {name: r["summary"] for name, r in runs.items()},
      "sigma_sweep": {name: {f"{s:g}": st
                             for s, st in r["sigma_sweep"].items()}
                      for name, r in runs.items()},
      "sweep_draws": args.sweep_draws,
      "draws_per_second": {name: r["draws_per_second"]
                           for name, r in runs.items()},
      "computed_draws": {name: r["computed_draws"]
                         for name, r in runs.items()},
      "min_draws": {f"{eta:g}": n for eta, n in needed.items()},
      "devices": 1 if mesh is None else mesh.size,
      "processes": jax.process_count(),
      "wall_seconds": dict(timer.seconds,
                           total=round(sum(timer.seconds.values()), 2)),
      **common.metadata(args),
  }
  if writer:
    checkpoint.write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'}, certified_learnability.png"
          + (", sigma_sweep.png" if args.sigma_sweep else ""))
  return results


if __name__ == "__main__":
  main()
