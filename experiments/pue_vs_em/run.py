"""Does PUE certify below EM in jaxue, and from which weight-draw count?

    python experiments/pue_vs_em/run.py --out runs/pue_vs_em [--smoke]

Per seed (it picks the training subset, the initial surrogate and the
noise), the quickstart's settings: `jaxue craft` class-wise EM and PUE from
the same initial surrogate, PUE with 2 / 10 / 30 weight draws per level in
surrogate steps (half in noise steps; published 100 and 10); `jaxue certify`
of each surrogate (N = 1000, first 2,000 test images); one `jaxue evaluate`
victim per release and a clean one. Resumes under --out; rewrites
results.json and pue_vs_em.png here after each seed.
"""

import argparse
import pathlib
import sys

import numpy as np

import jaxue
from jaxue import parallel, runs
from jaxue.pipelines import _figures, certify, craft, evaluate

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = {
    "full": {"seeds": [0, 1, 2], "pue_draws": [2, 10, 30],
             "train_size": 10000, "max_rounds": 60, "sigma": 0.05,
             "draws": 1000, "certify_test_size": 2000, "epochs": 8,
             "widths": None},
    "smoke": {"seeds": [0], "pue_draws": [1], "train_size": 200,
              "max_rounds": 2, "draws": 8, "certify_test_size": 100,
              "epochs": 1, "widths": (4, 8, 8)},
}


def craft_config(cfg, seed, draws=None):
  """`jaxue craft` settings of EM (draws None) or of PUE with ``draws``."""
  fields = {} if draws is None else {"surrogate_draws": draws,
                                     "noise_draws": max(1, draws // 2)}
  return craft.Config(
      method="em-classwise" if draws is None else "pue-classwise",
      train_size=cfg["train_size"], widths=cfg["widths"],
      max_rounds=cfg["max_rounds"], sigma=cfg["sigma"], seed=seed,
      quiet=True, **fields)


def one_seed(cfg, seed, out):
  """Crafts, certifies and evaluates every release of one seed."""
  names = ["em"] + [f"pue-{d}" for d in cfg["pue_draws"]]
  crafted = {}
  for name, draws in zip(names, [None] + cfg["pue_draws"]):
    print(f"seed {seed}: craft {name}", flush=True)
    crafted[name] = craft.run(craft_config(cfg, seed, draws), out / name)
  cert = certify.run(certify.Config(
      models=tuple(str(out / n / "models" / "surrogate") for n in names),
      names=tuple(names), draws=cfg["draws"],
      test_size=cfg["certify_test_size"], sigma=cfg["sigma"],
      sigma_sweep=(), seed=seed, quiet=True), out / "certify")
  victims = {}
  for name in ["clean"] + names:
    print(f"seed {seed}: (certified) victim {name}", flush=True)
    source = ({"clean": True, "train_size": cfg["train_size"]}
              if name == "clean" else {"release": str(out / name)})
    victims[name] = evaluate.run(evaluate.Config(
        epochs=cfg["epochs"], seeds=1, seed=seed, widths=cfg["widths"],
        quiet=True, **source), out / f"victim-{name}")["victim_accuracy"]
  record = {"victim_accuracy": victims, "models": {}}
  for name in names:
    summary = crafted[name]["craft"]
    certified = cert["models"][name]
    record["models"][name] = {
        "rounds": len(summary["noisy_accuracy"]),
        "robust_rounds": int(sum(summary.get("robust", []))),
        "converged": crafted[name]["converged"],
        "final_noisy_accuracy": summary["noisy_accuracy"][-1],
        "craft_seconds": crafted[name]["wall_seconds"]["craft"],
        "smoothed_accuracy": certified["accuracy_summary"]["mean"],
        "quantile": certified["curve"],
        "expected": certified["expected"]["curve"]}
  return record


def summarise(per_seed, names):
  """Mean and sd over seeds of each curve; seeds where PUE < EM per eta."""
  done = list(per_seed.values())
  etas = [e for e, _ in done[0]["models"]["em"]["quantile"]]
  out = {"etas": etas}
  for name in names:
    rows = {}
    for kind in ("quantile", "expected"):
      values = np.array([[np.nan if v is None else v for _, v in
                          s["models"][name][kind]] for s in done])
      rows[kind] = {"mean": np.mean(values, 0).tolist(),
                    "sd": np.std(values, 0).tolist()}
      if name != "em":
        em = np.array([[np.nan if v is None else v for _, v in
                        s["models"]["em"][kind]] for s in done])
        rows[kind]["seeds_below_em"] = (values < em).sum(0).tolist()
    victims = [s["victim_accuracy"][name] for s in done]
    smoothed = [s["models"][name]["smoothed_accuracy"] for s in done]
    out[name] = dict(rows, victim=[np.mean(victims), np.std(victims)],
                     smoothed_accuracy=[np.mean(smoothed), np.std(smoothed)])
  return out


def figure(summary, names, path):
  fig, axes = _figures.plt.subplots(1, 2, figsize=(10, 4))
  etas = np.array(summary["etas"])
  for ax, kind in zip(axes, ("quantile", "expected")):
    for name in names:
      m, s = (np.array(summary[name][kind][k]) for k in ("mean", "sd"))
      ok = np.isfinite(m)  # The quantile bound abstains at large eta.
      ax.plot(etas[ok], m[ok], marker="o", ms=3, label=name)
      ax.fill_between(etas[ok], (m - s)[ok], (m + s)[ok], alpha=0.2)
    ax.set(xscale="log", xlabel="eta", ylim=(0, 1.02), xlim=(etas[0], 1),
           ylabel=f"certified learnability ({kind})")
  axes[0].legend(title="surrogate (PUE: draws)")
  fig.suptitle("Class-wise EM vs PUE surrogates: mean +- sd over seeds")
  _figures.save(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--results", type=pathlib.Path, default=HERE)
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  parallel.request_cpu_devices()  # As `jaxue` does: one device per core.
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  names = ["em"] + [f"pue-{d}" for d in cfg["pue_draws"]]
  per_seed = {}
  for seed in cfg["seeds"]:
    per_seed[str(seed)] = one_seed(cfg, seed, args.out / f"seed{seed}")
    summary = summarise(per_seed, names)
    args.results.mkdir(parents=True, exist_ok=True)
    runs.write_json(args.results / "results.json", runs.jsonable({
        "command": " ".join(["python"] + sys.argv), "config": cfg,
        "jaxue_version": jaxue.__version__, "seeds_done": list(per_seed),
        "summary": summary, "per_seed": per_seed}))
    figure(summary, names, args.results / "pue_vs_em.png")
    for name in names:
      q = summary[name]["quantile"]
      print(f"after seed {seed}: {name}: certified at eta "
            f"{summary['etas'][0]:g}: {q['mean'][0]:.4f} +- {q['sd'][0]:.4f}"
            f", victim {summary[name]['victim'][0]:.4f}", flush=True)
  return per_seed


if __name__ == "__main__":
  main()
