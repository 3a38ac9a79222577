"""The benchmark table: every protection method against every defence
(method x defence), as in Fu et al. 2022, Tables 1-2, APBench and the
image-shortcut-squeezing study.

    python -m experiments.table --out runs/table
    python -m experiments.table --out runs/rem-table \
        --methods clean,random,em-samplewise,rem,error-max \
        --defences standard,adversarial

For each method (``--methods``, from clean, random, em-samplewise,
em-classwise, pue-classwise, pue-samplewise, rem, error-max,
error-max-targeted, ops, ar, lsp) the training subset is protected with
`experiments.craft` at eps = ``--epsilon`` (the L-inf budget rho_u; REM's
rho_a defaults to eps / 2; AR and LSP take their L2 budgets, OPS changes one
pixel) -- or taken from ``--from METHOD=DIR``, the ``--out`` of an earlier
craft run -- and victims are trained with `experiments.evaluate` under each
defence (``--defences``, from none (alias standard), augmentation, cutout,
mixup, cutmix, grayscale, jpeg, adversarial: Madry adversarial training at
radius rho_a, ``--adv-steps`` steps of rho_a / 5). Each defence is applied
alone. ``--poison-ratio`` protects only a random fraction of the training
set. Writes ``results.json`` (victim accuracy per method and defence: the
mean over ``--seeds``, spread, per seed; the crafting wall times; every
setting), ``table.md`` and ``heatmap.png``.

Every cell lives in its own folder under ``--cells`` (default ``--out``:
``craft/METHOD``, ``victims/METHOD-DEFENCE``; victims of another
``--victim-model`` under ``victims-MODEL/``) and is skipped when rerun with
the same settings, also by another table over the same cells (so
``--cells`` of an earlier table and ``--victim-model small_cnn_flat`` test
its releases against another victim without crafting them again); an interrupted
REM or EM crafting run resumes from its last checkpoint. The defaults are
the published settings; on a 2-core CPU scale down with ``--train-size``,
``--widths``, ``--rem-train-steps``, ``--eot-draws``, ``--attack-steps``,
``--noise-steps``, ``--surrogate-draws``, ``--noise-draws`` and
``--epochs`` (all recorded in results.json).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib
import time
from typing import Any

import numpy as np

from experiments import common
from experiments import craft
from experiments import evaluate
from experiments import figures
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import defences as defences_lib
from jaxue import models
from jaxue import noise as noise_lib

DEFAULT_METHODS = ("clean", "random", "em-samplewise", "em-classwise", "rem",
                   "pue-classwise", "error-max", "ops", "ar", "lsp")
METHODS = ("clean",) + craft.METHODS
# "standard" is "none" under the name of Fu et al.'s tables.
DEFENCES = defences_lib.DEFENCES + ("adversarial", "standard")
DEFAULT_DEFENCES = ("none", "augmentation", "cutout", "mixup", "cutmix",
                    "jpeg", "adversarial")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.table", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--cells", type=pathlib.Path, default=None,
                 help="folder of the cached cells (craft/, victims/; "
                 "default --out): tables over the same cells share them")
  p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                 help=f"comma-separated, from {', '.join(METHODS)}")
  p.add_argument("--defences", default=",".join(DEFAULT_DEFENCES),
                 help=f"comma-separated, from {', '.join(DEFENCES)} "
                 f"(default {','.join(DEFAULT_DEFENCES)})")
  p.add_argument("--poison-ratio", type=common.parse_fraction, default=1.0,
                 help="fraction of the training set protected (default 1)")
  p.add_argument("--from", dest="sources", action="append", default=[],
                 metavar="METHOD=DIR",
                 help="use the released data of an earlier "
                 "experiments.craft --out DIR for METHOD (repeatable)")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--train-size", type=common.positive_int, default=None,
                 help="stratified training subset (default: whole set)")
  p.add_argument("--widths", type=common.widths_arg, default=None,
                 help="small CNN widths of surrogates and victims (default:"
                 " published 64,128,256; e.g. 16,32,64 on a CPU)")
  p.add_argument("--epsilon", type=common.parse_fraction, default=8 / 255,
                 help="noise budget rho_u of every method (default 8/255)")
  p.add_argument("--epochs", type=common.positive_int, default=8,
                 help="victim epochs (default 8)")
  p.add_argument("--victim-model", default="small_cnn", choices=models.MODELS,
                 help="victims' architecture, with --widths (default "
                 "small_cnn, that of the surrogates)")
  p.add_argument("--seeds", type=common.positive_int, default=2,
                 help="victims per cell (default 2)")
  p.add_argument("--adv-steps", type=common.nonnegative_int, default=10,
                 help="PGD steps of adversarial training (default 10, of "
                 "rho_a / 5)")
  p.add_argument("--max-rounds", type=common.positive_int, default=100,
                 help="EM rounds at most (default 100)")
  craft.add_rem_arguments(p)  # Also the adversarial victims' --rho-a.
  p.add_argument("--sigma", type=float, default=0.25,
                 help="PUE's sigma_train (default 0.25; 0.05 suits the "
                 "small CNN, see experiments.pue_certify)")
  p.add_argument("--surrogate-draws", type=common.positive_int, default=100,
                 help="PUE weight draws per level and surrogate step "
                 "(default 100)")
  p.add_argument("--noise-draws", type=common.positive_int, default=10,
                 help="PUE weight draws per level and noise step "
                 "(default 10)")
  p.add_argument("--clean-epochs", type=common.positive_int, default=10,
                 help="epochs of error-max's clean surrogate (default 10)")
  p.add_argument("--surrogate-augment", action=argparse.BooleanOptionalAction,
                 default=True,
                 help="train error-max's clean surrogate with the standard "
                 "augmentation (default: on; see experiments.craft)")
  p.add_argument("--error-max-steps", type=common.positive_int, default=20,
                 help="PGD steps of error-max noise (default 20, of "
                 "eps / 10)")
  p.add_argument("--ar-min-response", type=common.positive_float,
                 default=None,
                 help="AR process distinctness bound (default: the "
                 "published one for the class count; see experiments.craft)")
  p.add_argument("--seed", type=int, default=0)
  common.add_data_parallel_flag(p)
  args = p.parse_args(argv)
  args.method_list = _names(args.methods, METHODS, "method")
  args.defence_list = _names(args.defences, DEFENCES, "defence")
  if not 0 < args.poison_ratio <= 1:
    raise common.UsageError(
        f"--poison-ratio must be in (0, 1], got {args.poison_ratio}")
  noise_lib.check_epsilon(args.epsilon)
  args.rho_a = args.epsilon / 2 if args.rho_a is None else args.rho_a
  noise_lib.check_epsilon(args.rho_a, "rho_a")
  source_dirs(args)
  return args


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in allowed]
  if unknown or not names:
    raise common.UsageError(f"unknown {what}(s) {unknown}; choose from "
                            f"{', '.join(allowed)}")
  if len(set(names)) != len(names):
    raise common.UsageError(f"--{what}s lists a {what} twice: {text}")
  return names


def source_dirs(args: argparse.Namespace) -> dict[str, pathlib.Path]:
  """The ``--from METHOD=DIR`` folders by method."""
  folders = {}
  for source in args.sources:
    method, sep, folder = source.partition("=")
    if not sep or method not in args.method_list or method == "clean":
      raise common.UsageError(
          f"--from {source!r}: expected METHOD=DIR with METHOD one of the "
          "crafted --methods")
    folders[method] = pathlib.Path(folder)
  return folders


def _crafted_source(method: str, folder: pathlib.Path) -> dict[str, Any]:
  """The ``results.json`` of a ``--from METHOD=DIR`` folder, checked to hold
  METHOD's release (its own budget goes into the table's budget column)."""
  summary = folder / "results.json"
  if not summary.is_file() or not (folder / "released.npz").is_file():
    raise common.UsageError(
        f"--from {method}={folder}: no experiments.craft output there "
        "(results.json and released.npz)")
  info = json.loads(summary.read_text())
  if info.get("method") != method:
    raise common.UsageError(
        f"--from {method}={folder} holds a {info.get('method')!r} release, "
        f"not {method!r}")
  return info


def _common_flags(args: argparse.Namespace) -> list[str]:
  flags = ["--dataset", args.dataset, "--seed", str(args.seed)]
  if args.data_dir:
    flags += ["--data-dir", args.data_dir]
  if args.widths:
    flags += ["--widths", ",".join(map(str, args.widths))]
  return flags


def craft_argv(args: argparse.Namespace, method: str, out: pathlib.Path
               ) -> list[str]:
  """The `experiments.craft` command line of one method."""
  argv = ["--out", str(out), "--method", method,
          "--epsilon", repr(args.epsilon)] + _common_flags(args)
  if args.train_size:
    argv += ["--train-size", str(args.train_size)]
  if method.startswith(("em-", "pue-")):
    argv += ["--max-rounds", str(args.max_rounds)]
  if method.startswith("pue-"):
    argv += ["--sigma", repr(args.sigma), "--surrogate-draws",
             str(args.surrogate_draws), "--noise-draws",
             str(args.noise_draws)]
  elif method == "rem":
    for name in craft.REM_FLAGS:
      if getattr(args, name) is not None:
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
  elif method == "ar":
    # Always explicit, so a cell crafted under another default bound is
    # reported as other settings instead of being reused.
    bound = craft.ar_min_response(
        args, data_lib.get_info(args.dataset).num_classes)
    argv += ["--ar-min-response", repr(bound)]
  elif method.startswith("error-max"):
    argv += ["--clean-epochs", str(args.clean_epochs),
             "--pgd-steps", str(args.error_max_steps),
             "--surrogate-augment" if args.surrogate_augment
             else "--no-surrogate-augment"]
  return argv


def victim_argv(args: argparse.Namespace, defence: str,
                released: pathlib.Path | None, out: pathlib.Path
                ) -> list[str]:
  """The `experiments.evaluate` command line of one cell."""
  argv = ["--out", str(out), "--epochs", str(args.epochs), "--seeds",
          str(args.seeds)] + _common_flags(args)
  if released is None:
    argv += ["--clean"] + (["--train-size", str(args.train_size)]
                           if args.train_size else [])
  else:
    argv += ["--released", str(released)]
    if args.poison_ratio < 1:
      argv += ["--poison-ratio", repr(args.poison_ratio)]
  if args.victim_model != "small_cnn":
    argv += ["--model", args.victim_model]
  if defence == "adversarial":
    argv += ["--adversarial", "--adv-radius", repr(args.rho_a),
             "--adv-steps", str(args.adv_steps)]
  elif defence not in ("none", "standard"):
    argv += ["--defence", defence]
  return argv


def run_cached(script, argv: list[str], out: pathlib.Path) -> dict[str, Any]:
  """Runs ``script.main(argv)`` unless ``out`` holds a finished run of the
  same command line; returns its results.json."""
  marker = out / "cell.json"
  if marker.exists():
    saved = json.loads(marker.read_text())
    if saved["argv"] != argv:
      raise common.UsageError(
          f"{out} holds a run with other settings ({' '.join(saved['argv'])}"
          "); use another --out")
    return json.loads((out / "results.json").read_text())
  results = script.main(argv)
  checkpoint.write_json(marker, {"argv": argv})
  return results


def _defence_label(defence: str, rho_a: float) -> str:
  if defence == "adversarial":
    return f"adversarial (rho_a = {common.epsilon_label(rho_a)})"
  return defence


def _budget_label(crafted: dict[str, Any]) -> str:
  """A crafted dataset's budget: "Linf 16/255", "L2 1.0" or "L0 1 pixel"."""
  if crafted.get("pixels_changed"):
    return f"L0 {crafted['pixels_changed']} pixel"
  if crafted.get("l2_epsilon"):
    return f"L2 {crafted['l2_epsilon']:.3g}"
  if crafted.get("epsilon"):
    return f"Linf {common.epsilon_label(crafted['epsilon'])}"
  return "-"


def markdown(results: dict[str, Any]) -> str:
  """The method x defence table in markdown (mean +- std over seeds)."""
  defence_names = results["defences"]
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
  victim = {"small_cnn": "small CNN", "small_cnn_flat": "small CNN with a "
            "flattened head"}.get(results.get("victim_model", "small_cnn"),
                                  results.get("victim_model"))
  notes = [
      f"Clean test accuracy of victims ({victim} "
      f"{results['model']['widths']}, {results['epochs']} epochs, mean over "
      f"{results['seeds']} seeds) trained on {results['train_size']} "
      f"{results['dataset']} images{protected}; L-inf eps = rho_u = "
      f"{common.epsilon_label(results['epsilon'])} for the noise methods.",
  ]
  if "adversarial" in defence_names:
    notes.append(
        f"Adversarial training: {results['adversarial_training']['steps']} "
        "PGD steps of rho_a / 5.")
  if "rem" in results["victim_accuracy"]:
    rem = results["rem"]
    notes.append(
        f"REM: {rem['rem_train_steps']} surrogate steps, "
        f"{rem['noise_steps']} noise steps, K = {rem['eot_draws']}, "
        f"{rem['attack_steps']} inner steps.")
  if "grayscale" in defence_names and results.get("channels") == 1:
    notes.append("Grayscale is a no-op on these 1-channel images.")
  lines.append(" ".join(notes))
  return "\n".join(lines) + "\n"


@common.cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  # Cells run in this process: craft and evaluate inherit the mesh, and
  # their cached command lines do not change with it.
  with common.device_scope(args):
    return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
  args.out.mkdir(parents=True, exist_ok=True)
  cells = args.cells or args.out
  start = time.perf_counter()
  sources = source_dirs(args)
  accuracy, spread, per_seed, crafted, craft_seconds = {}, {}, {}, {}, {}
  train_size = channels = None
  victims_dir = ("victims" if args.victim_model == "small_cnn"
                 else f"victims-{args.victim_model}")
  for method in args.method_list:
    released = None
    if method in sources:
      released = sources[method]
      crafted[method] = _crafted_source(method, released)
    elif method != "clean":
      released = cells / "craft" / method
      print(f"== crafting {method}")
      crafted[method] = run_cached(craft, craft_argv(args, method, released),
                                   released)
    if method in crafted:
      info = crafted[method]
      train_size = train_size or info["train_size"]
      summary = info.get("craft") or {}
      craft_seconds[method] = summary.get("craft_seconds_total",
                                          info["wall_seconds"]["craft"])
    accuracy[method], spread[method], per_seed[method] = {}, {}, {}
    for defence in args.defence_list:
      # "standard" is "none": one cell under either name.
      cell = "none" if defence == "standard" else defence
      out = cells / victims_dir / f"{method}-{cell}"
      print(f"== victims: {method}, defence {defence}")
      victims = run_cached(evaluate,
                           victim_argv(args, defence, released, out),
                           out)
      accuracy[method][defence] = victims["victim_accuracy"]
      spread[method][defence] = victims["victim_accuracy_std"]
      per_seed[method][defence] = victims["victim_accuracy_per_seed"]
      train_size = train_size or victims["train_size"]
      channels = channels or victims.get("image_shape", [None])[-1]
  results = {
      "victim_accuracy": accuracy,
      "victim_accuracy_std": spread,
      "victim_accuracy_per_seed": per_seed,
      "craft_wall_seconds": craft_seconds,
      "budgets": {m: _budget_label(c) for m, c in crafted.items()},
      "craft": {m: {"wall_seconds": c["wall_seconds"], **(c.get("craft")
                                                          or {})}
                for m, c in crafted.items()},
      "defences": args.defence_list, "poison_ratio": args.poison_ratio,
      "cells": str(cells),
      "dataset": args.dataset, "train_size": train_size,
      "channels": channels,
      "epsilon": args.epsilon, "rho_a": args.rho_a,
      "epochs": args.epochs, "seeds": args.seeds,
      "model": {"name": "small_cnn",
                "widths": list(args.widths) if args.widths else [64, 128,
                                                                 256]},
      "victim_model": args.victim_model,
      "adversarial_training": {"radius": args.rho_a,
                               "steps": args.adv_steps,
                               "step_size": args.rho_a / 5},
      "rem": {name: getattr(args, name) for name in craft.REM_FLAGS},
      "pue": {"sigma": args.sigma, "surrogate_draws": args.surrogate_draws,
              "noise_draws": args.noise_draws},
      "error_max": {"clean_epochs": args.clean_epochs,
                    "pgd_steps": args.error_max_steps,
                    "surrogate_augment": args.surrogate_augment},
      "wall_seconds": {"total_this_invocation":
                       round(time.perf_counter() - start, 1)},
      **common.metadata(args),
  }
  checkpoint.write_json(args.out / "results.json", results)
  table = markdown(results)
  (args.out / "table.md").write_text(table)
  figures.heatmap(
      args.out / "heatmap.png",
      np.array([[accuracy[m][d] for d in args.defence_list]
                for m in args.method_list]),
      rows=args.method_list,
      columns=[_defence_label(d, args.rho_a) for d in args.defence_list],
      title=f"victim clean test accuracy ({args.dataset})")
  print(table)
  return results


if __name__ == "__main__":
  main()
