"""Ungeneralizable examples: does the authorised network learn, and only it?

    python experiments/uge/run.py --out runs/uge

`jaxue craft --method uge` (a reconstruction of Ye & Wang, CVPR 2024, from
its abstract) on a 4,000-image Fashion-MNIST subset at 16/255, authorised
small CNN 16/32/64, frozen encoder a ResNet-18 8/16/32/64 trained on a
disjoint clean 4,000-image split; then `jaxue evaluate` victims (8 epochs,
2 seeds) of the authorised architecture and of unauthorised ones (the small
CNN with a flattened head, a narrower small CNN, and the encoder's own
ResNet-18) on the release and on the clean subset, and students distilled
(`jaxue.uge.distill`, T = 4) from the authorised victim trained on the
release. Writes ``--out/uge.json`` and ``--out/uge.png``; every run is a
resumable run directory under ``--out``.
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

from jaxue import data, models, runs, uge  # noqa: E402
from jaxue.pipelines import craft, evaluate  # noqa: E402

CONFIG = {
    "full": {"train_size": 4000, "test_size": None, "epsilon": 16 / 255,
             "widths": [16, 32, 64], "encoder": ["resnet18", [8, 16, 32, 64]],
             "encoder_epochs": 8, "rounds": 8, "steps": 40, "epochs": 8,
             "seeds": 2,
             "victims": {"authorised small_cnn": ["small_cnn", [16, 32, 64]],
                         "small_cnn_flat": ["small_cnn_flat", [16, 32, 64]],
                         "small_cnn narrow": ["small_cnn", [8, 16, 32]],
                         "resnet18 (encoder's)": ["resnet18", [8, 16, 32, 64]]},
             "students": ["small_cnn_flat", "resnet18 (encoder's)"]},
    "smoke": {"train_size": 256, "test_size": 200, "widths": [4, 8, 8],
              "encoder": ["small_cnn_flat", [4, 8, 8]], "encoder_epochs": 1,
              "rounds": 1, "steps": 2, "epochs": 1, "seeds": 1,
              "victims": {"authorised small_cnn": ["small_cnn", [4, 8, 8]],
                          "small_cnn_flat": ["small_cnn_flat", [4, 8, 8]]},
              "students": ["small_cnn_flat"]},
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  start = time.time()
  crafted = craft.run(craft.Config(
      method="uge", train_size=cfg["train_size"], test_size=cfg["test_size"],
      widths=tuple(cfg["widths"]), epsilon=cfg["epsilon"],
      encoder_model=cfg["encoder"][0], encoder_widths=tuple(cfg["encoder"][1]),
      encoder_epochs=cfg["encoder_epochs"], uge_rounds=cfg["rounds"],
      uge_steps=cfg["steps"], quiet=args.quiet), args.out / "craft")
  rows = {}
  for name, (model, widths) in cfg["victims"].items():
    for source in ("release", "clean"):
      tag = name.split(" ")[0] + ("-narrow" if "narrow" in name else "")
      result = evaluate.run(evaluate.Config(
          release=str(args.out / "craft") if source == "release" else None,
          clean=source == "clean", train_size=(
              cfg["train_size"] if source == "clean" else None),
          test_size=cfg["test_size"], model=model, widths=tuple(widths),
          epochs=cfg["epochs"], seeds=cfg["seeds"], quiet=args.quiet),
          args.out / f"victims-{tag}-{source}")
      rows.setdefault(name, {})[source] = result["victim_accuracy_per_seed"]
      print(name, source, np.round(result["victim_accuracy_per_seed"], 3),
            f"{time.time() - start:.0f} s", flush=True)
  # Distillation: the authorised victim trained on the release teaches.
  release, _ = runs.load_arrays(args.out / "craft" / "release.npz")
  test = tuple(a[:cfg["test_size"]] for a in data.load("fashion_mnist",
                                                        "test"))
  teacher_dir = args.out / "victims-authorised-release/models/victim-seed0"
  teacher, teacher_variables, _ = runs.load_model(teacher_dir)
  for name in cfg["students"]:
    model, widths = cfg["victims"][name]
    path = args.out / f"distill-{name.split(' ')[0]}.json"
    if not path.exists():
      accs = []
      for seed in range(cfg["seeds"]):
        _, history = uge.distill(
            jax.random.key(100 + seed), teacher.apply, teacher_variables,
            models.make_model(model, widths=tuple(widths)),
            release["images"], release["labels"], test=test,
            epochs=cfg["epochs"], progress=not args.quiet)
        accs.append(history["test_accuracy"][-1])
      runs.write_json(path, accs)
    rows[name]["distilled"] = runs.read_json(path)
    print(name, "distilled", np.round(rows[name]["distilled"], 3), flush=True)
  auth = np.asarray(rows["authorised small_cnn"]["release"])
  summary = {}
  for name, row in rows.items():
    rel, cln = np.asarray(row["release"]), np.asarray(row["clean"])
    summary[name] = {
        "release": float(rel.mean()), "release_spread": float(np.ptp(rel)),
        "clean": float(cln.mean()), "clean_spread": float(np.ptp(cln)),
        "drop": float(cln.mean() - rel.mean()),
        # Per seed: authorised victim k against this architecture's k.
        "authorised_minus_this": (auth - rel).tolist(),
        "gap_mean": float((auth - rel).mean()),
        "gap_spread": float(np.ptp(auth - rel)),
        "distilled": row.get("distilled")}
    print(f"{name:24s} release {rel.mean():.3f}±{np.ptp(rel) / 2:.3f} clean "
          f"{cln.mean():.3f} drop {cln.mean() - rel.mean():+.3f} gap "
          f"{(auth - rel).mean():+.3f}")
  fig, ax = plt.subplots(figsize=(8, 3.8))
  names = list(rows)
  xs = np.arange(len(names))
  for i, key in enumerate(("clean", "release", "distilled")):
    vals = [rows[n].get(key) or [np.nan] for n in names]
    ax.bar(xs + 0.27 * (i - 1), [np.mean(v) for v in vals], 0.27,
           yerr=[np.ptp(v) / 2 for v in vals], label=key)
  ax.set(xticks=xs, ylabel="clean test accuracy", ylim=(0, 1),
         title="UGE release: authorised vs unauthorised victims")
  ax.set_xticklabels(names, fontsize=8)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out / "uge.png", dpi=120)
  runs.write_json(args.out / "uge.json", {
      "command": " ".join(["python"] + sys.argv), "config": cfg,
      "craft": {k: crafted[k] for k in ("noise_linf", "epsilon", "craft")},
      "summary": summary, "wall_seconds": time.time() - start,
      "cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime})


if __name__ == "__main__":
  main()
