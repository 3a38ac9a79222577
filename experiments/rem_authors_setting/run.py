"""REM where it was compared with the authors' code; saturation; a search.

    python experiments/rem_authors_setting/run.py \\
        --out runs/rem_authors_setting [--smoke]

1. `jaxue craft --method rem` on a 1,000-image Fashion-MNIST subset at the
   compared settings (rho_u 16/255, rho_a 8/255, 100 surrogate steps, 5
   noise steps, K = 2, 5 attack steps), 3 seeds, with EM sample-wise and
   clean data beside it; `jaxue evaluate` standard and adversarial (8/255)
   victims, 2 seeds each. REPORTED: the audit's numbers (not rerun here).
2. Saturation, per pixel class (0, 255, between): share, budget used.
3. Search: rho_u 24 and 32/255 x rho_a 4 and 8/255 (seed 0), standard
   victims and longer (16-epoch) adversarial victims at rho_a.
Every run resumes under --out; writes results.json and rem.png here.
"""

import argparse
import pathlib
import sys

import numpy as np

import jaxue
from jaxue import data, runs
from jaxue.pipelines import _figures, craft, evaluate

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = {
    "full": {"train_size": 1000, "widths": [16, 32, 64], "epochs": 8,
             "victim_seeds": 2, "seeds": [0, 1, 2], "rho_u": 16, "rho_a": 8,
             "rem": {"rem_train_steps": 100, "noise_steps": 5,
                     "eot_draws": 2, "attack_steps": 5},
             "search": [[24, 4], [24, 8], [32, 4], [32, 8]],
             "search_adv_epochs": 16},
    "smoke": {"train_size": 200, "widths": [4, 8, 8], "epochs": 1,
              "victim_seeds": 1, "seeds": [0],
              "rem": {"rem_train_steps": 2, "noise_steps": 1,
                      "eot_draws": 1, "attack_steps": 1},
              "search": [[24, 8]], "search_adv_epochs": 1},
}
# Mean (sd) over 3 noise seeds x 2 victim seeds of the audit that ran the
# authors' REM code and jaxue's on this setting (standard, adversarial).
REPORTED = {"authors' REM": [[0.727, 0.019], [0.757, 0.003]],
            "jaxue REM (audit)": [[0.688, 0.018], [0.752, 0.003]],
            "EM (audit)": [[0.32, None], [0.757, None]],
            "clean (audit)": [[0.81, None], [0.763, None]]}


def victims(cfg, out, source, seed, rho_a, adv_epochs=None):
  """Standard and adversarial victims: mean, sd and per-seed accuracies."""
  common = dict(train_size=cfg["train_size"], widths=tuple(cfg["widths"]),
                seeds=cfg["victim_seeds"], seed=seed, quiet=True, **source)
  result = {}
  for kind, extra in (("standard", {"epochs": cfg["epochs"]}),
                      ("adversarial", {"epochs": adv_epochs or cfg["epochs"],
                                       "adversarial": True,
                                       "adv_radius": rho_a / 255})):
    r = evaluate.run(evaluate.Config(**common, **extra), out / kind)
    result[kind] = [r["victim_accuracy"], r["victim_accuracy_std"],
                    r["victim_accuracy_per_seed"]]
  return result


def crafted(cfg, out, method, seed, rho_u, rho_a=None):
  extra = {"rho_a": rho_a / 255, **cfg["rem"]} if method == "rem" else {}
  craft.run(craft.Config(method=method, train_size=cfg["train_size"],
                         widths=tuple(cfg["widths"]), epsilon=rho_u / 255,
                         seed=seed, quiet=True, **extra), out)
  return {"release": str(out)}


def saturation(release_dir, epsilon):
  """Per pixel class (0, 255, between): its share of the pixels, the share
  of the budget the release uses, how many change, and which way."""
  arrays = runs.load_arrays(pathlib.Path(release_dir) / "release.npz")[0]
  x = data.load("fashion_mnist", "train")[0][arrays["train_indices"]]
  change = arrays["images"].astype(np.float64) - x
  classes = {"at 0": x == 0, "at 255": x == 255, "between": (x > 0) & (x < 255)}
  return {name: {"fraction_of_pixels": float(m.mean()),
                 "budget_used": float(np.abs(change[m]).mean() / epsilon),
                 "changed": float((change[m] != 0).mean()),
                 "brightened": float((change[m] > 0).mean())}
          for name, m in classes.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true")  # CONFIG["smoke"]
  parser.add_argument("--results", type=pathlib.Path, default=HERE)
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  out, rho_u, rho_a = args.out, cfg["rho_u"], cfg["rho_a"]
  rows, diagnostics, search = {"clean": {}, "em": {}, "rem": {}}, {}, {}
  for seed in cfg["seeds"]:
    print(f"seed {seed}: clean, EM, REM", flush=True)
    rows["clean"][seed] = victims(cfg, out / f"clean-{seed}",
                                  {"clean": True}, seed, rho_a)
    for method, key in (("em-samplewise", "em"), ("rem", "rem")):
      source = crafted(cfg, out / f"{key}-{seed}", method, seed, rho_u, rho_a)
      rows[key][seed] = victims(cfg, out / f"{key}-{seed}-victims", source,
                                seed, rho_a)
      diagnostics[f"{key}-{seed}"] = saturation(source["release"], rho_u)
  report(args, cfg, rows, diagnostics, search)
  # Then clean data (rho_u 0) with the search's victims, for reference.
  for u, a in cfg["search"] + [[0, a] for a in {a for _, a in cfg["search"]}]:
    print(f"search: rho_u {u}/255, rho_a {a}/255", flush=True)
    name = f"rem-u{u}-a{a}" if u else f"clean-a{a}"
    source = crafted(cfg, out / name, "rem", 0, u, a) if u else {"clean": True}
    search[name] = dict(victims(cfg, out / f"{name}-victims", source, 0, a,
                                cfg["search_adv_epochs"]), rho_u=u, rho_a=a,
                        saturation=u and saturation(source["release"], u))
    report(args, cfg, rows, diagnostics, search)


def report(args, cfg, rows, diagnostics, search):
  """Writes results.json and rem.png with what is done so far."""
  summary = {k: {kind: [float(f(np.concatenate([v[s][kind][2] for s in v])))
                        for f in (np.mean, np.std)]  # Over all victims.
                 for kind in ("standard", "adversarial")}
             for k, v in rows.items()}
  args.results.mkdir(parents=True, exist_ok=True)
  runs.write_json(args.results / "results.json", runs.jsonable({
      "command": " ".join(["python"] + sys.argv), "config": cfg,
      "jaxue_version": jaxue.__version__, "reported": REPORTED,
      "summary": summary, "per_seed": rows, "saturation": diagnostics,
      "search": search}))
  figure(summary, search, args.results / "rem.png")
  for k, v in {**summary, **search}.items():
    print(f"{k}: standard {v['standard'][0]:.3f} +- {v['standard'][1]:.3f}"
          f", adversarial {v['adversarial'][0]:.3f} +- "
          f"{v['adversarial'][1]:.3f}", flush=True)


def figure(summary, search, path):
  labels = [*REPORTED, *(f"jaxue {k}" for k in summary), *search]
  values = [[m for m, _ in v] for v in REPORTED.values()] + [
      [v["standard"][0], v["adversarial"][0]] for v in summary.values()] + [
          [v["standard"][0], v["adversarial"][0]] for v in search.values()]
  fig, ax = _figures.plt.subplots(figsize=(10, 4))
  pos = np.arange(len(labels))
  for i, kind in enumerate(("standard victim", "adversarial victim")):
    ax.bar(pos + (i - 0.5) * 0.4, [v[i] for v in values], 0.4, label=kind)
  ax.set_xticks(pos, labels, rotation=30, ha="right", fontsize=8)
  ax.set(ylabel="clean test accuracy", ylim=(0, 1)), ax.legend()
  _figures.save(fig, path)


if __name__ == "__main__":
  main()
