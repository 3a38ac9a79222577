"""Every protection method against every defence: the benchmark table.

    jaxue table --out runs/table
    jaxue table --out runs/rem-table \\
        --methods clean,random,em-samplewise,rem,error-max \\
        --defences standard,adversarial

The method x defence table of Fu et al. 2022 (Tables 1-2), APBench and the
image-shortcut-squeezing study. For each method (--methods: clean, or one
of `jaxue craft`'s) the training subset is protected by `jaxue craft` at
eps = --epsilon (the L-inf budget rho_u; REM's rho_a defaults to eps / 2;
AR and LSP take their L2 budgets, OPS changes one pixel), or taken from an
earlier craft run (--from-runs METHOD=DIR); then victims are trained by
`jaxue evaluate` under each defence (--defences: none (alias standard),
augmentation, cutout, mixup, cutmix, grayscale, jpeg, ueraser-lite,
ueraser, ueraser-max, orthogonal-projection, adversarial: Madry
adversarial training at radius rho_a, --adv-steps steps of rho_a / 5), each
applied alone. One --model (with --widths) is both the crafting surrogates'
and the victims' architecture. --poison-ratio protects only a random
fraction of each release.

Every cell is a run directory of its own under --cells (default
--out/cells): cells/METHOD/ is the `jaxue craft` run of a method and
cells/METHOD/DEFENCE/ the `jaxue evaluate` run of its victims. Each is keyed
by its own settings: a finished cell is reused by a rerun, or by another
table over the same --cells with the same settings for that cell, and a
cell made with other settings (another --epsilon, --model, ...) is refused,
never reused; an interrupted EM/PUE/REM crafting resumes from its last
checkpoint, victims per seed.

Writes in --out: results.json (victim accuracy per method and defence: the
mean over --seeds, their spread and each seed; crafting wall times and
budgets; every setting), table.json (just the grid), table.md and
heatmap.png.

The defaults are CPU-sized (widths 16,32,64, 10000 training images); the
published settings are --widths 64,128,256 --train-size all, and on a
2-core CPU --rem-train-steps, --eot-draws, --attack-steps, --noise-steps,
--surrogate-draws, --noise-draws and --epochs scale the work down (all
recorded in results.json).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import pathlib
import time
from typing import Any

import numpy as np

from jaxue import data as data_lib
from jaxue import defences as defences_lib
from jaxue import runs
from jaxue.pipelines import _common
from jaxue.pipelines import _figures
from jaxue.pipelines import craft
from jaxue.pipelines import evaluate
from jaxue.pipelines import options
from jaxue.pipelines.options import option

METHODS = ("clean",) + craft.METHODS
DEFAULT_METHODS = ("clean", "random", "em-samplewise", "em-classwise", "rem",
                   "pue-classwise", "error-max", "ops", "ar", "lsp")
# "standard" is "none" under the name of Fu et al.'s tables.
DEFENCES = defences_lib.DEFENCES + ("adversarial", "standard")
DEFAULT_DEFENCES = ("none", "augmentation", "cutout", "mixup", "cutmix",
                    "jpeg", "adversarial")
# The table's crafting flags, which mean what `jaxue craft`'s do (each is
# passed to the methods it applies to).
CRAFT_FLAGS = ("max_rounds", "surrogate_draws", "noise_draws", "rho_a",
               "rem_train_steps", "lr_decay_every", "noise_steps",
               "eot_draws", "attack_steps", "checkpoint_every",
               "clean_epochs", "surrogate_augment", "ar_min_response")
VICTIM_MODELS = {"small_cnn": "small CNN",
                 "small_cnn_flat": "small CNN with a flattened head",
                 "resnet18": "ResNet-18"}


def _craft_option(name: str) -> Any:
  """The `jaxue craft` flag ``name``: same default, meaning and checks."""
  field = {f.name: f for f in dataclasses.fields(craft.Config)}[name]
  return dataclasses.field(default=field.default,
                           metadata=dict(field.metadata))


def _poison_ratio(value: Any) -> str | None:
  if options.unit_interval(value) is None and value > 0:
    return None
  return f"must be in (0, 1], got {value!r}"


def _sources(value: Any) -> str | None:
  for entry in value:
    method, sep, folder = entry.partition("=")
    if not sep or not method or not folder:
      return f"entries must be METHOD=DIR, got {entry!r}"
  return None


@dataclasses.dataclass(frozen=True)
class Config:
  """Flags of ``jaxue table`` (see the module docstring)."""

  methods: tuple[str, ...] = option(
      DEFAULT_METHODS, "protection methods, the rows (comma-separated)",
      parse=options.parse_name_list, choices=METHODS, metavar="METHOD,...")
  defences: tuple[str, ...] = option(
      DEFAULT_DEFENCES, "defences, the columns, each applied alone "
      "('standard' is 'none'; 'adversarial' is Madry adversarial training "
      "at rho_a)", parse=options.parse_name_list, choices=DEFENCES,
      metavar="DEFENCE,...")
  poison_ratio: float = option(
      1.0, "fraction of each release that stays protected (the rest "
      "reverts to its clean originals)", parse=options.parse_fraction,
      check=_poison_ratio)
  from_runs: tuple[str, ...] = option(
      (), "take METHOD's release from the jaxue craft run DIR instead of "
      "crafting it (comma-separated)", parse=options.parse_name_list,
      check=_sources, metavar="METHOD=DIR,...")
  cells: str | None = option(
      None, "folder of the cells (default: --out/cells): tables over the "
      "same cells share every finished cell with the same settings",
      parse=str, metavar="DIR", runtime=True)
  dataset: str = options.dataset()
  data_dir: str | None = options.data_dir()
  train_size: int | None = options.train_size()
  test_size: int | None = options.test_size()
  model: str = options.model(
      help="architecture of the crafting surrogates and of the victims "
      "(one --model for both)")
  widths: tuple[int, ...] | None = options.widths()
  epsilon: float | None = options.epsilon()
  epochs: int = options.epochs()
  seeds: int = options.seeds()
  adv_steps: int = option(10, "PGD steps of adversarial training (of "
                          "rho_a / 5)", parse=int,
                          check=options.nonnegative_int)
  max_rounds: int | None = _craft_option("max_rounds")
  sigma: float = options.sigma()
  surrogate_draws: int | None = _craft_option("surrogate_draws")
  noise_draws: int | None = _craft_option("noise_draws")
  rho_a: float | None = option(
      None, "REM's adversarial radius rho_a, also the adversarial victims' "
      "(default eps / 2)", parse=options.parse_fraction,
      check=options.optional(options.open_unit))
  rem_train_steps: int | None = _craft_option("rem_train_steps")
  lr_decay_every: int | None = _craft_option("lr_decay_every")
  noise_steps: int | None = _craft_option("noise_steps")
  eot_draws: int | None = _craft_option("eot_draws")
  attack_steps: int | None = _craft_option("attack_steps")
  checkpoint_every: int | None = _craft_option("checkpoint_every")
  clean_epochs: int | None = _craft_option("clean_epochs")
  surrogate_augment: bool = _craft_option("surrogate_augment")
  error_max_steps: int | None = option(
      None, "error-max: PGD steps of the noise (default 20, of eps / 10)",
      parse=int, check=options.optional(options.positive_int))
  ar_min_response: float | None = _craft_option("ar_min_response")
  seed: int = options.seed()
  data_parallel: bool = option(
      False, "split every training and crafting batch over all devices of "
      "this host", runtime=True)
  quiet: bool = options.quiet()

  def __post_init__(self):
    options.validate(self)
    for flag, names in (("--methods", self.methods),
                        ("--defences", self.defences)):
      twice = sorted({n for n in names if names.count(n) > 1})
      if twice:
        raise ValueError(f"{flag} lists {twice[0]!r} twice")
    if "none" in self.defences and "standard" in self.defences:
      raise ValueError("--defences lists both none and standard (the same "
                       "defence)")
    seen = set()
    for entry in self.from_runs:
      method = entry.partition("=")[0]
      if method not in self.methods or method == "clean":
        raise ValueError(f"--from-runs {entry}: METHOD must be one of the "
                         "crafted --methods")
      if method in seen:
        raise ValueError(f"--from-runs gives {method} twice")
      seen.add(method)


# -------------------------------------------------------------- the cells
def sources(config: Config) -> dict[str, pathlib.Path]:
  """The ``--from-runs METHOD=DIR`` folders by method."""
  return {m: pathlib.Path(d) for m, _, d in
          (e.partition("=") for e in config.from_runs)}


def craft_config(config: Config, method: str) -> craft.Config:
  """The `jaxue craft` settings of one method's cell (resolved: what its
  run records, so that every default is explicit in its key)."""
  fields: dict[str, Any] = {}
  for name in CRAFT_FLAGS:
    if method in craft.APPLIES_TO[name]:
      fields[name] = getattr(config, name)
  if method in craft.ERROR_MAX:
    fields["pgd_steps"] = config.error_max_steps
  if method in craft.PUE:
    fields["sigma"] = config.sigma
  if method not in craft.NOT_LINF:
    fields["epsilon"] = config.epsilon
  return craft.resolved(craft.Config(
      method=method, dataset=config.dataset, data_dir=config.data_dir,
      train_size=config.train_size, model=config.model,
      widths=config.widths, seed=config.seed,
      data_parallel=config.data_parallel, quiet=config.quiet, **fields))


def adversarial_radius(config: Config) -> float:
  """rho_a: the adversarial victims' radius (REM's too)."""
  if config.rho_a is not None:
    return config.rho_a
  return options.resolve_epsilon(config.epsilon, config.dataset) / 2


def evaluate_config(config: Config, defence: str,
                    release: pathlib.Path | None) -> evaluate.Config:
  """The `jaxue evaluate` settings of one cell (``release`` None: clean)."""
  fields: dict[str, Any] = {}
  if release is None:
    fields.update(clean=True, dataset=config.dataset,
                  train_size=config.train_size)
  else:
    fields.update(release=str(release), poison_ratio=config.poison_ratio)
  if defence == "adversarial":
    fields.update(adversarial=True, adv_radius=adversarial_radius(config),
                  adv_steps=config.adv_steps)
  elif defence not in ("none", "standard"):
    fields["defence"] = defence
  return evaluate.Config(
      data_dir=config.data_dir, test_size=config.test_size,
      model=config.model, widths=config.widths, epochs=config.epochs,
      seeds=config.seeds, seed=config.seed,
      data_parallel=config.data_parallel, quiet=config.quiet, **fields)


def _crafted_source(config: Config, method: str, folder: pathlib.Path
                    ) -> dict[str, Any]:
  """The results.json of a ``--from-runs METHOD=DIR`` folder, checked to be
  a craft run of METHOD on the table's dataset."""
  summary = folder / "results.json"
  if not summary.is_file() or not (folder / evaluate.RELEASE_FILE).is_file():
    raise ValueError(f"--from-runs {method}={folder}: no jaxue craft run "
                     f"there (results.json and {evaluate.RELEASE_FILE})")
  info = runs.read_json(summary)
  if info.get("method") != method:
    raise ValueError(f"--from-runs {method}={folder} holds a "
                     f"{info.get('method')!r} release, not {method!r}")
  dataset = data_lib.get_info(config.dataset).name
  if info.get("dataset") != dataset:
    raise ValueError(f"--from-runs {method}={folder} is a release of "
                     f"{info.get('dataset')}, not of the table's {dataset}")
  return info


def _cell(method: str, defence: str) -> str:
  # "standard" is "none": one cell under either name.
  return "none" if defence == "standard" else defence


# ------------------------------------------------------------------ run
def run(config: Config, workdir: str | pathlib.Path, *,
        overwrite: bool = False) -> dict[str, Any]:
  """Crafts and evaluates every cell (see the module docstring).

  Returns:
    The results, as in ``results.json``.
  """
  start = time.perf_counter()
  epsilon = options.resolve_epsilon(config.epsilon, config.dataset)
  folders = sources(config)
  crafted: dict[str, dict[str, Any]] = {
      m: _crafted_source(config, m, f) for m, f in folders.items()}
  # Every cell's settings are checked before any work.
  craft_configs = {m: craft_config(config, m) for m in config.methods
                   if m != "clean" and m not in folders}
  out = pathlib.Path(workdir)
  # The resolved epsilon is recorded: the default and the same value given
  # explicitly are the same table, another one is refused.
  runs.Run(out, "table", dict(options.fingerprinted(config),
                              epsilon=epsilon), overwrite=overwrite)
  cells = pathlib.Path(config.cells) if config.cells else out / "cells"
  accuracy, spread, per_seed, craft_seconds = {}, {}, {}, {}
  peak, peak_spread, linear = {}, {}, {}
  train_size = channels = None
  for method in config.methods:
    release = folders.get(method)
    if method in craft_configs:
      release = cells / method
      _common.log(config.quiet, f"== crafting {method}")
      crafted[method] = craft.run(craft_configs[method], release)
    if method in crafted:
      info = crafted[method]
      train_size = train_size or info["train_size"]
      summary = info.get("craft") or {}
      craft_seconds[method] = summary.get(
          "craft_seconds_total", info["wall_seconds"]["craft"])
    accuracy[method], spread[method], per_seed[method] = {}, {}, {}
    peak[method], peak_spread[method] = {}, {}
    for defence in config.defences:
      _common.log(config.quiet, f"== victims: {method}, defence {defence}")
      victims = evaluate.run(evaluate_config(config, defence, release),
                             cells / method / _cell(method, defence))
      accuracy[method][defence] = victims["victim_accuracy"]
      spread[method][defence] = victims["victim_accuracy_std"]
      per_seed[method][defence] = victims["victim_accuracy_per_seed"]
      peak[method][defence] = victims["victim_peak_accuracy"]
      peak_spread[method][defence] = victims["victim_peak_accuracy_std"]
      if victims.get("projection_linear_accuracy") is not None:
        linear[method] = victims["projection_linear_accuracy"]
      train_size = train_size or victims["train_size"]
      channels = channels or victims["image_shape"][-1]

  rho_a = adversarial_radius(config)
  rem = (dataclasses.asdict(craft_configs["rem"])
         if "rem" in craft_configs else None)
  results = runs.jsonable({
      "methods": list(config.methods), "defences": list(config.defences),
      "victim_accuracy": accuracy,
      "victim_accuracy_std": spread,
      "victim_accuracy_per_seed": per_seed,
      # Early stopping's result: the best epoch's accuracy.
      "victim_peak_accuracy": peak,
      "victim_peak_accuracy_std": peak_spread,
      # How well a linear model fits each release (orthogonal projection).
      "projection_linear_accuracy": linear,
      "craft_wall_seconds": craft_seconds,
      "budgets": {m: _budget_label(c) for m, c in crafted.items()},
      "craft": {m: {"wall_seconds": c["wall_seconds"],
                    **(c.get("craft") or {})} for m, c in crafted.items()},
      "from_runs": {m: str(f) for m, f in folders.items()},
      "poison_ratio": config.poison_ratio, "cells": str(cells),
      "dataset": data_lib.get_info(config.dataset).name,
      "train_size": train_size, "channels": channels,
      "epsilon": epsilon, "rho_a": rho_a,
      "epochs": config.epochs, "seeds": config.seeds,
      "model": {"name": config.model,
                "widths": list(config.widths) if config.widths else None},
      "adversarial_training": {"radius": rho_a, "steps": config.adv_steps,
                               "step_size": rho_a / 5},
      "rem": None if rem is None else {
          k: rem[k] for k in ("rho_a", "rem_train_steps", "lr_decay_every",
                              "noise_steps", "eot_draws", "attack_steps",
                              "checkpoint_every")},
      "pue": {"sigma": config.sigma,
              "surrogate_draws": config.surrogate_draws,
              "noise_draws": config.noise_draws},
      "error_max": {"clean_epochs": config.clean_epochs,
                    "pgd_steps": config.error_max_steps,
                    "surrogate_augment": config.surrogate_augment},
      "wall_seconds": {"total_this_invocation":
                       round(time.perf_counter() - start, 1)},
      **_common.metadata(config),
  })
  table = markdown(results)
  runs.write_json(out / "results.json", results)
  runs.write_json(out / "table.json", {
      k: results[k] for k in ("methods", "defences", "victim_accuracy",
                              "victim_accuracy_std", "victim_peak_accuracy",
                              "victim_peak_accuracy_std", "budgets",
                              "dataset", "epsilon", "rho_a",
                              "poison_ratio")})
  runs.write_text(out / "table.md", table)
  _figures.heatmap(
      out / "heatmap.png",
      np.array([[accuracy[m][d] for d in config.defences]
                for m in config.methods]),
      rows=list(config.methods),
      columns=[_defence_label(d, rho_a) for d in config.defences],
      title=f"victim clean test accuracy ({results['dataset']})")
  _common.log(config.quiet, table)
  _common.log(config.quiet, f"wrote {out / 'results.json'}, table.json, "
              "table.md, heatmap.png")
  return results


# --------------------------------------------------------------- output
def _defence_label(defence: str, rho_a: float) -> str:
  if defence == "adversarial":
    return f"adversarial (rho_a = {_common.epsilon_label(rho_a)})"
  return defence


def _budget_label(crafted: Mapping[str, Any]) -> str:
  """A crafted dataset's budget: "Linf 16/255", "L2 1.0" or "L0 1 pixel"."""
  if crafted.get("pixels_changed"):
    return f"L0 {crafted['pixels_changed']} pixel"
  if crafted.get("l2_epsilon"):
    return f"L2 {crafted['l2_epsilon']:.3g}"
  if crafted.get("epsilon"):
    return f"Linf {_common.epsilon_label(crafted['epsilon'])}"
  return "-"


def markdown(results: Mapping[str, Any]) -> str:
  """The method x defence table in markdown (mean +- std over seeds)."""
  defence_names: Sequence[str] = results["defences"]
  lines = ["| method | " + " | ".join(
      _defence_label(d, results["rho_a"]) for d in defence_names)
           + " | budget | crafting wall time (s) |",
           "|---" * (len(defence_names) + 3) + "|"]
  for method, cells in results["victim_accuracy"].items():
    row = [method]
    for defence in defence_names:
      std = results["victim_accuracy_std"][method][defence]
      row.append(f"{cells[defence]:.3f} +- {std:.3f}")
    row.append(results.get("budgets", {}).get(method) or "-")
    seconds = results["craft_wall_seconds"].get(method)
    row.append("-" if seconds is None else f"{seconds:.0f}")
    lines.append("| " + " | ".join(row) + " |")
  lines.append("")
  protected = ("" if results["poison_ratio"] == 1 else
               f" ({results['poison_ratio']:.0%} of them protected)")
  model = results["model"]
  victim = VICTIM_MODELS.get(model["name"], model["name"])
  widths = model["widths"] or "(published widths)"
  notes = [
      f"Clean test accuracy of victims ({victim} {widths}, also the "
      f"crafting surrogates', {results['epochs']} epochs, mean over "
      f"{results['seeds']} seed(s)) trained on {results['train_size']} "
      f"{results['dataset']} images{protected}; L-inf eps = rho_u = "
      f"{_common.epsilon_label(results['epsilon'])} for the noise methods.",
  ]
  if "adversarial" in defence_names:
    notes.append(
        f"Adversarial training: {results['adversarial_training']['steps']} "
        "PGD steps of rho_a / 5.")
  if results.get("rem") and "rem" in results["victim_accuracy"]:
    rem = results["rem"]
    notes.append(
        f"REM: {rem['rem_train_steps']} surrogate steps, "
        f"{rem['noise_steps']} noise steps, K = {rem['eot_draws']}, "
        f"{rem['attack_steps']} inner steps.")
  if "grayscale" in defence_names and results.get("channels") == 1:
    notes.append("Grayscale is a no-op on these 1-channel images.")
  lines.append(" ".join(notes))
  if results.get("victim_peak_accuracy"):
    lines += ["", "Peak test accuracy over the epochs (what early stopping "
              "on the test set keeps), mean +- std over seeds:", "",
              "| method | " + " | ".join(
                  _defence_label(d, results["rho_a"]) for d in defence_names)
              + " |", "|---" * (len(defence_names) + 1) + "|"]
    for method, cells in results["victim_peak_accuracy"].items():
      stds = results["victim_peak_accuracy_std"][method]
      lines.append("| " + " | ".join(
          [method] + [f"{cells[d]:.3f} +- {stds[d]:.3f}"
                      for d in defence_names]) + " |")
  return "\n".join(lines) + "\n"
