"""SALM (sparse local masking) against EM on Fashion-MNIST.

    python experiments/salm/run.py --out runs/salm

Crafts sample-wise EM and SALM noise (jaxue.salm: EM with the PGD step
masked to each image's top-k pixels) at the same L-inf budget, for several
mask fractions rho and the three mask rules, trains victims on each release,
and also on EM noise rescaled per image to each SALM release's L2 energy.
Crafted noise and victim results are cached under ``--out`` (a rerun
resumes). Writes ``--out/salm.json`` and ``--out/salm.png``.
"""

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

import jaxue
from jaxue import models, noise, runs, salm, train
from jaxue.pipelines import _common, _figures

CONFIG = {
    "full": {"train_size": 2000, "test_size": None, "epsilon": 16 / 255,
             "widths": [16, 32, 64], "epochs": 8, "seeds": 2,
             "pgd_steps": 20, "max_rounds": 8,
             "rhos": [0.05, 0.2, 0.5], "mask_rho": 0.2, "seed": 0},
    "smoke": {"train_size": 200, "test_size": 200, "widths": [4, 8, 8],
              "epochs": 1, "seeds": 1, "max_rounds": 1, "rhos": [0.1]},
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
  em_kwargs = dict(num_classes=10, epsilon=cfg["epsilon"],
                   pgd_steps=cfg["pgd_steps"], max_rounds=cfg["max_rounds"])
  key = jax.random.key(cfg["seed"])

  def craft(name, settings):
    """Noise of one method (cached), and its crafting summary."""
    path = args.out / "noise" / f"{name}.npz"
    if path.exists():
      arrays, meta = runs.load_arrays(path)
      return arrays["noise"], meta
    state = train.create_train_state(jax.random.fold_in(key, 1), model,
                                      data.image_shape,
                                      train.make_optimizer(0.1))
    start = time.perf_counter()
    if settings is None:
      result = noise.error_minimizing_noise(key, state, x, y, **em_kwargs,
                                            progress=name)
    else:
      result = salm.salm_noise(key, state, x, y, salm=settings,
                               saliency_model=model, **em_kwargs,
                               progress=name)
    meta = {"rounds": len(result.history["accuracy"]),
            "converged": result.converged,
            "noisy_accuracy": result.history["accuracy"][-1],
            "seconds": time.perf_counter() - start,
            "round_seconds_mean": float(np.mean(result.history["seconds"]))}
    runs.save_arrays(path, {"noise": result.noise}, meta=meta)
    return result.noise, meta

  def victims(name, delta):
    """Victims trained on the release of ``delta`` (cached)."""
    path = args.out / "victims" / f"{name}.json"
    if path.exists():
      return runs.read_json(path)
    images = x if delta is None else noise.release(x, y, delta,
                                                   mode="samplewise")
    last, peak = [], []
    for s in range(cfg["seeds"]):
      _, history = train.train_victim(
          jax.random.fold_in(jax.random.key(100 + s), 0), model, images, y,
          test=data.test, epochs=cfg["epochs"], progress=f"{name} {s}")
      last.append(history["test_accuracy"][-1])
      peak.append(max(history["test_accuracy"]))
    cell = {"accuracy": float(np.mean(last)), "per_seed": last,
            "spread": float(np.ptp(last)), "peak_per_seed": peak}
    if delta is not None:
      flat = np.abs(delta).reshape(len(delta), -1)
      cell.update(linf=float(flat.max()),
                  l2_mean=float(np.sqrt((flat**2).sum(1)).mean()),
                  sparsity=salm.noise_sparsity(delta),
                  foreground_share=float(
                      (flat * (x.reshape(len(x), -1) > 0)).sum()
                      / max(flat.sum(), 1e-12)))
    runs.write_json(path, cell)
    return cell

  cells, crafting = {"clean": victims("clean", None)}, {}
  em, crafting["em"] = craft("em", None)
  cells["em"] = victims("em", em)
  settings = {f"salm-{r}": salm.SALMConfig(rho=r) for r in cfg["rhos"]}
  rho = cfg["mask_rho"]
  settings.update({
      f"salm-{rho}-fixed": salm.SALMConfig(rho=rho, mask="grad-topk-fixed"),
      f"salm-{rho}-intensity": salm.SALMConfig(rho=rho, mask="intensity"),
      f"salm-{rho}-restrict": salm.SALMConfig(rho=rho, restrict=True)})
  for name, setting in settings.items():
    delta, crafting[name] = craft(name, setting)
    cells[name] = victims(name, delta)
    if setting.mask == "grad-topk-per-step":
      cells[f"em-l2-of-{name}"] = victims(f"em-l2-of-{name}",
                                          salm.scale_to_l2(em, delta))
  results = {
      "victim_accuracy": {k: c["accuracy"] for k, c in cells.items()},
      "cells": cells, "crafting": crafting,
      "salm_settings": {k: s._asdict() for k, s in settings.items()},
      "pixels_per_image": {k: salm.pixel_count(s.rho, data.image_shape)
                           for k, s in settings.items()},
      "epsilon": cfg["epsilon"], "config": cfg, "model": "small_cnn",
      "command": " ".join(["python"] + sys.argv),
      "jaxue_version": jaxue.__version__}
  acc = results["victim_accuracy"]
  series = {
      "SALM grad-topk-per-step (EM at rho=1)":
          [(r, acc[f"salm-{r}"]) for r in cfg["rhos"]] + [(1.0, acc["em"])],
      "EM rescaled to SALM's L2":
          [(r, acc[f"em-l2-of-salm-{r}"]) for r in cfg["rhos"]]}
  for rule in ("fixed", "intensity", "restrict"):
    series[f"SALM {rule}"] = [(rho, acc[f"salm-{rho}-{rule}"])]
  series["EM at SALM restrict's L2"] = [
      (rho, acc[f"em-l2-of-salm-{rho}-restrict"])]
  series["clean"] = [(min(cfg["rhos"]), acc["clean"]), (1.0, acc["clean"])]
  _figures.line_plot(args.out / "salm.png", series, logx=True,
                     xlabel="mask fraction rho",
                     ylabel="victim clean test accuracy",
                     title=f"Fashion-MNIST {cfg['train_size']}, L-inf "
                     f"{round(cfg['epsilon'] * 255)}/255, "
                     f"{cfg['seeds']} seeds")
  runs.write_json(args.out / "salm.json", runs.jsonable(results))
  print(f"victim accuracy {acc}\nwrote {args.out / 'salm.json'}")
  return results


if __name__ == "__main__":
  main()
