"""Bayes-error UEs against EM when only part of the training set is protected.

    python experiments/bayes_error/run.py --out runs/bayes_error

Crafts EM, Bayes-error (CNN and PCA features) and class-centroid noise,
protects 25-100% of the subset (the same images for every method), trains
victims on each mix and on the clean part alone, and measures the releases'
Bayes-error estimate through a network trained on other clean images.
Cached under ``--out``; writes ``bayes_error.json`` and ``.png`` there.
"""

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

import jaxue
from jaxue import bayes_error, data as data_lib, models, noise, runs, train
from jaxue.pipelines import _common, _figures

CONFIG = {
    "full": {"train_size": 4000, "test_size": None, "epsilon": 16 / 255,
             "widths": [16, 32, 64], "epochs": 8, "seeds": 2,
             "pgd_steps": 20, "max_rounds": 10, "ascent_steps": 60,
             "retrain_every": 10, "feature_epochs": 3, "reference_size": 8000,
             "fractions": [0.25, 0.5, 0.75, 1.0], "seed": 0},
    "smoke": {"train_size": 256, "test_size": 200, "widths": [4, 8, 8],
              "epochs": 1, "seeds": 1, "max_rounds": 1, "ascent_steps": 2,
              "retrain_every": 1, "feature_epochs": 1, "reference_size": 256,
              "fractions": [0.5, 1.0]},
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  data = _common.load_data("fashion_mnist", None, cfg["train_size"],
                           cfg["seed"], cfg["test_size"])
  x, y = data.train
  model = models.make_model("small_cnn", num_classes=10,
                            widths=tuple(cfg["widths"]))
  key, eps = jax.random.key(cfg["seed"]), cfg["epsilon"]
  ascent = bayes_error.BayesConfig(
      epsilon=eps, steps=cfg["ascent_steps"],
      retrain_every=cfg["retrain_every"], feature_epochs=cfg["feature_epochs"])
  surrogate = train.create_train_state(jax.random.fold_in(key, 1), model,
                                       (28, 28, 1), train.make_optimizer(0.1))
  fractions = cfg["fractions"]
  methods = {  # name: (crafting, protected fractions measured)
      "em": (lambda: noise.error_minimizing_noise(
          key, surrogate, x, y, num_classes=10, epsilon=eps,
          pgd_steps=cfg["pgd_steps"], max_rounds=cfg["max_rounds"],
          progress="em"), fractions),
      "bayes-error": (lambda: bayes_error.bayes_error_noise(
          key, model, x, y, num_classes=10, cfg=ascent, progress="ascent"),
                      fractions),
      "bayes-error-pca": (lambda: bayes_error.bayes_error_noise(
          key, model, x, y, num_classes=10,
          cfg=ascent._replace(features="pca"), progress="pca"), [1.0]),
      "centroid": (lambda: bayes_error.class_centroid_noise(
          x, y, num_classes=10, epsilon=eps), [0.5, 1.0])}

  def craft(name):
    path = args.out / "noise" / f"{name}.npz"
    if not path.exists():
      start = time.perf_counter()
      result = methods[name][0]()
      meta = {**{k: v[-1] for k, v in result.history.items() if v},
              "seconds": time.perf_counter() - start,
              "ascent_bayes_error": result.history.get("bayes_error", [])}
      runs.save_arrays(path, {"noise": result.noise}, meta=meta)
    arrays, meta = runs.load_arrays(path)
    return arrays["noise"], meta

  def victims(name, images, labels):
    path = args.out / "victims" / f"{name}.json"
    if not path.exists():
      curves = [train.train_victim(
          jax.random.key(100 + s), model, images, labels, test=data.test,
          epochs=cfg["epochs"], progress=f"{name} {s}")[1]["test_accuracy"]
                for s in range(cfg["seeds"])]
      last = [c[-1] for c in curves]
      runs.write_json(path, {"accuracy": float(np.mean(last)),
                             "per_seed": last, "spread": float(np.ptp(last)),
                             "peak_per_seed": [max(c) for c in curves]})
    return runs.read_json(path)

  # The reference feature map: clean images outside the subset.
  full_x, full_y = data_lib.load("fashion_mnist", "train")
  rest = np.asarray(jax.random.permutation(jax.random.key(7), np.setdiff1d(
      np.arange(len(full_y)), data.indices)))[:cfg["reference_size"]]
  reference, _ = train.train_victim(jax.random.key(7), model, full_x[rest],
                                    full_y[rest], test=None, epochs=4,
                                    progress="reference")
  pca = bayes_error.fit_pca(x, 50)
  features = jax.jit(lambda v, images: bayes_error.penultimate_features(
      reference.apply_fn, v, images))

  def estimates(images):
    feats = features(reference.variables, images)
    flat = images.reshape(len(images), -1) / 255.0
    return {"reference_cnn": bayes_error.release_bayes_error(feats, y),
            "pca50": bayes_error.release_bayes_error(
                (flat - pca.mean) @ pca.components, y)}

  cells = {"clean": victims("clean", x, y)}
  measured = {"clean": estimates(x)}
  crafting, masks = {}, {}
  for r in fractions:  # The protected images; the rest alone is the control.
    masks[r] = noise.protect_fraction(jax.random.fold_in(key, round(100 * r)),
                                      x, x, r)[1]
    if r < 1:
      cells[f"clean-only-{r}"] = victims(f"clean-only-{r}", x[~masks[r]],
                                         y[~masks[r]])
  for name in methods:
    delta, crafting[name] = craft(name)
    released = noise.release(x, y, delta, mode="samplewise")
    for r in methods[name][1]:
      mixed = np.where(masks[r][:, None, None, None], released, x)
      cells[f"{name}-{r}"] = victims(f"{name}-{r}", mixed, y)
      if r in (0.5, 1.0):
        measured[f"{name}-{r}"] = estimates(mixed)
  acc = {k: c["accuracy"] for k, c in cells.items()}
  results = {
      "victim_accuracy": acc, "cells": cells, "crafting": crafting,
      "bayes_error_estimate": measured, "ascent": ascent._asdict(),
      "epsilon": eps, "config": cfg, "model": "small_cnn",
      "command": " ".join(["python"] + sys.argv), "jaxue": jaxue.__version__}
  series = {n: [(0, acc["clean"])] + [(100 * r, acc[f"{n}-{r}"])
                                      for r in m[1]]
            for n, m in methods.items()}
  series["clean part alone"] = [(0, acc["clean"])] + [
      (100 * r, acc[f"clean-only-{r}"]) for r in fractions if r < 1]
  _figures.line_plot(args.out / "bayes_error.png", series,
                     xlabel="% of the training set protected",
                     ylabel="victim clean test accuracy",
                     title=f"Fashion-MNIST {cfg['train_size']}, L-inf "
                     f"{round(eps * 255)}/255, {cfg['seeds']} seeds")
  runs.write_json(args.out / "bayes_error.json", runs.jsonable(results))
  return results


if __name__ == "__main__":
  main()
