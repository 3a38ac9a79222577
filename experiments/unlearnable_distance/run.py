"""The Unlearnable Distance of jaxue's releases (Ye, Su & Qian, 2025).

    python experiments/unlearnable_distance/run.py \\
        --out runs/unlearnable_distance [--cells DIR]

Crafts each release (`jaxue craft`, a 2,000-image subset, 16/255), trains a
small CNN on it with SAL after every epoch (`jaxue.unlearnable_distance`),
2 seeds, with the paper's units (the 4 weight tensors) and with output
channels (ours; 4 per tensor); UD against the clean model of the same seed.
--cells DIR (the methods x defences table's cells, same subset) adds its
other releases, layer units only. Writes --out/ud.json and --out/ud.png.
"""

import argparse
import pathlib
import resource
import sys
import time

import jax
import numpy as np

from jaxue import data, models, runs
from jaxue import unlearnable_distance as ud
from jaxue.pipelines import _figures, craft

plt = _figures.plt

CONFIG = {
    "full": {"methods": ["clean", "em-classwise", "em-samplewise", "random",
                         "ops", "lsp"], "train_size": 2000,
             "test_size": 2000, "epsilon": 16 / 255,
             "craft_widths": [16, 32, 64],
             "widths": [8, 16, 32], "epochs": 10, "batch_size": 128,
             "sal_size": 512, "sal_steps": 5, "channels": [0, 1, 2, 3],
             "seeds": 2, "max_rounds": 40,  # With --cells:
             "table_methods": ["pue-classwise", "pue-samplewise", "rem",
                               "error-max", "error-max-targeted", "ar",
                               "salm-samplewise", "bayes-error", "uge"]},
    "smoke": {"methods": ["clean", "random"], "train_size": 256,
              "test_size": 200, "craft_widths": [4, 8, 8],
              "widths": [4, 8, 8], "epochs": 2, "sal_size": 128,
              "sal_steps": 1, "channels": [0], "seeds": 1},
}


def release(method, cfg, out, quiet, cells=None):
  """The release's (images, labels): --cells' if there, else crafted."""
  if cells and (cells / method / "release.npz").is_file():
    arrays, _ = runs.load_arrays(cells / method / "release.npz")
    return arrays["images"], arrays["labels"]
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
  for flag in ("--smoke", "--quiet"):
    parser.add_argument(flag, action="store_true")
  parser.add_argument("--cells", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  methods = cfg["methods"] + cfg.get("table_methods", []) * bool(args.cells)
  units_of = {m: ("layer", "channel") if m in cfg["methods"] else ("layer",)
              for m in methods}
  test = tuple(a[:cfg["test_size"]] for a in data.load("fashion_mnist", "test"))
  model = models.make_model("small_cnn", widths=tuple(cfg["widths"]))
  augment = data.default_augmentation("fashion_mnist")
  start, records, table = time.time(), {}, {}
  for method in methods:
    images, labels = release(method, cfg, args.out, args.quiet, args.cells)
    for seed in range(cfg["seeds"]):
      for units in units_of[method]:
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
        records[(method, seed, units)] = run = runs.read_json(path)
        print(method, seed, units, "test acc", round(run["test_accuracy"][-1],
              3), f"{time.time() - start:.0f} s", flush=True)
  for units in ("layer", "channel"):
    for method in [m for m in methods if units in units_of[m]]:
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
  xs = np.arange(len(methods))
  for i, units in enumerate(("layer", "channel")):
    rows = [table.get(f"{m}/{units}", {}) for m in methods]
    axes[0].bar(xs + 0.4 * i - 0.2, [r.get("ud_mean", 0) for r in rows], 0.4,
                yerr=[r.get("ud_spread", 0) / 2 for r in rows],
                label=f"{units} units")
  axes[0].set(xticks=xs, ylabel="UD = n / n_clean",
              title="Unlearnable Distance")
  axes[0].set_xticklabels(methods, rotation=60, fontsize=7)
  axes[0].legend(fontsize=8)
  axes[1].bar(xs, [np.mean(table[f"{m}/layer"]["test_accuracy"])
                   for m in methods])
  axes[1].set(xticks=xs, ylabel="clean test accuracy", title="Victim accuracy")
  axes[1].set_xticklabels(methods, rotation=60, fontsize=7)
  for method in cfg["methods"]:
    sal = np.asarray(records[(method, 0, "layer")]["sal_loss"])
    axes[2].plot(sal.mean(1), label=method)
  axes[2].set(xlabel="epoch", ylabel="mean loss-SAL (layer units, seed 0)",
              title="SAL during training")
  axes[2].legend(fontsize=7)
  _figures.save(fig, args.out / "ud.png")
  runs.write_json(args.out / "ud.json", {
      "command": " ".join(["python"] + sys.argv), "config": cfg,
      "table": table, "wall_seconds": time.time() - start,
      "cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
      "runs": {"/".join(map(str, k)): v for k, v in records.items()}})


if __name__ == "__main__":
  main()
