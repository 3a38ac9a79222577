"""Does PUE certify below EM in jaxue, and from which weight-draw count?

    python experiments/pue_vs_em/run.py --out runs/pue_vs_em [--smoke]

Per seed (subset, initial surrogate, noise), the quickstart's settings:
class-wise EM and PUE (`jaxue craft`, same initial surrogate) with 2 / 10 /
30 weight draws per level in surrogate steps (half in noise steps), and EM
and PUE crafted to a stricter stop; `jaxue certify` of each surrogate (N =
1000, 2,000 test images); a `jaxue evaluate` victim per release and a clean
one. Resumes under --out; rewrites results.json and pue_vs_em.png here.
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
             "widths": (16, 32, 64), "strict": [10, 0.01]},
    "smoke": {"seeds": [0], "pue_draws": [1], "train_size": 200,
              "max_rounds": 2, "draws": 8, "certify_test_size": 100,
              "epochs": 1, "widths": (4, 8, 8), "strict": None},
}


def releases(cfg):
  """name -> (PUE draws or None: EM, stop_error or None: the default)."""
  out = {"em": (None, None), **{f"pue-{d}": (d, None)
                                for d in cfg["pue_draws"]}}
  if cfg["strict"]:  # More robust rounds: EM and PUE crafted to this stop.
    d, stop = cfg["strict"]
    out.update({f"em-stop{stop:g}": (None, stop), f"pue-{d}-stop{stop:g}":
                (d, stop)})
  return out


def one_seed(cfg, seed, out):
  """Crafts, certifies and evaluates every release of one seed."""
  rel, crafted, cert, victims = releases(cfg), {}, {}, {}  # By name.
  for name, (draws, stop) in rel.items():
    print(f"seed {seed}: craft {name}", flush=True)
    crafted[name] = craft.run(craft.Config(
        method="em-classwise" if draws is None else "pue-classwise",
        train_size=cfg["train_size"], widths=cfg["widths"], seed=seed,
        max_rounds=cfg["max_rounds"], sigma=cfg["sigma"], stop_error=stop,
        quiet=True, **({} if draws is None else {
            "surrogate_draws": draws, "noise_draws": max(1, draws // 2)})),
        out / name)
  for stop in dict.fromkeys(s for _, s in rel.values()):  # A run per stop.
    group = [n for n, (_, s) in rel.items() if s == stop]
    cert.update(certify.run(certify.Config(
        models=tuple(str(out / n / "models" / "surrogate") for n in group),
        names=tuple(group), draws=cfg["draws"], sigma_sweep=(),
        test_size=cfg["certify_test_size"], sigma=cfg["sigma"], seed=seed,
        quiet=True), out / f"certify{'' if stop is None else stop}")["models"])
  for name in ["clean", *rel]:
    print(f"seed {seed}: (certified) victim {name}", flush=True)
    source = ({"clean": True, "train_size": cfg["train_size"]}
              if name == "clean" else {"release": str(out / name)})
    victims[name] = evaluate.run(evaluate.Config(
        epochs=cfg["epochs"], seeds=1, seed=seed, widths=cfg["widths"],
        quiet=True, **source), out / f"victim-{name}")["victim_accuracy"]
  record = {"victim_accuracy": victims, "models": {}}
  for name in rel:
    made, certified = crafted[name], cert[name]
    record["models"][name] = {
        "noisy_accuracy": made["craft"]["noisy_accuracy"],
        "robust_rounds": int(sum(made["craft"].get("robust", []))),
        "converged": made["converged"],
        "craft_seconds": made["wall_seconds"]["craft"],
        "smoothed_accuracy": certified["accuracy_summary"]["mean"],
        "quantile": certified["curve"],
        "expected": certified["expected"]["curve"]}
  return record


def summarise(per_seed, names):
  """Mean and sd over seeds of each curve; per eta, the seeds where it is
  below EM's (EM crafted with the same stop)."""
  done = list(per_seed.values())

  def curve(name, kind):  # seeds x etas; NaN where the bound abstains.
    return np.array([[np.nan if v is None else v for _, v in
                      s["models"][name][kind]] for s in done])

  out = {"etas": [e for e, _ in done[0]["models"]["em"]["quantile"]]}
  for name in names:
    ref = "em" + name[name.index("-stop"):] if "-stop" in name else "em"
    rows = {kind: {"mean": np.mean(curve(name, kind), 0).tolist(),
                   "sd": np.std(curve(name, kind), 0).tolist(),
                   "seeds_below_em": (curve(name, kind) < curve(ref, kind))
                                     .sum(0).tolist()}
            for kind in ("quantile", "expected")}
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
           ylabel=f"certified learnability ({kind}; mean +- sd over seeds)")
  axes[0].legend(title="surrogate (PUE: draws)", fontsize=8)
  _figures.save(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--results", type=pathlib.Path, default=HERE)
  parser.add_argument("--smoke", action="store_true")  # CONFIG["smoke"]
  args = parser.parse_args(argv)
  parallel.request_cpu_devices()  # As `jaxue` does: one device per core.
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  names, per_seed = list(releases(cfg)), {}
  for seed in cfg["seeds"]:
    per_seed[str(seed)] = one_seed(cfg, seed, args.out / f"seed{seed}")
    summary = summarise(per_seed, names)
    runs.write_json(args.results / "results.json", runs.jsonable({
        "command": " ".join(["python"] + sys.argv), "config": cfg,
        "jaxue_version": jaxue.__version__, "seeds_done": list(per_seed),
        "summary": summary, "per_seed": per_seed}))
    figure(summary, names, args.results / "pue_vs_em.png")
    for name in names:
      print(f"after seed {seed}: {name}: certified at eta 0.001 "
            f"{summary[name]['quantile']['mean'][0]:.4f}, victim "
            f"{summary[name]['victim'][0]:.4f}", flush=True)
  return per_seed


if __name__ == "__main__":
  main()
