"""Quantile vs expected-learnability certificates of the quickstart's
surrogates at N = 1,000 and N = 10,000 draws (a 2,000-image test subset).

    python experiments/certificates/run.py --out runs/certificates
    python experiments/certificates/run.py --out runs/certificates \\
        --quickstart runs/quick       # reuse a finished quickstart run

Writes OUT/quickstart/ (unless --quickstart is given), OUT/certify-N<N>/
(one `jaxue certify` run per N) and, in this folder, results.json and
certificates.png.
"""

import argparse
import pathlib

from jaxue import parallel
from jaxue import runs
from jaxue.pipelines import _figures
from jaxue.pipelines import certify
from jaxue.pipelines import quickstart

HERE = pathlib.Path(__file__).resolve().parent
METHODS = ("em-classwise", "pue-classwise")
LEVELS = (0.5, 0.9)  # "Certifies non-trivially": the bound is at most this.


def largest_eta(curve, level=None):
  """Largest eta with a certificate (level None) or one <= level."""
  ok = [e for e, v in curve if v is not None and (level is None or
                                                   v <= level)]
  return max(ok) if ok else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/certificates")
  parser.add_argument("--quickstart", default=None,
                      help="a finished quickstart run directory to reuse")
  parser.add_argument("--draws", default="1000,10000")
  parser.add_argument("--test-size", type=int, default=2000)
  parser.add_argument("--results", default=str(HERE))
  args = parser.parse_args()
  parallel.request_cpu_devices()  # As `jaxue` does: one device per core.
  out = pathlib.Path(args.out)
  qs = pathlib.Path(args.quickstart or out / "quickstart")
  if args.quickstart is None:
    # The quickstart's own certification is smoke-sized here (N = 100);
    # the study certifies its surrogates below.
    quickstart.run(quickstart.Config(draws=100, quiet=True), qs)
  models = tuple(str(qs / "models" / m) for m in METHODS)
  study = {"quickstart": str(qs), "test_size": args.test_size, "runs": {}}
  for n in (int(v) for v in args.draws.split(",")):
    config = certify.Config(models=models, names=METHODS, draws=n,
                            test_size=args.test_size, sigma_sweep=(),
                            quiet=True)
    results = certify.run(config, out / f"certify-N{n}")
    entry = {"sigma": results["sigma"], "q": results["q"],
             "confidence": results["confidence"],
             "mean_bound": results["mean_bound"],
             "wall_seconds": results["wall_seconds"], "models": {}}
    for name, record in results["models"].items():
      quantile = record["curve"]
      expected = record["expected"]["curve"]
      entry["models"][name] = {
          "curve": [[e, q, x] for (e, q), (_, x) in zip(quantile, expected)],
          "upper_mean": record["expected"]["upper_mean"],
          "accuracy_summary": record["accuracy_summary"],
          "draws_per_second": record["draws_per_second"],
          "largest_eta": {
              "quantile": largest_eta(quantile),
              "expected_below_1": record["expected"]["largest_eta_below_1"],
              **{f"quantile_at_most_{lv:g}": largest_eta(quantile, lv)
                 for lv in LEVELS},
              **{f"expected_at_most_{lv:g}": largest_eta(expected, lv)
                 for lv in LEVELS}},
          "certificate": str(out / f"certify-N{n}" / record["certificate"]),
      }
    study["runs"][str(n)] = entry
    print(f"N = {n}:")
    for name, m in entry["models"].items():
      print(f"  {name}: mean {m['accuracy_summary']['mean']:.4f}, U "
            f"{m['upper_mean']:.4f}, largest eta {m['largest_eta']}")
    write(study, pathlib.Path(args.results), args.test_size)


def write(study, results_dir, test_size):
  """results.json and certificates.png for the runs done so far."""
  runs.write_json(results_dir / "results.json", study)
  curves, expected = {}, {}
  for n, entry in study["runs"].items():
    for name, m in entry["models"].items():
      label = f"{name} N={int(n):,}"
      # Past eta = 0.5 every bound is 1 or abstains at sigma 0.05.
      curves[label] = [[e, q] for e, q, _ in m["curve"] if e <= 0.5]
      expected[label] = [[e, x] for e, _, x in m["curve"] if e <= 0.5]
  first = next(iter(study["runs"].values()))
  _figures.certified_curves(
      results_dir / "certificates.png", curves,
      ylabel="certified learnability",
      title=f"sigma {first['sigma']:g}, q {first['q']:g}, c "
      f"{first['confidence']:g}, {test_size} test images; solid: "
      "quantile, dashed: expected", expected=expected)


if __name__ == "__main__":
  main()
