"""Weight-recovery attack on a saved model (PUE, NDSS 2025).

    jaxue recover --checkpoint runs/em-eval --name victim-seed0 \\
        --out runs/em-recover

Wang et al., "Provably Unlearnable Data Examples", NDSS 2025 (arXiv
2405.03316), recovery attack section. Starting from theta0 -- the model of
--checkpoint (a model folder with model.json, or a run directory with one
model under models/, or several and --name picking one) -- the attacker
fine-tunes on a stratified --fraction (20%) of the clean training set with
projected SGD inside ||theta - theta0||_2 <= eta, for every eta of --etas;
the random variant keeps the best of --random-directions Gaussian directions
of norm eta, chosen on the same clean subset. Both report the clean test
accuracy against eta. The dataset is the one the model was trained on
(recorded in its model.json; a contradicting --dataset is refused).

Writes in --out: results.json (per eta: projected-SGD and random-direction
accuracies, the SGD history), recovery.png, report.md (every number
printed) and eta_*/ (one stage per radius: a rerun resumes at the first
radius not done, with the same results as an uninterrupted run).

The default eta grid (0.25 ... 8) spans about 2% to 60% of ||theta0|| for
the CPU small CNN (16/32/64 widths); ||theta0|| is printed and recorded so
the grid can be read relative to it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue import recover as recover_lib
from jaxue import runs
from jaxue import train
from jaxue.pipelines import _common
from jaxue.pipelines import _figures
from jaxue.pipelines import certify as certify_pipeline
from jaxue.pipelines import options
from jaxue.pipelines.options import option

DEFAULT_ETAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _fraction(value: Any) -> str | None:
  if options.unit_interval(value) is None and value > 0:
    return None
  return f"must be a number in (0, 1], got {value!r}"


@dataclasses.dataclass(frozen=True)
class Config:
  """Flags of ``jaxue recover`` (see the module docstring)."""
  checkpoint: str | None = option(
      None, "theta0: a model folder (model.json) or a run directory with "
      "its models under models/", parse=str, metavar="PATH")
  name: str | None = option(
      None, "which model of a run directory (its folder under models/); "
      "needed when it holds several", parse=str)
  dataset: str | None = options.dataset(
      None, "dataset (default: the one the model was trained on; another "
      "one is refused)")
  data_dir: str | None = options.data_dir()
  test_size: int | None = options.test_size()
  etas: tuple[float, ...] = option(
      DEFAULT_ETAS, "radii eta of the parameter ball (finite, >= 0)",
      parse=options.parse_float_list,
      check=options.each(options.nonnegative_float), metavar="ETA,...")
  fraction: float = option(
      0.2, "stratified fraction of the clean training set the attacker "
      "holds", parse=options.parse_fraction, check=_fraction)
  epochs: int = option(
      recover_lib.DEFAULT_EPOCHS, "projected-SGD epochs over the attacker's "
      "clean subset", parse=int, check=options.positive_int)
  batch_size: int = option(128, "SGD batch size", parse=int,
                           check=options.positive_int)
  learning_rate: float = option(
      0.01, "initial learning rate (cosine-decayed to zero)", parse=float,
      check=options.positive_float)
  weight_decay: float = option(5e-4, "L2 weight decay", parse=float,
                               check=options.nonnegative_float)
  project: str = option(
      "ball", "ball: ||theta - theta0|| <= eta; sphere: = eta (the "
      "reference code's quirk)", choices=recover_lib.PROJECTIONS)
  random_directions: int = option(
      64, "random directions per eta for the random variant (0: skip)",
      parse=int, check=options.nonnegative_int)
  chunk_size: int | None = option(
      None, "random directions vmapped together (default: 1 on CPU, 16 "
      "on accelerators)", parse=int,
      check=options.optional(options.positive_int), runtime=True)
  seed: int = options.seed()
  quiet: bool = options.quiet()

  def __post_init__(self):
    options.validate(self)
    if self.checkpoint is None:
      raise ValueError("--checkpoint is required (a model folder or a run "
                       "directory)")
    if len(set(self.etas)) != len(self.etas):
      raise ValueError(f"--etas must be distinct, got {self.etas}")


def find_model(path: str, name: str | None) -> pathlib.Path:
  """The model folder that --checkpoint (and --name) designate.

  Raises:
    RunError: no model there, or a run directory with several and no (or
      an unknown) ``name``.
  """
  path = pathlib.Path(path)
  if (path / "model.json").is_file():
    if name is not None:
      raise runs.RunError(f"--name {name} needs a run directory, but "
                          f"{path} is a model folder")
    return path
  if not path.is_dir():
    raise runs.RunError(f"{path} does not exist (--checkpoint)" if not
                        path.exists() else f"{path} is a file, not a model "
                        "folder or run directory")
  found = {p.parent.name: p.parent
           for p in sorted(path.glob("models/*/model.json"))}
  if not found:
    raise runs.RunError(f"{path} is not a jaxue model checkpoint (no "
                        "model.json, no models/*/model.json)")
  if name is not None:
    if name not in found:
      raise runs.RunError(f"{path}/models has no {name!r}; choose from "
                          f"{', '.join(found)}")
    return found[name]
  if len(found) > 1:
    raise runs.RunError(f"{path} holds {len(found)} models "
                        f"({', '.join(found)}); pick one with --name")
  return next(iter(found.values()))


def _verify_training_data(path: pathlib.Path, description: dict,
                          data: _common.Data) -> None:
  """The model was made from this dataset (as far as can be checked).

  A model records the fingerprint of the (sub)set it was trained on; when
  that is the whole training split it is compared in full, otherwise its
  name and image shape.
  """
  recorded = description.get("dataset")
  if not recorded:
    return
  shape = list(recorded.get("shape") or [])
  if shape == list(data.train_fingerprint["shape"]):
    runs.check_dataset(recorded, data.train_fingerprint, f"the model {path}")
  elif shape[1:] != list(data.image_shape):
    raise runs.RunError(f"the model {path} was trained on {shape[1:]} "
                        f"images, {data.name} has {list(data.image_shape)}")


def run(config: Config, workdir, *, overwrite: bool = False
        ) -> dict[str, Any]:
  """Runs the recovery attack for every eta into the run ``workdir``."""
  timer = _common.Timer()
  lines: list[str] = []

  def say(text: str) -> None:
    lines.append(text)
    _common.log(config.quiet, text)

  with timer("load"):
    path = find_model(config.checkpoint, config.name)
    model, variables0, description = runs.load_model(path)
    dataset = certify_pipeline.dataset_of({path.name: (path, description)},
                                          config.dataset)
    data = _common.load_data(dataset, config.data_dir, None, config.seed,
                             config.test_size)
  x_train, y_train = data.train
  test = data.test
  _verify_training_data(path, description, data)
  certify_pipeline.check_fits(path, model, description, *test, dataset)
  if model.num_classes != data.num_classes:
    raise ValueError(f"the model {path} has {model.num_classes} classes, "
                     f"{data.name} has {data.num_classes}")
  # Keys by position: the subset, every eta's SGD shuffles (common random
  # numbers: the curve varies with eta alone) and the random directions.
  subset_key, sgd_key, random_key = jax.random.split(
      jax.random.key(config.seed), 3)
  indices = data_lib.stratified_subset(subset_key, y_train, config.fraction,
                                       num_classes=data.num_classes)
  recovery_set = (x_train[indices], y_train[indices])
  if len(indices) < config.batch_size:
    raise ValueError(
        f"the recovery set has {len(indices)} images ({config.fraction:g} "
        f"of {len(y_train)}), fewer than --batch-size {config.batch_size}")
  run_dir = runs.Run(workdir, "recover", options.fingerprinted(config),
                     overwrite=overwrite)

  theta0_norm = float(np.sqrt(sum(  # On the host: no compilations.
      np.sum(np.square(np.asarray(x, np.float64)))
      for x in jax.tree.leaves(variables0["params"]))))
  theta0_accuracy = train.evaluate(model.apply, variables0, *test)
  say(f"theta0: {model.name} from {path}, ||theta0||_2 = {theta0_norm:.3f}, "
      f"clean test accuracy {theta0_accuracy:.4f} on {len(test[1])} "
      f"{data.name} test images; recovery set {len(indices)} images "
      f"({config.fraction:g} of {len(y_train)})")
  base = {
      "model_sha256": description.get("sha256"),
      "recovery_set": runs.dataset_fingerprint(data.name, "train",
                                               *recovery_set),
      "test": data.test_fingerprint, "seed": config.seed,
      "epochs": config.epochs, "batch_size": config.batch_size,
      "learning_rate": config.learning_rate,
      "weight_decay": config.weight_decay, "project": config.project,
      "random_directions": config.random_directions}

  per_eta, computed = [], 0
  bar = tqdm(config.etas, desc="recovery radii", unit="eta",
             disable=config.quiet)
  for eta in bar:
    stage = run_dir.stage(f"eta_{float(eta)!r}", dict(base, eta=float(eta)))
    if stage.done:
      per_eta.append(stage.result())
      continue
    with timer("recovery"):
      start = time.perf_counter()
      variables, history = recover_lib.recover(
          sgd_key, model, variables0, *recovery_set, eta=eta,
          epochs=config.epochs, batch_size=config.batch_size,
          learning_rate=config.learning_rate,
          weight_decay=config.weight_decay, project=config.project,
          progress=False if config.quiet else f"recover eta={eta:g}")
      accuracy = train.evaluate(model.apply, variables, *test)
      history.pop("seconds", None)  # Timings: not part of the result.
      result = {"eta": float(eta), "test_accuracy": accuracy,
                "distance": history["distance"][-1], "history": history,
                "seconds": round(time.perf_counter() - start, 3)}
    if config.random_directions:
      with timer("random_directions"):
        r = recover_lib.random_direction_recovery(
            random_key, model, variables0, recovery_set, test, eta=eta,
            num_directions=config.random_directions,
            chunk_size=config.chunk_size)
      result["random"] = {
          "test_accuracy": r["test_accuracy"],
          "best_index": r["best_index"],
          "selection_accuracy": r["selection_accuracy"],
          "mean_selection_accuracy": float(
              r["selection_accuracies"].mean())}
    runs.fault_point("recover:radius")
    per_eta.append(stage.finish(result))
    computed += 1
    bar.set_postfix(eta=f"{eta:g}", acc=f"{accuracy:.3f}")
  bar.close()

  rows = []
  for r in per_eta:
    random = r.get("random")
    rows.append([f"{r['eta']:g}", f"{r['eta'] / theta0_norm:.3f}",
                 f"{r['test_accuracy']:.4f}", f"{r['distance']:.4g}",
                 "-" if random is None else
                 f"{random['test_accuracy']:.4f}",
                 "-" if random is None else
                 f"{random['selection_accuracy']:.4f}"])
  say(f"\nclean test accuracy after recovery ({config.project} projection, "
      f"{config.epochs} epoch{'s' if config.epochs > 1 else ''}; theta0: "
      f"{theta0_accuracy:.4f})")
  say(_common.format_table(rows, [
      "eta", "eta/||theta0||", "projected SGD", "final distance",
      f"best of {config.random_directions} random",
      "its selection accuracy"]))
  if computed < len(per_eta):
    say(f"{len(per_eta) - computed} of {len(per_eta)} radii resumed from "
        f"{run_dir.path}")

  series = {f"projected SGD ({config.project})":
                [(r["eta"], r["test_accuracy"]) for r in per_eta],
            "theta0 (no recovery)": [(r["eta"], theta0_accuracy)
                                     for r in per_eta]}
  if config.random_directions:
    series[f"best of {config.random_directions} random directions"] = [
        (r["eta"], r["random"]["test_accuracy"]) for r in per_eta]
  with timer("figures"):
    _figures.line_plot(
        run_dir.path / "recovery.png", series, xlabel="eta (L2 radius)",
        ylabel="clean test accuracy",
        title=f"weight recovery from {path.name} (||theta0|| = "
        f"{theta0_norm:.2f})", logx=all(r["eta"] > 0 for r in per_eta))
  results = {
      "recovery": [[r["eta"], r["test_accuracy"]] for r in per_eta],
      "random_directions": [[r["eta"], r["random"]["test_accuracy"]]
                            for r in per_eta if "random" in r],
      "per_eta": per_eta,
      "theta0_accuracy": theta0_accuracy, "theta0_norm": theta0_norm,
      "checkpoint": str(path), "model_sha256": description.get("sha256"),
      "model": description.get("model"),
      "checkpoint_description": description,
      "dataset": data.name, "recovery_size": len(indices),
      "recovery_set": base["recovery_set"], "test_size": len(test[1]),
      "test": data.test_fingerprint, "fraction": config.fraction,
      "epochs": config.epochs, "batch_size": config.batch_size,
      "learning_rate": config.learning_rate,
      "weight_decay": config.weight_decay, "project": config.project,
      "num_directions": config.random_directions,
      "computed_radii": computed,
      "wall_seconds": dict(timer.seconds,
                           total=round(sum(timer.seconds.values()), 2)),
      **_common.metadata(config),
  }
  runs.write_json(run_dir.path / "results.json", results)
  runs.write_text(run_dir.path / "report.md", (
      "# jaxue recover\n\nModel: " + str(path) + ". Figure: recovery.png. "
      "Numbers: results.json.\n\n```\n" + "\n".join(lines).strip("\n") +
      "\n```\n"))
  _common.log(config.quiet, f"wrote {run_dir.path / 'results.json'}, "
              "report.md, recovery.png")
  return results
