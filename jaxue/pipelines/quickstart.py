"""Craft EM and PUE noise, train victims, certify both surrogates: a report.

    jaxue quickstart                            # into runs/quick
    jaxue quickstart --epochs 2 --draws 100 --out runs/smoke

On Fashion-MNIST (the Debian package's files) it crafts class-wise
error-minimizing (EM) noise (Huang et al., ICLR 2021) with a small CNN
surrogate, and provably unlearnable (PUE) noise (Wang et al., NDSS 2025,
Sec. 5) from the same initial surrogate; releases the protected uint8
datasets; trains fresh victims on the clean, random-noise, EM and PUE
releases; certifies the (q, eta)-learnability of both crafting surrogates
(N = --draws Monte-Carlo draws, the published N = 1000 by default) on the
first --certify-test-size test images; and writes a report. With
--no-certify it crafts EM only and certifies nothing.

Writes in the run directory (--out, default runs/quick):
  results.json, report.md      every number (the report is what the console
                               prints at the end)
  samples.png                  one image per class, each release, its noise
  victim_curves.png            victims' clean test accuracy per epoch
  certified_learnability.png   both surrogates over the whole eta grid;
                               'x' marks abstentions
  METHOD/release.npz           each release (random, the EM method,
                               pue-classwise), with the fingerprint of the
                               clean training subset (for `jaxue evaluate`)
  METHOD/noise.npz             the float noise
  models/METHOD/               the crafting surrogates (`jaxue certify
                               --models runs/quick`, `jaxue recover`)
  certificates/METHOD.json     each certificate and its N accuracies (.npz)
  victims/, draws/             per-victim and per-segment resume state

Every stage is cached by its settings: a killed run resumes (EM/PUE from
their last round, victims per seed, certification per segment of draws),
bit for bit, and a finished one returns its results at once. Another
--epsilon (or any other setting) into the same --out is refused: use
--overwrite or another --out. The EM surrogate and noise equal those of
`jaxue craft --method em-classwise` with the same settings, the victims
those of `jaxue evaluate --release runs/quick/METHOD` (or --clean), and the
certificates those of `jaxue certify --models runs/quick --sigma-sweep ''`
with the same --draws, --seed and --test-size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np

from jaxue import models
from jaxue import noise as noise_lib
from jaxue import runs
from jaxue import train
from jaxue.pipelines import _common
from jaxue.pipelines import _figures
from jaxue.pipelines import certify as certify_pipeline
from jaxue.pipelines import craft as craft_pipeline
from jaxue.pipelines import options
from jaxue.pipelines.options import option

DEFAULT_OUT = "runs/quick"
METHODS = ("em-classwise", "em-samplewise")
PUE = "pue-classwise"
FASHION_MNIST_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Boot")
STUDY = "experiments/pue_vs_em/"
FIGURES = ("samples.png", "victim_curves.png")
CERT_FIGURE = "certified_learnability.png"



@dataclasses.dataclass(frozen=True)
class Config:
  """Flags of ``jaxue quickstart`` (see the module docstring)."""

  dataset: str = options.dataset()
  data_dir: str | None = options.data_dir()
  train_size: int | None = options.train_size()
  test_size: int | None = options.test_size()
  method: str = option("em-classwise", "EM noise to craft (PUE is always "
                       "class-wise, its published recipe)", choices=METHODS)
  model: str = options.model(
      help="architecture of the crafting surrogates and of the victims")
  widths: tuple[int, ...] | None = options.widths()
  epsilon: float | None = options.epsilon()
  max_rounds: int = option(60, "crafting rounds at most, for EM and PUE",
                           parse=int, check=options.positive_int)
  epochs: int = options.epochs()
  seeds: int = options.seeds()
  certify: bool = option(True, "also craft PUE noise and certify the (q, "
                         "eta)-learnability of both surrogates")
  sigma: float = options.sigma()
  draws: int = options.draws()
  q: float = options.q()
  confidence: float = options.confidence()
  certify_test_size: int = option(
      2000, "certify on the first N test images (victims use --test-size)",
      parse=int, check=options.positive_int, metavar="N")
  pue_draws: int = option(
      2, "PUE weight draws per level in surrogate steps, half as many (at "
      "least 1) in noise steps (published: 100 and 10)", parse=int,
      check=options.positive_int)
  seed: int = options.seed()
  quiet: bool = options.quiet()

  def __post_init__(self):
    options.validate(self)


# ------------------------------------------------------------------ stages
def _craft_config(config: Config, method: str, epsilon: float
                  ) -> craft_pipeline.Config:
  """The `jaxue craft` settings of one of the quickstart's releases."""
  fields: dict[str, Any] = {}
  if method in craft_pipeline.EM_PUE:
    fields["max_rounds"] = config.max_rounds
  if method == PUE:
    # CPU-sized draws (Sec. 5's robust steps average over weight draws).
    fields.update(surrogate_draws=config.pue_draws,
                  noise_draws=max(1, config.pue_draws // 2))
  return craft_pipeline.resolved(craft_pipeline.Config(
      method=method, dataset=config.dataset, data_dir=config.data_dir,
      train_size=config.train_size, model=config.model,
      widths=config.widths, epsilon=epsilon, sigma=config.sigma,
      seed=config.seed, quiet=config.quiet, **fields))


def _craft(run: runs.Run, cfg: craft_pipeline.Config, data: _common.Data,
           model: models.Model, model_spec: Mapping[str, Any],
           timer: _common.Timer) -> tuple[dict[str, Any], np.ndarray]:
  """Crafts one release as `jaxue craft` does (EM/PUE checkpoint every
  round), saves ``METHOD/release.npz`` and ``models/METHOD/``.

  Returns:
    The stage's record and the released uint8 images.
  """
  method = cfg.method
  stage = run.stage(method, {**options.fingerprinted(cfg),
                             "data": data.train_fingerprint["sha256"]})
  release_file = stage.path / "release.npz"
  if stage.done:
    arrays, meta = runs.load_arrays(release_file)
    runs.check_dataset(meta.get("dataset"), data.train_fingerprint,
                       str(release_file))
    return stage.result(), arrays["images"]
  x_train, y_train = data.train
  # The keys of `jaxue craft`: EM and PUE start from the same surrogate.
  init_key, craft_key = jax.random.split(jax.random.key(cfg.seed))
  with timer(f"craft {method}"):
    if method in craft_pipeline.MODEL_FREE:
      result = craft_pipeline.craft_model_free(cfg, data, craft_key)
      summary: dict[str, Any] = {}
    else:
      result, summary = craft_pipeline.craft_em(cfg, data, model, stage,
                                                init_key, craft_key)
  mode = result.info.get("mode") or (
      "classwise" if method in _common.CLASSWISE else "samplewise")
  delta = np.asarray(result.noise, np.float32)
  released = noise_lib.release(x_train, y_train, delta, epsilon=cfg.epsilon,
                               mode=mode)
  meta = {"dataset": data.train_fingerprint, "dataset_name": data.name,
          "method": method, "mode": mode, "epsilon": cfg.epsilon,
          "train_size": len(y_train), "seed": cfg.seed,
          "model": model_spec if result.surrogate is not None else None}
  runs.save_arrays(stage.path / "noise.npz",
                   {"noise": delta, "train_indices": data.indices,
                    "labels": y_train}, meta=meta)
  digest = runs.save_arrays(
      release_file, {"images": released, "labels": y_train.astype(np.int32),
                     "train_indices": data.indices}, meta=meta, compress=True)
  if result.surrogate is not None:
    extra = {"method": method, "epsilon": cfg.epsilon,
             "dataset": data.name, "train_size": len(y_train),
             "seed": cfg.seed}
    if method == PUE:
      extra["sigma"] = cfg.sigma
    runs.save_model(run.path / "models" / method,
                    result.surrogate.variables, model=model_spec,
                    input_shape=data.image_shape,
                    dataset=data.train_fingerprint, extra=extra)
  accuracy = summary.get("noisy_accuracy", [])
  record = {"method": method, "mode": mode, "epsilon": cfg.epsilon,
            "rounds": len(accuracy), "converged": bool(result.converged),
            "noisy_accuracy": accuracy,
            "robust_rounds": int(sum(summary.get("robust", []))),
            "seconds": timer.seconds[f"craft {method}"],
            "release_sha256": digest}
  if method == PUE:
    record["pue"] = summary.get("pue")
  record = stage.finish(record)
  stage.clear_checkpoints()
  return record, released


def _victims(config: Config, run: runs.Run, name: str, images: np.ndarray,
             data: _common.Data, test: tuple[np.ndarray, np.ndarray],
             model: models.Model, model_spec: Mapping[str, Any]
             ) -> tuple[list[list[float]], float]:
  """``--seeds`` fresh victims on one release, each a cached stage.

  Victim s of every release uses ``fold_in(key(seed), s)``, as `jaxue
  evaluate` does: the releases are compared on equal initialisations and
  batch orders, and ``jaxue evaluate --release DIR/METHOD`` (or ``--clean``)
  with the same settings trains the same victims.

  Returns:
    Each victim's clean test accuracy per epoch, and the seconds their
    training took.
  """
  victims_key = jax.random.key(config.seed)
  test_fingerprint = runs.dataset_fingerprint(data.name, "test", *test)
  curves, seconds = [], 0.0
  for s in range(config.seeds):
    stage = run.stage(f"victims/{name}/seed{s}", {
        "release": name, "images": runs.sha256_arrays({"images": images}),
        "labels": runs.sha256_arrays({"labels": data.train[1]}),
        "model": dict(model_spec), "epochs": config.epochs,
        "test": test_fingerprint["sha256"], "seed": config.seed,
        "victim": s})
    if stage.done:
      record = stage.result()
    else:
      start = time.perf_counter()
      _, history = train.train_victim(
          jax.random.fold_in(victims_key, s), model, images, data.train[1],
          test=test, epochs=config.epochs,
          progress=False if config.quiet else f"victim {name} seed {s}")
      record = stage.finish({
          "history": history,
          "seconds": round(time.perf_counter() - start, 2)})
    curves.append(record["history"]["test_accuracy"])
    seconds += record["seconds"]
  return curves, round(seconds, 2)


def _certify(config: Config, run: runs.Run, method: str,
             model: models.Model, test: tuple[np.ndarray, np.ndarray],
             test_fingerprint: Mapping[str, Any], say, timer: _common.Timer
             ) -> dict[str, Any]:
  """Certifies one surrogate with `jaxue certify`'s machinery (its stages
  ``draws/METHOD/`` save every segment; its certificate files)."""
  cfg = certify_pipeline.Config(
      models=(str(run.path / "models" / method),), sigma=config.sigma,
      draws=config.draws, q=config.q, confidence=config.confidence,
      sigma_sweep=(), seed=config.seed, quiet=config.quiet)
  saved = certify_pipeline.CertifiedModel(method,
                                          run.path / "models" / method)
  # The loaded model is rebuilt from the same spec; the shared one reuses
  # its compilations (a model's functions are jit cache keys).
  saved.model = model
  with timer(f"certify {method}"):
    done = certify_pipeline.certify_model(cfg, run, _common.draw_mesh(),
                                          saved, test, test_fingerprint, say)
  record = dict(done["record"])
  record.pop("sigma_sweep", None)
  record["seconds"] = timer.seconds[f"certify {method}"]
  return record


# ----------------------------------------------------------------- run
def run(config: Config, workdir: str | pathlib.Path, *,
        overwrite: bool = False) -> dict[str, Any]:
  """Runs the quickstart into ``workdir`` (see the module docstring).

  Returns:
    The results, as in ``results.json``.
  """
  epsilon = options.resolve_epsilon(config.epsilon, config.dataset)
  timer = _common.Timer()
  with timer("load"):
    data = _common.load_data(config.dataset, config.data_dir,
                             config.train_size, config.seed)
  x_test, y_test = data.test
  for flag, size in (("--test-size", config.test_size),
                     ("--certify-test-size", config.certify_test_size)):
    if size is not None and size > len(y_test):
      raise ValueError(f"{flag} {size} exceeds the {len(y_test)} images of "
                       f"the {data.name} test set")
  test = (x_test[:config.test_size], y_test[:config.test_size])
  cert_test = (x_test[:config.certify_test_size],
               y_test[:config.certify_test_size])
  crafted = [config.method, PUE] if config.certify else [config.method]
  craft_configs = {m: _craft_config(config, m, epsilon)
                   for m in ["random"] + crafted}
  for cfg in craft_configs.values():
    craft_pipeline.check_method_settings(cfg, data)
  out = pathlib.Path(workdir)
  # The resolved epsilon is recorded: the default and 32/255 given
  # explicitly are the same run, another epsilon is refused.
  run_dir = runs.Run(out, "quickstart",
                     dict(options.fingerprinted(config), epsilon=epsilon),
                     overwrite=overwrite)
  final = run_dir.stage("report", {})
  outputs = ["results.json", "report.md", *FIGURES] + (
      [CERT_FIGURE] if config.certify else [])
  if final.done and all((out / f).exists() for f in outputs):
    _common.log(config.quiet, f"{out}: finished already (rerun with "
                "--overwrite to start afresh)\n")
    _common.log(config.quiet, (out / "report.md").read_text().strip())
    return runs.read_json(out / "results.json")

  def say(text: str) -> None:
    _common.log(config.quiet, text)

  x_train, y_train = data.train
  model_spec = {"name": config.model, "num_classes": data.num_classes,
                "widths": list(config.widths) if config.widths else None}
  # One model object for every stage: its functions are jit cache keys.
  model = models.make_model(**model_spec)
  say(f"{data.name}: {len(y_train)} training images (stratified subset), "
      f"{len(test[1])} test images; {' and '.join(crafted)} at eps = "
      f"{_common.epsilon_label(epsilon)} ({jax.default_backend()})")

  # Data owner: craft the noise with a surrogate, release uint8 data.
  craft_records, released = {}, {"clean": x_train}
  for method in ["random"] + crafted:
    craft_records[method], released[method] = _craft(
        run_dir, craft_configs[method], data, model, model_spec, timer)
  for method in crafted:
    r = craft_records[method]
    say(f"crafted {method}: {r['rounds']} rounds"
        + (f" ({r['robust_rounds']} robust)" if method == PUE else "")
        + f", surrogate accuracy on noisy data "
        f"{_last(r['noisy_accuracy'])} "
        f"({'converged' if r['converged'] else 'NOT converged'})")

  # Adversary: fresh victims on each release.
  curves, victim_seconds = {}, {}
  for name, images in released.items():
    with timer(f"victims {name}"):
      curves[name], victim_seconds[name] = _victims(
          config, run_dir, name, images, data, test, model, model_spec)
    say(f"victim on {name}: clean test accuracy "
        f"{np.mean([c[-1] for c in curves[name]]):.3f}")

  certification = None
  if config.certify:
    cert_fingerprint = runs.dataset_fingerprint(data.name, "test",
                                                *cert_test)
    say(f"certifying {', '.join(crafted)} with N = {config.draws} draws at "
        f"sigma = {config.sigma:g}, q = {config.q:g}, c = "
        f"{config.confidence:g} on {len(cert_test[1])} test images")
    records = {m: _certify(config, run_dir, m, model, cert_test,
                           cert_fingerprint, say, timer) for m in crafted}
    certification = _certification(config, records, len(cert_test[1]),
                                   crafted)

  with timer("figures"):
    _write_figures(out, data, released, curves, certification, epsilon)
  results = _results(config, data, epsilon, test, model_spec, crafted,
                     craft_records, curves, victim_seconds, certification,
                     timer)
  report = _report(results)
  runs.write_json(out / "results.json", results)
  runs.write_text(out / "report.md", report)
  final.finish({"results": "results.json", "report": "report.md"})
  say("")
  say(report.strip())
  say(f"\nwrote {out / 'results.json'}, report.md, "
      f"{', '.join(f for f in outputs[2:])}")
  return results


def _last(values: Sequence[float]) -> str:
  return f"{values[-1]:.3f}" if values else "-"


def _certification(config: Config, records: Mapping[str, dict[str, Any]],
                   test_size: int, crafted: Sequence[str]
                   ) -> dict[str, Any]:
  """The certification part of results.json, with the PUE-vs-EM
  comparison of this run."""
  em, pue = crafted
  curves = {m: r["curve"] for m, r in records.items()}
  comparison = None
  for (eta, a), (_, b) in zip(curves[em], curves[pue]):
    if a is not None and b is not None:
      comparison = {"eta": eta, em: a, PUE: b, "pue_below_em": b < a}
      break
  return {
      "sigma": config.sigma, "q": config.q, "n": config.draws,
      "confidence": config.confidence, "test_size": test_size,
      "etas": [eta for eta, _ in curves[em]], "curves": curves,
      "largest_certified_eta": {m: r["largest_certified_eta"]
                                for m, r in records.items()},
      "accuracy_summary": {m: r["accuracy_summary"]
                           for m, r in records.items()},
      "draws_per_second": {m: r["draws_per_second"]
                           for m, r in records.items()},
      "certificates": {m: r["certificate"] for m, r in records.items()},
      "model_sha256": {m: r["model_sha256"] for m, r in records.items()},
      "seconds": {m: r["seconds"] for m, r in records.items()},
      "pue_vs_em": comparison,
  }


def _results(config: Config, data: _common.Data, epsilon: float, test,
             model_spec, crafted, craft_records, curves, victim_seconds,
             certification, timer: _common.Timer) -> dict[str, Any]:
  accuracy = {name: float(np.mean([c[-1] for c in runs_]))
              for name, runs_ in curves.items()}
  per_seed = {name: [c[-1] for c in runs_] for name, runs_ in curves.items()}
  # Stage times as measured when each stage ran (a resumed stage counts
  # the part run since its last checkpoint).
  stage_seconds = {f"craft {m}": r["seconds"]
                   for m, r in craft_records.items()}
  stage_seconds.update({f"victims {name}": s
                        for name, s in victim_seconds.items()})
  if certification:
    stage_seconds.update({f"certify {m}": s for m, s in
                          certification["seconds"].items()})
  return runs.jsonable({
      "dataset": data.name, "train_size": len(data.train[1]),
      "test_size": len(test[1]), "epochs": config.epochs,
      "epsilon": epsilon, "epsilon_label": _common.epsilon_label(epsilon),
      "method": config.method, "crafted": list(crafted),
      "releases": list(curves), "model": model_spec,
      "seeds": config.seeds, "seed": config.seed,
      "victim_accuracy": accuracy, "victim_accuracy_per_seed": per_seed,
      "victim_curves": curves,
      "accuracy_drop": {name: accuracy["clean"] - acc
                        for name, acc in accuracy.items() if name != "clean"},
      "craft": craft_records, "certification": certification,
      "wall_seconds": {"stages": stage_seconds,
                       "this_invocation": dict(timer.seconds)},
      **_common.metadata(config),
  })


def _write_figures(out: pathlib.Path, data: _common.Data,
                   released: Mapping[str, np.ndarray], curves,
                   certification, epsilon: float) -> None:
  x_train, y_train = data.train
  # One example per class.
  show = np.array([np.flatnonzero(y_train == c)[0]
                   for c in np.unique(y_train)])[:10]
  _figures.image_grid(
      out / "samples.png", x_train[show],
      {k: v[show] for k, v in released.items() if k != "clean"},
      y_train[show], class_names=FASHION_MNIST_CLASSES
      if data.name == "fashion_mnist" else None)
  _figures.accuracy_curves(
      out / "victim_curves.png", curves,
      title=f"{data.name}, eps = {_common.epsilon_label(epsilon)}, "
      f"{len(y_train)} training images")
  if certification:
    c = certification
    _figures.certified_curves(
        out / CERT_FIGURE, c["curves"],
        ylabel=f"certified ({c['q']:g}, eta)-learnability",
        title=f"sigma {c['sigma']:g}, q {c['q']:g}, N {c['n']}, confidence "
        f"{c['confidence']:g} (lower protects more)")


# -------------------------------------------------------------- report
def _value(v: float | None) -> str:
  return "abstains" if v is None else f"{v:.4f}"


def comparison_line(certification: Mapping[str, Any] | None,
                    method: str) -> str:
  """One sentence: was PUE's certified learnability below EM's in this run
  (at the smallest eta both certify)?"""
  where = (f"Over seeds and PUE draw counts, see the study {STUDY} (and "
           "docs/results.md).")
  if certification is None:
    return f"PUE against EM: not certified in this run (--no-certify). {where}"
  c = certification["pue_vs_em"]
  if c is None:
    return ("PUE against EM: no eta is certified for both surrogates in this "
            f"run (N = {certification['n']} is too small), so they cannot be "
            f"compared here. {where}")
  verdict = ("below" if c["pue_below_em"] else
             "equal to" if c[PUE] == c[method] else "not below (above)")
  return (f"PUE against EM: in this run PUE's certified learnability was "
          f"{verdict} {method}'s at eta = {c['eta']:g}, the smallest eta "
          f"both certify ({c[PUE]:.4f} against {c[method]:.4f}). {where}")


def _report(results: Mapping[str, Any]) -> str:
  """report.md: every number the console prints at the end."""
  r = results
  method = r["method"]
  model = r["model"]
  lines = [
      "# jaxue quickstart", "",
      f"{r['dataset']}, {r['train_size']} training images (stratified "
      f"subset), {r['test_size']} test images; {' and '.join(r['crafted'])} "
      f"at eps = {r['epsilon_label']}; {model['name']} "
      f"{tuple(model['widths']) if model['widths'] else '(published widths)'}"
      f"; {r['epochs']}-epoch victims, {r['seeds']} seed(s); seed "
      f"{r['seed']}.", "", "## Crafting", ""]
  rows = []
  for name, c in r["craft"].items():
    if name == "random":
      continue
    rows.append((name, c["rounds"],
                 c["robust_rounds"] if name == PUE else "-",
                 "yes" if c["converged"] else "no",
                 _last(c["noisy_accuracy"]), f"{c['seconds']:.1f}"))
  lines += ["```", _common.format_table(
      rows, ("method", "rounds", "robust rounds", "converged",
             "surrogate accuracy on noisy data", "seconds")), "```", ""]
  lines += ["## Victims: clean test accuracy", ""]
  clean = r["victim_accuracy"]["clean"]
  rows = [(name, f"{acc:.4f}", f"{acc - clean:+.4f}") + (
      (", ".join(f"{a:.4f}" for a in r["victim_accuracy_per_seed"][name]),)
      if r["seeds"] > 1 else ())
          for name, acc in r["victim_accuracy"].items()]
  header = ("training data", "victim accuracy", "vs clean") + (
      ("per seed",) if r["seeds"] > 1 else ())
  lines += ["```", _common.format_table(rows, header), "```", ""]
  cert = r["certification"]
  if cert:
    names = list(cert["curves"])
    lines += [
        "## Certified (q, eta)-learnability", "",
        f"sigma {cert['sigma']:g}, q {cert['q']:g}, N {cert['n']}, "
        f"confidence {cert['confidence']:g}, on the first "
        f"{cert['test_size']} test images (lower protects more; 'abstains':"
        " N is too small to certify that eta).", ""]
    rows = [[f"{eta:g}"] + [_value(cert["curves"][m][i][1]) for m in names]
            for i, eta in enumerate(cert["etas"])]
    rows.append(["largest certified eta"] + [
        "none" if cert["largest_certified_eta"][m] is None
        else f"{cert['largest_certified_eta'][m]:g}" for m in names])
    lines += ["```", _common.format_table(rows, ["eta"] + names), "```", ""]
    rows = [(m, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"{s['min']:.4f}",
             f"{s['max']:.4f}", f"{s['q_quantile']:.4f}",
             f"{s['unperturbed']:.4f}",
             "-" if cert["draws_per_second"][m] is None
             else f"{cert['draws_per_second'][m]:.3g}")
            for m in names for s in [cert["accuracy_summary"][m]]]
    lines += [f"Smoothed test accuracy of each surrogate over the N = "
              f"{cert['n']} draws:", "", "```", _common.format_table(
                  rows, ("surrogate", "mean", "std", "min", "max",
                         f"{cert['q']:g}-quantile", "unperturbed",
                         "draws/s")), "```", ""]
  lines += [comparison_line(cert, method), ""]
  wall = r["wall_seconds"]
  rows = [(name, f"{s:.1f}") for name, s in wall["stages"].items()]
  rows.append(("total of the stages", f"{sum(wall['stages'].values()):.1f}"))
  rows.append(("this invocation (all)",
               f"{sum(wall['this_invocation'].values()):.1f}"))
  lines += ["## Wall times (s)", "", "```",
            _common.format_table(rows, ("stage", "seconds")), "```", "",
            "Figures: samples.png, victim_curves.png"
            + (", certified_learnability.png" if cert else "")
            + ". Numbers: results.json.", ""]
  return "\n".join(lines)
