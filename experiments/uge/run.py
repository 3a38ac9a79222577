"""Ungeneralizable examples: does the authorised network learn, and only it?

    python experiments/uge/run.py --out runs/uge

`jaxue craft --method uge` (CONFIG), victims of the authorised and other
architectures on the release and on clean data, students distilled from
the authorised victim, ablations without one loss term. Writes
--out/uge.json and --out/uge.png; every step is cached under --out.
"""

import argparse
import pathlib
import resource
import sys
import time

import jax
import numpy as np

from jaxue import data, models, noise, runs, train, uge
from jaxue.pipelines import _figures, craft, evaluate

CONFIG = {
    "full": {"train_size": 4000, "test_size": None, "epsilon": 16 / 255,
             "widths": [16, 32, 64], "encoder": ["resnet18", [8, 16, 32, 64]],
             "encoder_epochs": 8, "rounds": 8, "steps": 40, "seeds": 2,
             "epochs": 8,
             "victims": {"authorised small_cnn": ["small_cnn", [16, 32, 64]],
                         "small_cnn_flat": ["small_cnn_flat", [16, 32, 64]],
                         "small_cnn narrow": ["small_cnn", [8, 16, 32]],
                         "resnet18 (encoder's)": ["resnet18", [8, 16, 32, 64]]},
             "students": ["small_cnn_flat", "resnet18 (encoder's)"],
             "ablation": ["authorised small_cnn", "small_cnn_flat",
                          "small_cnn narrow"],
             "ablations": {"no-gm": "lam_gm", "no-ud": "lam_ud"}},
    "smoke": {"train_size": 256, "test_size": 200, "widths": [4, 8, 8],
              "encoder": ["small_cnn_flat", [4, 8, 8]], "encoder_epochs": 1,
              "rounds": 1, "steps": 2, "epochs": 1, "seeds": 1, "victims": {
                  "authorised small_cnn": ["small_cnn", [4, 8, 8]],
                  "small_cnn_flat": ["small_cnn_flat", [4, 8, 8]]},
              "students": ["small_cnn_flat"], "ablation": ["small_cnn_flat"],
              "ablations": {"no-ud": "lam_ud"}},
}


def cached(path, make):
  """A JSON result computed once (a rerun reads it back)."""
  if not path.exists():
    runs.write_json(path, make())
  return runs.read_json(path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  for flag in ("--smoke", "--quiet"):
    parser.add_argument(flag, action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  start, rows = time.time(), {}
  crafted = craft.run(craft.Config(
      method="uge", train_size=cfg["train_size"], test_size=cfg["test_size"],
      widths=tuple(cfg["widths"]), epsilon=cfg["epsilon"],
      encoder_model=cfg["encoder"][0], encoder_widths=tuple(cfg["encoder"][1]),
      encoder_epochs=cfg["encoder_epochs"], uge_rounds=cfg["rounds"],
      uge_steps=cfg["steps"], quiet=args.quiet), args.out / "craft")
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
  # Distillation: the authorised victim trained on the release teaches.
  release, _ = runs.load_arrays(args.out / "craft" / "release.npz")
  test = tuple(a[:cfg["test_size"]] for a in data.load("fashion_mnist",
                                                        "test"))
  teacher, teacher_variables, _ = runs.load_model(
      args.out / "victims-authorised-release/models/victim-seed0")
  for name in cfg["students"]:
    student = models.make_model(cfg["victims"][name][0],
                                widths=cfg["victims"][name][1])
    rows[name]["distilled"] = cached(
        args.out / f"distill-{name.split(' ')[0]}.json",
        lambda: [uge.distill(
            jax.random.key(100 + k), teacher.apply, teacher_variables,
            student, release["images"], release["labels"], test=test,
            epochs=cfg["epochs"], progress=not args.quiet)[1][
                "test_accuracy"][-1] for k in range(cfg["seeds"])])
  # Ablations (one loss term off): the craft run's key, encoder and data.
  x, y = (a[release["train_indices"]] for a in data.load("fashion_mnist",
                                                          "train"))
  for tag, off in cfg["ablations"].items():
    if not (args.out / f"{tag}.npz").exists():
      result = uge.ungeneralizable_examples(
          jax.random.split(jax.random.key(0))[1], models.make_model(
              "small_cnn", widths=tuple(cfg["widths"]), conv_impl="im2col"),
          x, y, num_classes=10, encoder=uge.penultimate(*runs.load_model(
              args.out / "craft/encoder")[:2]), epsilon=cfg["epsilon"],
          rounds=cfg["rounds"], steps=cfg["steps"], **{off: 0.0},
          progress=not args.quiet)
      runs.save_arrays(args.out / f"{tag}.npz", {"images": noise.release(
          x, y, result.noise, mode="samplewise")})
    images = runs.load_arrays(args.out / f"{tag}.npz")[0]["images"]
    for name in cfg["ablation"]:
      victim = models.make_model(cfg["victims"][name][0],
                                 widths=cfg["victims"][name][1])
      rows[name][f"release {tag}"] = cached(
          args.out / f"{tag}-{name.replace(' ', '-')}.json",
          lambda: [train.train_victim(
              jax.random.fold_in(jax.random.key(0), k), victim, images, y,
              test=test, epochs=cfg["epochs"], progress=False)[1][
                  "test_accuracy"][-1] for k in range(cfg["seeds"])])
  auth = np.asarray(rows["authorised small_cnn"]["release"])
  summary = {}
  for name, row in rows.items():  # Seed k of each against authorised k.
    gap = auth - np.asarray(row["release"])
    summary[name] = {**row, "drop": float(np.mean(row["clean"]) - np.mean(
        row["release"])), "authorised_minus_this": gap.tolist(),
        "gap_mean": float(gap.mean()), "gap_spread": float(np.ptp(gap))}
  fig, ax = _figures.plt.subplots(figsize=(8, 3.8))
  names, xs = list(rows), np.arange(len(rows))
  for i, key in enumerate(["clean", "release", *(
      f"release {t}" for t in cfg["ablations"]), "distilled"]):
    vals = [rows[n].get(key) or [np.nan] for n in names]
    ax.bar(xs + 0.16 * (i - 2), [np.mean(v) for v in vals], 0.16,
           yerr=[np.ptp(v) / 2 for v in vals], label=key)
  ax.set(xticks=xs, ylabel="clean test accuracy", ylim=(0, 1),
         title="UGE release: authorised vs unauthorised victims")
  ax.set_xticklabels(names, fontsize=8)
  ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
  _figures.save(fig, args.out / "uge.png")
  runs.write_json(args.out / "uge.json", {
      "method_status": "reconstructed from the paper's abstract (no code)",
      "command": " ".join(["python"] + sys.argv), "config": cfg,
      "craft": {k: crafted[k] for k in ("noise_linf", "epsilon", "craft")},
      "summary": summary, "wall_seconds": time.time() - start,
      "cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime})


if __name__ == "__main__":
  main()
