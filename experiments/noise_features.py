"""Is a release's noise a shortcut or a push towards the classes' features?

    python -m experiments.noise_features --out runs/noise-features \\
        --released em=runs/table-cpu/craft/em-samplewise \\
        --released rem=runs/table-cpu/craft/rem

For each ``--released NAME=DIR`` (a folder or ``released.npz`` written by
`experiments.craft`, which stores the clean images' ``train_indices``) this
measures the noise the victim actually sees (released minus clean, after
clipping and rounding) with `jaxue.diagnostics`:

* its mean cosine with the image's class direction (class mean minus overall
  mean of the clean training set);
* the accuracy of a nearest-class-mean rule on the noise alone (fitted on
  the first half of each class's images, scored on the rest);
* the cross-entropy and accuracy, on the clean and on the released images,
  of a *reference* model trained on the clean training images that are in
  none of the releases (so it saw neither the noise nor these images;
  ``--reference-model DIR`` uses a given checkpoint instead).

Shortcut noise (EM) leaves the reference model's loss where it was,
error-maximizing noise raises it, and noise carrying real class features
lowers it. Writes ``--out/results.json`` and keeps the trained reference
model in ``--out/reference/``, reused by a rerun with the same settings.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import hashlib
import json
import pathlib
import time

import jax
import numpy as np

from experiments import common
from experiments import evaluate
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import diagnostics
from jaxue import models
from jaxue import train

# Fewer clean images than this outside the releases cannot train a
# meaningful reference model.
_MIN_REFERENCE_IMAGES = 1000


def _named_release(text: str) -> tuple[str, pathlib.Path]:
  name, sep, path = text.partition("=")
  if not sep or not name or not path:
    raise argparse.ArgumentTypeError(
        f"expected NAME=DIR (e.g. rem=runs/table-cpu/craft/rem), got {text!r}")
  return name, pathlib.Path(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.noise_features", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--released", type=_named_release, action="append",
                 required=True, metavar="NAME=DIR",
                 help="a release to measure (repeat the flag)")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--reference-model", type=pathlib.Path, default=None,
                 help="checkpoint of the reference model (default: train "
                      "one on the clean images outside the releases)")
  p.add_argument("--widths", type=common.widths_arg, default=common.CPU_WIDTHS,
                 help="reference model widths (default 16,32,64)")
  p.add_argument("--epochs", type=common.positive_int, default=8,
                 help="reference model epochs (default 8)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  names = [name for name, _ in args.released]
  if len(set(names)) != len(names):
    raise common.UsageError(f"release names must be unique, got {names}")
  return args


def _craft_summary(path: pathlib.Path) -> dict:
  """Method and budget from the release's results.json, when there is one."""
  folder = path if path.is_dir() else path.parent
  results = folder / "results.json"
  if not results.exists():
    return {}
  saved = json.loads(results.read_text())
  return {k: saved[k] for k in ("method", "epsilon", "l2_epsilon", "rho_a")
          if k in saved}


def reference_model(args: argparse.Namespace, clean_train, test, excluded,
                    num_classes: int):
  """The reference model: given, cached in ``--out/reference``, or trained
  on the clean training images outside ``excluded``."""
  if args.reference_model is not None:
    model, variables, description = checkpoint.load_model(
        args.reference_model)
    return model, variables, {"checkpoint": str(args.reference_model),
                              **description.get("extra", {})}
  x_train, y_train = clean_train
  keep = np.setdiff1d(np.arange(len(y_train)), excluded)
  settings = {"widths": list(args.widths), "epochs": args.epochs,
              "seed": args.seed, "dataset": args.dataset,
              "train_images": int(len(keep)),
              "excluded_sha1": hashlib.sha1(
                  np.sort(excluded).astype(np.int64).tobytes()).hexdigest()}
  path = args.out / "reference"
  if (path / "model.json").exists():
    model, variables, description = checkpoint.load_model(path)
    saved = description.get("extra", {})
    if {k: saved.get(k) for k in settings} != settings:
      raise common.UsageError(
          f"{path} holds a reference model trained with other settings "
          f"({saved}); use another --out or remove it")
    return model, variables, {**saved, "reused": True}
  if len(keep) < _MIN_REFERENCE_IMAGES or np.any(
      np.bincount(y_train[keep], minlength=num_classes) == 0):
    raise common.UsageError(
        f"only {len(keep)} clean training images lie outside the releases; "
        "the reference model needs other images: pass --reference-model")
  spec = {"name": "small_cnn", "num_classes": num_classes,
          "widths": list(args.widths)}
  model = models.make_model(**spec)
  start = time.perf_counter()
  state, history = train.train_victim(
      jax.random.key(args.seed), model, x_train[keep], y_train[keep],
      test=test, epochs=args.epochs, progress="reference model")
  settings.update(test_accuracy=history["test_accuracy"][-1],
                  train_seconds=round(time.perf_counter() - start, 1))
  checkpoint.save_model(path, state, model=spec,
                        input_shape=x_train.shape[1:], extra=settings)
  return model, state.variables, {**settings, "reused": False}


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  info = data_lib.get_info(args.dataset)
  clean_train = data_lib.load(args.dataset, "train", args.data_dir)
  test = data_lib.load(args.dataset, "test", args.data_dir)
  releases, excluded = {}, []
  for name, path in args.released:
    released, labels = evaluate.load_released(path)
    indices = evaluate.train_indices(path, args.dataset, clean_train, labels)
    releases[name] = (path, released, labels, clean_train[0][indices])
    excluded.append(indices)
  excluded = np.unique(np.concatenate(excluded))
  model, variables, reference = reference_model(
      args, clean_train, test, excluded, info.num_classes)
  directions = diagnostics.class_directions(*clean_train,
                                            num_classes=info.num_classes)

  measured = {}
  for name, (path, released, labels, clean) in releases.items():
    noise = diagnostics.effective_noise(clean, released)
    flat = noise.reshape(len(labels), -1)
    measured[name] = {
        "released": str(path), **_craft_summary(path),
        "images": int(len(labels)),
        "noise_l2_mean": float(np.linalg.norm(flat, axis=1).mean()),
        "noise_linf_max": float(np.abs(flat).max()),
        "class_direction_cosine": float(np.mean(
            diagnostics.class_direction_cosine(noise, labels, directions))),
        "noise_nearest_class_mean_accuracy":
            diagnostics.nearest_class_mean_accuracy(
                noise, labels, num_classes=info.num_classes),
        "reference_model": diagnostics.transfer(
            model.apply, variables, clean, released, labels),
    }
  results = {
      "releases": measured,
      "reference_model": {"name": model.name, **reference},
      "dataset": info.name,
      "wall_seconds": round(time.perf_counter() - start, 1),
      **common.metadata(args),
  }
  checkpoint.write_json(args.out / "results.json", results)
  common.print_table(
      [(name, f"{m['class_direction_cosine']:+.3f}",
        f"{m['noise_nearest_class_mean_accuracy']:.3f}",
        f"{m['reference_model']['loss_clean']:.3f} -> "
        f"{m['reference_model']['loss_released']:.3f}",
        f"{m['reference_model']['accuracy_clean']:.3f} -> "
        f"{m['reference_model']['accuracy_released']:.3f}")
       for name, m in measured.items()],
      ("release", "cos(noise, class direction)", "noise-only accuracy",
       "reference loss clean -> released", "reference accuracy"))
  print(f"wrote {args.out / 'results.json'}")
  return results


if __name__ == "__main__":
  main()
