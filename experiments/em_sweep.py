"""The EM experiment: clean, random, class-/sample-wise EM and an eps sweep.

    python -m experiments.em_sweep --out runs/em

1. Main run on a stratified subset (10,000 images): victims trained on clean
   data, on random noise at 8/255 and on class-wise and sample-wise EM at
   8/255.
2. Sweep (5,000 images): class- and sample-wise EM at 8/255, 16/255, 32/255,
   reporting the smallest eps at which the victim falls to <= 0.30.

Each cell (crafting + its victims) is saved to ``--out/cells/`` when done, so
an interrupted run resumes where it stopped. Victim figures are the mean over
``--seeds`` victims (their spread is recorded too).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib
import time
import zlib

import jax
import numpy as np

from experiments import common
from experiments import figures
from jaxue import checkpoint
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import train


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.em_sweep", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--train-size", type=common.positive_int, default=10_000)
  p.add_argument("--sweep-size", type=common.positive_int, default=5_000)
  p.add_argument("--epsilons", default="8/255,16/255,32/255")
  p.add_argument("--widths", type=common.widths_arg, default=common.CPU_WIDTHS)
  p.add_argument("--epochs", type=common.positive_int, default=8)
  p.add_argument("--seeds", type=common.positive_int, default=2)
  p.add_argument("--max-rounds", type=common.positive_int, default=60)
  p.add_argument("--threshold", type=float, default=0.30)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  try:
    args.epsilon_values = [common.parse_fraction(e)
                           for e in args.epsilons.split(",")]
  except argparse.ArgumentTypeError as e:
    raise common.UsageError(f"--epsilons: {e}") from None
  for eps in args.epsilon_values:
    noise_lib.check_epsilon(eps)
  return args


def run_cell(args, name: str, method: str, epsilon: float | None,
             data: dict, model) -> dict:
  """Crafts (if needed) and trains the victims of one cell; cached."""
  path = args.out / "cells" / f"{name}.json"
  if path.exists():
    return json.loads(path.read_text())
  x_train, y_train = data["train"]
  key = jax.random.fold_in(jax.random.key(args.seed),
                           zlib.crc32(name.encode()))
  start = time.perf_counter()
  craft = {}
  if method == "clean":
    images = x_train
  elif method == "random":
    delta = noise_lib.random_noise(key, x_train.shape, epsilon=epsilon)
    images = noise_lib.release(x_train, y_train, delta, mode="samplewise")
  else:
    surrogate = train.create_train_state(
        jax.random.fold_in(key, 0), model, data["image_shape"],
        train.make_optimizer(0.1))
    result = noise_lib.error_minimizing_noise(
        jax.random.fold_in(key, 1), surrogate, x_train, y_train,
        num_classes=data["num_classes"], mode=method.removeprefix("em-"),
        epsilon=epsilon, max_rounds=args.max_rounds, progress=name)
    images = noise_lib.release(x_train, y_train, result.noise,
                               epsilon=epsilon,
                               mode=common.noise_mode(method))
    craft = {"rounds": len(result.history["accuracy"]),
             "converged": result.converged,
             "final_noisy_accuracy": result.history["accuracy"][-1]}
  craft_seconds = time.perf_counter() - start
  _, histories = train.train_victims(
      jax.random.fold_in(key, 2), model, images, y_train, seeds=args.seeds,
      test=data["test"], epochs=args.epochs, progress=f"{name} victim")
  curves = [h["test_accuracy"] for h in histories]
  finals = [curve[-1] for curve in curves]
  cell = {"name": name, "method": method, "epsilon": epsilon,
          "train_size": len(y_train), "accuracy": float(np.mean(finals)),
          "accuracy_per_seed": finals, "curves": curves, "craft": craft,
          "craft_seconds": round(craft_seconds, 1),
          "victim_seconds": round(time.perf_counter() - start
                                  - craft_seconds, 1)}
  checkpoint.write_json(path, cell)
  print(f"{name}: victim accuracy {cell['accuracy']:.3f} "
        f"(seeds {', '.join(f'{a:.3f}' for a in finals)}); crafting "
        f"{craft_seconds:.0f} s {craft}")
  return cell


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  main_data = common.load_data(args.dataset, args.data_dir, args.train_size,
                               args.seed)
  sweep_data = common.load_data(args.dataset, args.data_dir,
                                args.sweep_size, args.seed)
  model = models.make_model("small_cnn", num_classes=main_data["num_classes"],
                            widths=args.widths)
  label = common.epsilon_label
  eps8 = args.epsilon_values[0]
  cells = {}
  main_cells = [("clean", "clean", None), ("random", "random", eps8),
                ("em-classwise", "em-classwise", eps8),
                ("em-samplewise", "em-samplewise", eps8)]
  for method, kind, eps in main_cells:
    name = f"main-{method}" + (f"-{label(eps)}" if eps else "")
    cells[name.replace("/", "_")] = run_cell(
        args, name.replace("/", "_"), kind, eps, main_data, model)
  sweep_cells = [("clean", None)] + [
      (m, e) for m in ("em-classwise", "em-samplewise")
      for e in args.epsilon_values]
  for method, eps in sweep_cells:
    name = (f"sweep-{method}" + (f"-{label(eps)}" if eps else "")).replace(
        "/", "_")
    cells[name] = run_cell(args, name, method, eps, sweep_data, model)

  def main_acc(method, eps=None):
    name = f"main-{method}" + (f"-{label(eps)}" if eps else "")
    return cells[name.replace("/", "_")]["accuracy"]

  def sweep_cell(method, eps):
    return cells[f"sweep-{method}-{label(eps)}".replace("/", "_")]

  victim = {"clean": main_acc("clean"),
            "random": {label(eps8): main_acc("random", eps8)}}
  train_size = {"clean": args.train_size, "random": args.train_size}
  smallest = {}
  for method in ("em-classwise", "em-samplewise"):
    victim[method] = {label(eps8): main_acc(method, eps8)}
    train_size[method] = {label(eps8): args.train_size}
    for eps in args.epsilon_values[1:]:
      victim[method][label(eps)] = sweep_cell(method, eps)["accuracy"]
      train_size[method][label(eps)] = args.sweep_size
    below = [eps for eps in args.epsilon_values
             if sweep_cell(method, eps)["accuracy"] <= args.threshold]
    smallest[method] = label(min(below)) if below else None
  sweep = {"clean": cells["sweep-clean"]["accuracy"]}
  for method in ("em-classwise", "em-samplewise"):
    sweep[method] = {label(e): sweep_cell(method, e)["accuracy"]
                     for e in args.epsilon_values}
  figures.line_plot(
      args.out / "eps_sweep.png",
      {m: [(e * 255, sweep_cell(m, e)["accuracy"])
           for e in args.epsilon_values]
       for m in ("em-classwise", "em-samplewise")},
      xlabel="epsilon (x/255)", ylabel="victim clean test accuracy",
      title=f"{args.sweep_size} training images; clean "
      f"{sweep['clean']:.3f}")
  results = {
      "victim_accuracy": victim,
      "train_size": train_size,
      "sweep": {"train_size": args.sweep_size, "victim_accuracy": sweep},
      "smallest_epsilon_at_or_below": {"threshold": args.threshold,
                                       **smallest},
      "victim_accuracy_per_seed": {k: c["accuracy_per_seed"]
                                   for k, c in cells.items()},
      "craft": {k: c["craft"] for k, c in cells.items() if c["craft"]},
      "epochs": args.epochs, "seeds": args.seeds,
      "model": {"name": "small_cnn", "widths": list(args.widths)},
      "wall_seconds": {
          **{f"{k}_craft": c["craft_seconds"] for k, c in cells.items()
             if c["craft"]},
          **{f"{k}_victims": c["victim_seconds"] for k, c in cells.items()},
          "total_this_invocation": round(time.perf_counter() - start, 1)},
      **common.metadata(args),
  }
  checkpoint.write_json(args.out / "results.json", results)
  print(json.dumps(victim, indent=1))
  print(f"smallest eps with victim <= {args.threshold}: {smallest}")
  return results


if __name__ == "__main__":
  main()
