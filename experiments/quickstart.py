"""The quickstart: craft, release, train victims, write a report.

    python -m experiments.quickstart --out runs/quick

On Fashion-MNIST (the Debian package's files) it crafts class-wise
error-minimizing noise with a small CNN surrogate, releases the protected
uint8 dataset, trains fresh victims on clean, random-noise and protected
data, and writes ``results.json``, ``report.md`` and figures to ``--out``.
Default sizes finish in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import jax
import numpy as np

from experiments import common
from experiments import figures
from jaxue import checkpoint
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import train

METHODS = ("em-classwise", "em-samplewise")
FASHION_MNIST_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.quickstart", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(
      "runs/quick"), help="output directory (default runs/quick)")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None,
                 help="directory with the raw files (default: standard "
                 "locations, then TFDS)")
  p.add_argument("--method", default="em-classwise", choices=METHODS)
  p.add_argument("--epsilon", type=common.parse_fraction, default=32 / 255,
                 help="L-inf budget in [0, 1] units, e.g. 32/255 (default; "
                 "8/255 is weak on 28x28 grayscale data)")
  p.add_argument("--train-size", type=common.positive_int, default=10_000,
                 help="stratified training subset (default 10000)")
  p.add_argument("--test-size", type=common.positive_int, default=None,
                 help="use only the first N test images (default: all)")
  p.add_argument("--epochs", type=common.positive_int, default=8,
                 help="victim epochs (default 8)")
  p.add_argument("--seeds", type=common.positive_int, default=1,
                 help="victims per dataset; accuracies are averaged")
  p.add_argument("--widths", type=common.widths_arg, default=common.CPU_WIDTHS,
                 help="small-CNN widths (default 16,32,64: CPU-sized; the "
                 "published model is 64,128,256)")
  p.add_argument("--max-rounds", type=common.positive_int, default=60,
                 help="cap on EM rounds (default 60)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  noise_lib.check_epsilon(args.epsilon)
  return args


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  out = args.out
  out.mkdir(parents=True, exist_ok=True)
  timer = common.Timer()
  key = jax.random.key(args.seed)
  craft_key, random_key, victim_key = jax.random.split(key, 3)
  eps_label = common.epsilon_label(args.epsilon)

  with timer("load"):
    ds = common.load_data(args.dataset, args.data_dir, args.train_size,
                          args.seed)
  x_train, y_train = ds["train"]
  x_test, y_test = ds["test"]
  if args.test_size is not None:
    x_test, y_test = x_test[: args.test_size], y_test[: args.test_size]
  num_classes, shape = ds["num_classes"], ds["image_shape"]
  print(f"{ds['name']}: {len(y_train)} training images (stratified subset), "
        f"{len(y_test)} test images; {args.method} at eps = {eps_label}; "
        f"backend {jax.default_backend()}")

  model_spec = {"name": "small_cnn", "num_classes": num_classes,
                "widths": list(args.widths)}
  model = models.make_model(**model_spec)

  # Data owner: craft the noise with a surrogate, then release uint8 data.
  mode = args.method.removeprefix("em-")
  with timer("craft"):
    surrogate = train.create_train_state(
        jax.random.fold_in(craft_key, 0), model, shape,
        train.make_optimizer(0.1))
    crafted = noise_lib.error_minimizing_noise(
        jax.random.fold_in(craft_key, 1), surrogate, x_train, y_train,
        num_classes=num_classes, mode=mode, epsilon=args.epsilon,
        max_rounds=args.max_rounds, progress=f"craft {args.method}")
  rounds = len(crafted.history["accuracy"])
  print(f"crafted {args.method}: {rounds} rounds, surrogate accuracy on "
        f"noisy data {crafted.history['accuracy'][-1]:.3f} "
        f"({'converged' if crafted.converged else 'NOT converged'}), "
        f"{timer.seconds['craft']:.0f} s")
  random_delta = noise_lib.random_noise(random_key, x_train.shape,
                                        epsilon=args.epsilon)
  released = {
      "clean": x_train,
      "random": noise_lib.release(x_train, y_train, random_delta),
      args.method: noise_lib.release(x_train, y_train, crafted.noise,
                                     epsilon=args.epsilon),
  }
  checkpoint.save_npz(out / "noise.npz", noise=crafted.noise,
                      train_indices=ds["indices"], labels=y_train)
  checkpoint.save_npz(out / "released.npz", images=released[args.method],
                      labels=y_train)
  checkpoint.save_model(out / "surrogate", crafted.surrogate,
                        model=model_spec, input_shape=shape,
                        extra={"method": args.method,
                               "epsilon": args.epsilon,
                               "dataset": ds["name"]})

  # Adversary: train fresh victims on each released dataset.
  accuracy, spread, curves = {}, {}, {}
  for i, (name, images) in enumerate(released.items()):
    runs = []
    with timer(f"victim_{name}"):
      for s in range(args.seeds):
        _, history = train.train_victim(
            jax.random.fold_in(jax.random.fold_in(victim_key, i), s), model,
            images, y_train, test=(x_test, y_test), epochs=args.epochs,
            progress=f"victim {name} seed {s}")
        runs.append(history["test_accuracy"])
    finals = [run[-1] for run in runs]
    accuracy[name] = float(np.mean(finals))
    spread[name] = finals
    curves[name] = runs
    print(f"victim on {name}: clean test accuracy {accuracy[name]:.3f}"
          + (f" (seeds: {', '.join(f'{a:.3f}' for a in finals)})"
             if args.seeds > 1 else ""))

  with timer("figures"):
    # One example per class.
    show = np.array([np.flatnonzero(y_train == c)[0]
                     for c in np.unique(y_train)])[:10]
    figures.image_grid(
        out / "samples.png", x_train[show],
        {k: v[show] for k, v in released.items() if k != "clean"},
        y_train[show],
        class_names=FASHION_MNIST_CLASSES
        if ds["name"] == "fashion_mnist" else None)
    figures.accuracy_curves(out / "victim_curves.png", curves,
                            title=f"{ds['name']}, eps = {eps_label}, "
                            f"{len(y_train)} training images")

  drop = accuracy["clean"] - accuracy[args.method]
  rows = [(name, f"{acc:.3f}", f"{acc - accuracy['clean']:+.3f}")
          for name, acc in accuracy.items()]
  print()
  table = common.print_table(rows, ("training data", "victim accuracy",
                                    "vs clean"))
  results = {
      "dataset": ds["name"],
      "train_size": len(y_train),
      "test_size": len(y_test),
      "epochs": args.epochs,
      "epsilon": args.epsilon,
      "epsilon_label": eps_label,
      "method": args.method,
      "model": model_spec,
      "seeds": args.seeds,
      "victim_accuracy": accuracy,
      "victim_accuracy_per_seed": spread,
      "victim_curves": curves,
      "accuracy_drop": drop,
      "craft": {"rounds": rounds, "converged": crafted.converged,
                "noisy_accuracy": crafted.history["accuracy"]},
      "wall_seconds": dict(timer.seconds,
                           total=round(sum(timer.seconds.values()), 2)),
      **common.metadata(args),
  }
  checkpoint.write_json(out / "results.json", results)
  (out / "report.md").write_text(
      f"# jaxue quickstart\n\n{ds['name']}, {len(y_train)} training images, "
      f"{args.method} at eps = {eps_label}, small CNN "
      f"{tuple(args.widths)}, {args.epochs}-epoch victims, "
      f"{args.seeds} seed(s).\n\n```\n{table}\n```\n\n"
      f"Wall time: {results['wall_seconds']['total']:.0f} s. "
      "Figures: samples.png, victim_curves.png.\n")
  print(f"\nprotection lowers victim accuracy by {drop:.3f}; wrote "
        f"{out / 'results.json'}, report.md, samples.png, victim_curves.png "
        f"({results['wall_seconds']['total']:.0f} s)")
  return results


if __name__ == "__main__":
  main()
