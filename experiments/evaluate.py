"""Train victims on a released dataset and measure their clean accuracy.

    python -m experiments.evaluate --released runs/em-sw --out runs/em-sw/eval
    python -m experiments.evaluate --clean --train-size 10000 --out runs/clean
    python -m experiments.evaluate --released runs/rem --adversarial \\
        --adv-radius 8/255 --out runs/rem/eval-adv

``--released`` takes a ``released.npz`` (or the ``--out`` folder of
`experiments.craft`); ``--clean`` trains on the clean training set instead.
With ``--adversarial`` the victim is trained by Madry PGD adversarial
training (radius ``--adv-radius``, ``--adv-steps`` steps of
``--adv-step-size``; the model in eval mode during the attack).
``--defence`` applies one of the training-time defences of
`jaxue.defences` (cutout, mixup, cutmix, grayscale, JPEG re-encoding of the
released data); ``--poison-ratio r`` keeps only a random fraction r of the
released images protected and swaps the rest back to their clean originals
(partial protection). The victim is
evaluated on the clean test set after every epoch. Writes
``results.json`` (final accuracy per seed, their mean, the curves),
``victim_curves.png`` and the first seed's checkpoint in ``victim/``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import pathlib
from typing import NamedTuple
import zipfile

import jax
import numpy as np

from experiments import common
from experiments import figures
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import defences
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import train


class _Compose(NamedTuple):
  """Two augmentations in a row (hashable: a static jit argument)."""

  first: Callable
  second: Callable

  def __call__(self, key, images):
    first_key, second_key = jax.random.split(key)
    return self.second(second_key, self.first(first_key, images))


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
  p.add_argument("--learning-rate", type=common.positive_float,
                 default=0.1)
  p.add_argument("--augment", action="store_true",
                 help="random crop (+ flip for colour images) while "
                 "training")
  p.add_argument("--defence", default="none", choices=defences.DEFENCES,
                 help="training-time defence (default none; "
                 "'augmentation' is --augment)")
  p.add_argument("--cutout-size", type=common.positive_int, default=None,
                 help="cutout square side (default half the image side)")
  p.add_argument("--mix-alpha", type=float, default=1.0,
                 help="Beta parameter of mixup / cutmix (default 1.0)")
  p.add_argument("--jpeg-quality", type=common.positive_int, default=10,
                 help="JPEG quality of --defence jpeg (default 10)")
  p.add_argument("--poison-ratio", type=common.parse_fraction, default=1.0,
                 help="with --released: fraction of the images that stay "
                 "protected, the rest revert to clean (default 1)")
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
  common.add_data_parallel_flag(p)
  args = p.parse_args(argv)
  if args.adversarial:
    adversarial_config(args)  # Bad --adv-* values fail before any work.
    if args.defence in ("mixup", "cutmix"):
      raise common.UsageError(
          f"--adversarial does not combine with --defence {args.defence}")
  if not 0 <= args.poison_ratio <= 1:
    raise common.UsageError(
        f"--poison-ratio must be in [0, 1], got {args.poison_ratio}")
  if args.poison_ratio < 1 and args.clean:
    raise common.UsageError("--poison-ratio needs --released data")
  if not args.mix_alpha > 0:
    raise common.UsageError(f"--mix-alpha must be > 0, got {args.mix_alpha}")
  if args.jpeg_quality > 95:
    raise common.UsageError(
        f"--jpeg-quality must be in [1, 95], got {args.jpeg_quality}")
  return args


def adversarial_config(args: argparse.Namespace) -> train.AdversarialConfig:
  """The validated attack settings of ``--adv-*``."""
  return train.AdversarialConfig(args.adv_radius, args.adv_steps,
                                 args.adv_step_size).resolved()


def released_file(path: pathlib.Path) -> pathlib.Path:
  """``path`` itself, or the ``released.npz`` in the folder ``path``."""
  if path.is_dir():
    path = path / "released.npz"
  if not path.exists():
    raise FileNotFoundError(
        f"no released dataset at {path}; create one with "
        "python -m experiments.craft --out DIR")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a .npz archive (a released dataset "
                     "from experiments.craft)")
  return path


def load_released(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads a released dataset written by `experiments.craft`."""
  path = released_file(path)
  with np.load(path) as f:
    if "images" not in f or "labels" not in f:
      raise ValueError(f"{path} has no 'images' and 'labels' arrays")
    images, labels = f["images"], f["labels"]
  data_lib.check_dataset(images, labels)
  if not len(labels):
    raise ValueError(f"{path} holds no images")
  return images, labels.astype(np.int32)


def train_indices(path: pathlib.Path, dataset: str,
                  clean_train: tuple[np.ndarray, np.ndarray],
                  labels: np.ndarray) -> np.ndarray:
  """The positions in the clean training set of a release's images (the
  ``train_indices`` that `experiments.craft` stores), checked by label.

  ``clean_train`` is the whole clean training set of ``dataset``."""
  path = released_file(path)
  with np.load(path) as f:
    if "train_indices" not in f:
      raise ValueError(
          f"{path} has no 'train_indices' (the positions of its images in "
          "the clean training set, which experiments.craft stores); "
          "--poison-ratio and experiments.noise_features need them")
    indices = f["train_indices"]
  if not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"{path}: train_indices must be integers, got "
                     f"{indices.dtype}")
  if indices.ndim != 1 or indices.min(initial=0) < 0:
    raise ValueError(f"{path}: train_indices must be a 1-D array of "
                     "positions >= 0 in the clean training set")
  x_train, y_train = clean_train
  if len(indices) != len(labels) or indices.max(initial=0) >= len(y_train):
    raise ValueError(f"{path}: its train_indices do not fit the {dataset} "
                     "training set; pass the matching --dataset")
  if not np.array_equal(y_train[indices], labels):
    raise ValueError(f"{path}: its labels do not match the {dataset} "
                     "training images at its train_indices")
  return indices


def clean_originals(path: pathlib.Path, dataset: str,
                    clean_train: tuple[np.ndarray, np.ndarray],
                    labels: np.ndarray) -> np.ndarray:
  """The clean training images a release was made from (`train_indices`)."""
  return clean_train[0][train_indices(path, dataset, clean_train, labels)]


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
  protected = None
  if args.poison_ratio < 1:
    clean = clean_originals(args.released, args.dataset, ds["train"],
                            y_train)  # ds["train"]: the whole clean set.
    x_train, mask = noise_lib.protect_fraction(
        jax.random.fold_in(jax.random.key(args.seed), 7), clean, x_train,
        args.poison_ratio)
    protected = int(mask.sum())
    print(f"partial protection: {protected} of {len(mask)} images stay "
          "protected")
  x_test, y_test = ds["test"]
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(
        f"released images are {x_train.shape[1:]} but {ds['name']} test "
        f"images are {x_test.shape[1:]}: pass the matching --dataset")
  data_lib.check_dataset(x_train, y_train, num_classes=ds["num_classes"])
  model_spec = {"name": args.model, "num_classes": ds["num_classes"],
                "widths": list(args.widths) if args.widths else None}
  model = models.make_model(**model_spec)
  defence = defences.make_defence(
      args.defence, x_train.shape[1:], ds["num_classes"],
      cutout_size=args.cutout_size, mix_alpha=args.mix_alpha,
      jpeg_quality=args.jpeg_quality)
  if defence.preprocess is not None:
    with timer("defence"):
      x_train = defence.preprocess(x_train)
  if args.defence == "grayscale" and x_train.shape[-1] == 1:
    print("note: grayscale is a no-op on 1-channel images")
  augment = defence.augment
  if args.augment:
    standard = data_lib.default_augmentation(x_train.shape[1:])
    augment = standard if augment is None else _Compose(standard, augment)
  adversarial = adversarial_config(args) if args.adversarial else None
  key = jax.random.key(args.seed)
  finals, curves = [], []
  with timer("train"), common.device_scope(args):
    for s in range(args.seeds):
      state, history = train.train_victim(
          jax.random.fold_in(key, s), model, x_train, y_train,
          test=(x_test, y_test), epochs=args.epochs,
          batch_size=args.batch_size, learning_rate=args.learning_rate,
          augment=augment, mix=defence.mix, adversarial=adversarial,
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
      "image_shape": list(x_train.shape[1:]),
      "model": model_spec,
      "epochs": args.epochs, "augment": args.augment,
      "defence": args.defence, "poison_ratio": args.poison_ratio,
      "protected_images": protected,
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
