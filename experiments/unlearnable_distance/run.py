"""The Unlearnable Distance of jaxue's releases (Ye, Su & Qian, 2025).

    python experiments/unlearnable_distance/run.py --out runs/unlearnable_distance

Crafts each release with `jaxue craft` (a 2,000-image Fashion-MNIST subset,
16/255 for the L-inf methods), trains a fresh small CNN on it with SAL
measured after every epoch (`jaxue.unlearnable_distance.sal_during_training`)
for two seeds, once with the paper's units (the 4 weight tensors) and once
with output channels as units (ours; the first 4 channels of each tensor),
and computes UD against the clean model of the same seed. Writes
``--out/ud.json`` (every run's SAL matrices, accuracies and the UD table)
and ``--out/ud.png``; finished runs are kept in ``--out/sal/`` and skipped
when rerun.
"""

import argparse
import pathlib
import resource
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxue import data, models, runs  # noqa: E402
from jaxue import unlearnable_distance as ud  # noqa: E402
from jaxue.pipelines import craft  # noqa: E402

CONFIG = {
    "full": {"methods": ["clean", "em-classwise", "em-samplewise", "random",
                         "ops", "lsp"], "train_size": 2000,
             "test_size": 2000, "epsilon": 16 / 255,
             "craft_widths": [16, 32, 64],
             "widths": [8, 16, 32], "epochs": 10, "batch_size": 128,
             "sal_size": 512, "sal_steps": 5, "channels": [0, 1, 2, 3],
             "seeds": 2, "max_rounds": 40},
    "smoke": {"methods": ["clean", "random"], "train_size": 256,
              "test_size": 200, "craft_widths": [4, 8, 8],
              "widths": [4, 8, 8], "epochs": 2, "sal_size": 128,
              "sal_steps": 1, "channels": [0], "seeds": 1},
}


def release(method, cfg, out, quiet):
  """The release's (images, labels) and the clean test set."""
  path = out / "craft" / ("random" if method == "clean" else method)
  kwargs = {"epsilon": cfg["epsilon"]} if method not in ("ops", "lsp") else {}
  if method.startswith("em"):
    kwargs["max_rounds"] = cfg["max_rounds"]
  craft.run(craft.Config(
      method="random" if method == "clean" else method,
      train_size=cfg["train_size"], test_size=cfg["test_size"],
      widths=tuple(cfg["craft_widths"]), quiet=quiet, **kwargs), path)
  arrays, _ = runs.load_arrays(path / "release.npz")
  images = arrays["images"]
  if method == "clean":  # The same subset, unprotected.
    images = data.load("fashion_mnist", "train")[0][arrays["train_indices"]]
  return images, arrays["labels"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  test = tuple(a[:cfg["test_size"]] for a in data.load("fashion_mnist",
                                                        "test"))
  model = models.make_model("small_cnn", widths=tuple(cfg["widths"]))
  augment = data.default_augmentation("fashion_mnist")
  start = time.time()
  records = {}
  for method in cfg["methods"]:
    images, labels = release(method, cfg, args.out, args.quiet)
    for seed in range(cfg["seeds"]):
      for units in ("layer", "channel"):
        path = args.out / "sal" / f"{method}-seed{seed}-{units}.json"
        if not path.exists():
          # Same key for both unit kinds: the same training trajectory.
          _, history = ud.sal_during_training(
              jax.random.key(seed), model, images, labels,
              epochs=cfg["epochs"], batch_size=cfg["batch_size"],
              sal_data=(images[:cfg["sal_size"]], labels[:cfg["sal_size"]]),
              test=test, units=units, steps=cfg["sal_steps"],
              channels=cfg["channels"] if units == "channel" else None,
              augment=augment, progress=not args.quiet and
              f"{method} s{seed} {units}")
          runs.write_json(path, history)
        records[(method, seed, units)] = runs.read_json(path)
        print(method, seed, units, "test acc",
              round(records[(method, seed, units)]["test_accuracy"][-1], 3),
              f"{time.time() - start:.0f} s", flush=True)
  table = {}
  for units in ("layer", "channel"):
    for method in cfg["methods"]:
      per_seed = [ud.unlearnable_distance(
          records[(method, s, units)]["sal_loss"],
          records[("clean", s, units)]["sal_loss"])
          for s in range(cfg["seeds"])]
      uds = [p["ud"] for p in per_seed]
      table[f"{method}/{units}"] = {
          "ud": uds, "ud_mean": float(np.mean(uds)),
          "ud_spread": float(np.ptp(uds)),
          "one_minus_ud_mean": float(1 - np.mean(uds)),
          "n": [p["n"] for p in per_seed],
          "n_clean": [p["n_clean"] for p in per_seed],
          "threshold": [p["threshold"] for p in per_seed],
          "test_accuracy": [records[(method, s, units)]["test_accuracy"][-1]
                            for s in range(cfg["seeds"])]}
      print(f"{method:14s} {units:8s} UD {np.mean(uds):.3f} "
            f"(seeds {', '.join(f'{u:.3f}' for u in uds)}) acc "
            f"{np.mean(table[f'{method}/{units}']['test_accuracy']):.3f}")
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  xs = np.arange(len(cfg["methods"]))
  for i, units in enumerate(("layer", "channel")):
    rows = [table[f"{m}/{units}"] for m in cfg["methods"]]
    axes[0].bar(xs + 0.4 * i - 0.2, [r["ud_mean"] for r in rows], 0.4,
                yerr=[r["ud_spread"] / 2 for r in rows], label=f"{units} units")
  axes[0].set(xticks=xs, ylabel="UD = n / n_clean",
              title="Unlearnable Distance")
  axes[0].set_xticklabels(cfg["methods"], rotation=30, fontsize=8)
  axes[0].legend(fontsize=8)
  axes[1].bar(xs, [np.mean(table[f"{m}/layer"]["test_accuracy"])
                   for m in cfg["methods"]])
  axes[1].set(xticks=xs, ylabel="clean test accuracy", title="Victim accuracy")
  axes[1].set_xticklabels(cfg["methods"], rotation=30, fontsize=8)
  for method in cfg["methods"]:
    sal = np.asarray(records[(method, 0, "layer")]["sal_loss"])
    axes[2].plot(sal.mean(1), label=method)
  axes[2].set(xlabel="epoch", ylabel="mean loss-SAL (layer units, seed 0)",
              title="SAL during training")
  axes[2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out / "ud.png", dpi=120)
  runs.write_json(args.out / "ud.json", {
      "command": " ".join(["python"] + sys.argv), "config": cfg,
      "table": table, "wall_seconds": time.time() - start,
      "cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
      "runs": {"/".join(map(str, k)): v for k, v in records.items()}})


if __name__ == "__main__":
  main()
