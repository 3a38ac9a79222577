"""Error-max noise from clean surrogates trained with and without augmentation.

    python -m experiments.error_max_surrogates --out runs/errmax-surrogates \\
        --train-size 4000 --widths 16,32,64 --epsilon 16/255

Error-maximizing noise (PGD against a fully trained clean surrogate; Huang
et al., ICLR 2021, Sec. 4.1) depends on the one surrogate it attacks, so a
single crafting run says little. For each of ``--surrogates`` surrogate
initialisations, this trains the clean surrogate twice on the same subset
(with the dataset's standard augmentation, as `experiments.craft` does by
default and as the reference trains the model its error-max attacks, and
without), crafts untargeted sample-wise noise against each, and trains
``--seeds`` standard victims (no augmentation) on every release. The
clean victims use the same victim keys. Surrogate i of both kinds starts
from the same initialisation.

Each cell is saved to ``--out/cells/`` when done, so an interrupted run
resumes where it stopped; ``--out/results.json`` has every victim accuracy.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib
import time

import jax
import numpy as np

from experiments import common
from jaxue import checkpoint
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import train


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.error_max_surrogates", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--train-size", type=common.positive_int, default=4000)
  p.add_argument("--widths", type=common.widths_arg, default=common.CPU_WIDTHS)
  p.add_argument("--epsilon", type=common.parse_fraction, default=16 / 255)
  p.add_argument("--clean-epochs", type=common.positive_int, default=10,
                 help="epochs of each clean surrogate (default 10)")
  p.add_argument("--pgd-steps", type=common.positive_int, default=20)
  p.add_argument("--epochs", type=common.positive_int, default=8,
                 help="victim epochs (default 8)")
  p.add_argument("--surrogates", type=common.positive_int, default=3)
  p.add_argument("--seeds", type=common.positive_int, default=3,
                 help="victims per release (default 3)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  noise_lib.check_epsilon(args.epsilon)
  return args


def run_cell(args, name: str, surrogate: int | None, augment: bool,
             data: dict, model) -> dict:
  """One surrogate's noise and its victims (or the clean victims); cached."""
  path = args.out / "cells" / f"{name}.json"
  if path.exists():
    return json.loads(path.read_text())
  key = jax.random.key(args.seed)
  x_train, y_train = data["train"]
  start = time.perf_counter()
  cell = {"name": name}
  images = x_train
  if surrogate is not None:
    crafted = noise_lib.error_max_from_clean(
        jax.random.fold_in(key, 1000 + surrogate), model, x_train, y_train,
        test=data["test"], num_classes=data["num_classes"],
        epsilon=args.epsilon, clean_epochs=args.clean_epochs,
        surrogate_augment=augment, steps=args.pgd_steps,
        progress=f"{name} surrogate")
    images = noise_lib.release(x_train, y_train, crafted.noise,
                               epsilon=args.epsilon, mode="samplewise")
    cell.update(surrogate=surrogate, surrogate_augment=augment,
                surrogate_test_accuracy=crafted.info[
                    "surrogate_test_accuracy"],
                craft_seconds=round(time.perf_counter() - start, 1))
  _, histories = train.train_victims(
      key, model, images, y_train, seeds=args.seeds, test=data["test"],
      epochs=args.epochs, progress=f"{name} victim")
  finals = [h["test_accuracy"][-1] for h in histories]
  cell.update(victim_accuracy=float(np.mean(finals)),
              victim_accuracy_per_seed=finals)
  checkpoint.write_json(path, cell)
  print(f"{name}: victim accuracy {cell['victim_accuracy']:.3f} (seeds "
        f"{', '.join(f'{a:.3f}' for a in finals)})")
  return cell


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  data = common.load_data(args.dataset, args.data_dir, args.train_size,
                          args.seed)
  model = models.make_model("small_cnn", num_classes=data["num_classes"],
                            widths=args.widths)
  clean = run_cell(args, "clean", None, False, data, model)
  kinds = {"augmented": True, "unaugmented": False}
  cells = {kind: [run_cell(args, f"{kind}-{i}", i, augment, data, model)
                  for i in range(args.surrogates)]
           for kind, augment in kinds.items()}
  summary = {}
  for kind, runs in cells.items():
    means = [c["victim_accuracy"] for c in runs]
    summary[kind] = {
        "victim_accuracy": float(np.mean(means)),
        "below_clean": clean["victim_accuracy"] - float(np.mean(means)),
        "per_surrogate": means,
        "min_below_clean": clean["victim_accuracy"] - max(means)}
  results = {
      "clean_victim_accuracy": clean["victim_accuracy"],
      "clean_victim_accuracy_per_seed": clean["victim_accuracy_per_seed"],
      "summary": summary, "cells": cells,
      "dataset": data["name"], "train_size": len(data["train"][1]),
      "epsilon": args.epsilon,
      "model": {"name": "small_cnn", "widths": list(args.widths)},
      "wall_seconds": {"total_this_invocation":
                       round(time.perf_counter() - start, 1)},
      **common.metadata(args),
  }
  checkpoint.write_json(args.out / "results.json", results)
  common.print_table(
      [(kind, f"{s['victim_accuracy']:.3f}", f"{s['below_clean']:.3f}",
        " ".join(f"{a:.3f}" for a in s["per_surrogate"]))
       for kind, s in summary.items()],
      ("surrogate", "victim accuracy", "below clean", "per surrogate"))
  print(f"clean victims {clean['victim_accuracy']:.3f}; wrote "
        f"{args.out / 'results.json'}")
  return results


if __name__ == "__main__":
  main()
