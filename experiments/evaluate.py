"""Train victims on a released dataset and measure their clean accuracy.

    python -m experiments.evaluate --released runs/em-sw --out runs/em-sw/eval
    python -m experiments.evaluate --clean --train-size 10000 --out runs/clean
    python -m experiments.evaluate --released runs/rem --adversarial \\
        --adv-radius 8/255 --out runs/rem/eval-adv

``--released`` takes a ``released.npz`` (or the ``--out`` folder of
`experiments.craft`); ``--clean`` trains on the clean training set instead.
With ``--adversarial`` the victim is trained by Madry PGD adversarial
training (radius ``--adv-radius``, ``--adv-steps`` steps of
``--adv-step-size``; the model in eval mode during the attack). The victim is
evaluated on the clean test set after every epoch. Writes
``results.json`` (final accuracy per seed, their mean, the curves),
``victim_curves.png`` and the first seed's checkpoint in ``victim/``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import pathlib

import jax
import numpy as np

from experiments import common
from experiments import figures
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import models
from jaxue import train


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.evaluate", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--released", type=pathlib.Path,
                      help="released.npz, or a folder holding one")
  source.add_argument("--clean", action="store_true",
                      help="train on the clean training set")
  p.add_argument("--dataset", default="fashion_mnist",
                 help="dataset of the clean test set (and of --clean)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--train-size", type=common.positive_int, default=None,
                 help="with --clean: stratified subset size")
  p.add_argument("--model", default="small_cnn", choices=models.MODELS)
  p.add_argument("--widths", type=common.widths_arg, default=None,
                 help="model widths (default: published; e.g. 16,32,64)")
  p.add_argument("--epochs", type=common.positive_int, default=8)
  p.add_argument("--batch-size", type=common.positive_int, default=128)
  p.add_argument("--learning-rate", type=float, default=0.1)
  p.add_argument("--augment", action="store_true",
                 help="random crop (+ flip for colour images) while "
                 "training")
  adv = p.add_argument_group("adversarial training (Madry et al. 2018)")
  adv.add_argument("--adversarial", action="store_true",
                   help="train the victim adversarially (PGD, L-inf)")
  adv.add_argument("--adv-radius", type=common.parse_fraction,
                   default=4 / 255, help="attack radius (default 4/255, "
                   "REM's rho_a)")
  adv.add_argument("--adv-steps", type=common.nonnegative_int, default=10,
                   help="PGD steps (default 10)")
  adv.add_argument("--adv-step-size", type=common.parse_fraction,
                   default=None, help="PGD step (default radius / 5)")
  p.add_argument("--seeds", type=common.positive_int, default=1)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.adversarial:
    adversarial_config(args)  # Bad --adv-* values fail before any work.
  return args


def adversarial_config(args: argparse.Namespace) -> train.AdversarialConfig:
  """The validated attack settings of ``--adv-*``."""
  return train.AdversarialConfig(args.adv_radius, args.adv_steps,
                                 args.adv_step_size).resolved()


def load_released(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads a released dataset written by `experiments.craft`."""
  if path.is_dir():
    path = path / "released.npz"
  if not path.exists():
    raise FileNotFoundError(
        f"no released dataset at {path}; create one with "
        "python -m experiments.craft --out DIR")
  with np.load(path) as f:
    if "images" not in f or "labels" not in f:
      raise ValueError(f"{path} has no 'images' and 'labels' arrays")
    images, labels = f["images"], f["labels"]
  data_lib.check_dataset(images, labels)
  return images, labels.astype(np.int32)


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  out = args.out
  out.mkdir(parents=True, exist_ok=True)
  timer = common.Timer()
  with timer("load"):
    ds = common.load_data(args.dataset, args.data_dir,
                          args.train_size if args.clean else None, args.seed)
    if args.clean:
      x_train, y_train = ds["train"]
    else:
      x_train, y_train = load_released(args.released)
  x_test, y_test = ds["test"]
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(
        f"released images are {x_train.shape[1:]} but {ds['name']} test "
        f"images are {x_test.shape[1:]}: pass the matching --dataset")
  data_lib.check_dataset(x_train, y_train, num_classes=ds["num_classes"])
  model_spec = {"name": args.model, "num_classes": ds["num_classes"],
                "widths": list(args.widths) if args.widths else None}
  model = models.make_model(**model_spec)
  augment = (data_lib.default_augmentation(x_train.shape[1:])
             if args.augment else None)
  adversarial = adversarial_config(args) if args.adversarial else None
  key = jax.random.key(args.seed)
  finals, curves = [], []
  with timer("train"):
    for s in range(args.seeds):
      state, history = train.train_victim(
          jax.random.fold_in(key, s), model, x_train, y_train,
          test=(x_test, y_test), epochs=args.epochs,
          batch_size=args.batch_size, learning_rate=args.learning_rate,
          augment=augment, adversarial=adversarial,
          progress=f"victim seed {s}")
      finals.append(history["test_accuracy"][-1])
      curves.append(history["test_accuracy"])
      print(f"seed {s}: clean test accuracy {finals[-1]:.4f}")
      if s == 0:
        checkpoint.save_model(out / "victim", state, model=model_spec,
                              input_shape=x_train.shape[1:],
                              extra={"training_data": str(args.released or
                                                          "clean")})
  figures.accuracy_curves(out / "victim_curves.png",
                          {"victim": curves})
  results = {
      "dataset": ds["name"],
      "training_data": "clean" if args.clean else str(args.released),
      "train_size": len(y_train), "test_size": len(y_test),
      "epochs": args.epochs, "augment": args.augment,
      "adversarial": adversarial._asdict() if adversarial else None,
      "victim_accuracy": float(np.mean(finals)),
      "victim_accuracy_std": float(np.std(finals)),
      "victim_accuracy_per_seed": finals,
      "victim_curves": curves,
      "wall_seconds": dict(timer.seconds),
      **common.metadata(args),
  }
  checkpoint.write_json(out / "results.json", results)
  print(f"victim accuracy {results['victim_accuracy']:.4f} over "
        f"{args.seeds} seed(s); wrote {out / 'results.json'}")
  return results


if __name__ == "__main__":
  main()
