"""EM against PUE: victims, certified (q, eta)-learnability and recovery.

    python -m experiments.pue_certify --out runs/certify

The acceptance experiment of the certification issue, in one command:

1. train a clean model and sweep the smoothing sigma on it (mean and
   q-quantile of the smoothed accuracy), then pick the largest sigma of the
   sweep whose q-quantile stays at or above ``--min-quantile`` (or use
   ``--sigma``);
2. craft class-wise EM and class-wise PUE noise (PUE robust to that sigma)
   from the same initial surrogate and release both datasets;
3. train ``--seeds`` victims on each released dataset;
4. certify both crafting surrogates with N draws at sigma (same q, N, eta
   grid);
5. run the recovery attack (projected SGD on 20% of the clean training
   data) from each method's first victim.

Every stage is cached in ``--out`` (models as checkpoints, results as JSON,
Monte-Carlo draws as .npz), so an interrupted run resumes. Writes
``results.json`` (the layout of experiments/results/certify.json) and
figures.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib

import jax
import numpy as np

from experiments import certify as certify_exp
from experiments import common
from experiments import figures
from jaxue import certify
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import pue as pue_lib
from jaxue import recover
from jaxue import train

METHODS = ("em-classwise", "pue-classwise")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.pue_certify", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--train-size", type=common.positive_int, default=10_000)
  p.add_argument("--test-size", type=common.positive_int, default=None,
                 help="first N test images (default: the whole test set)")
  p.add_argument("--widths", type=common.widths_arg, default=common.CPU_WIDTHS)
  p.add_argument("--epsilon", type=common.parse_fraction, default=8 / 255)
  p.add_argument("--max-rounds", type=common.positive_int, default=60)
  p.add_argument("--epochs", type=common.positive_int, default=8,
                 help="victim and clean-model epochs")
  p.add_argument("--seeds", type=common.positive_int, default=2)
  p.add_argument("--sigma", type=float, default=None,
                 help="smoothing sigma (default: chosen from the sweep)")
  p.add_argument("--sigma-sweep", type=common.float_list,
                 default=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25))
  p.add_argument("--sweep-draws", type=common.positive_int, default=32)
  p.add_argument("--min-quantile", type=float, default=0.7,
                 help="sigma choice: clean q-quantile must stay >= this")
  p.add_argument("--q", type=float, default=0.9)
  p.add_argument("--n", type=common.positive_int, default=1000)
  p.add_argument("--confidence", type=float, default=0.99)
  p.add_argument("--surrogate-draws", type=common.positive_int, default=100)
  p.add_argument("--noise-draws", type=common.positive_int, default=10)
  p.add_argument("--draw-chunk", type=common.positive_int, default=None,
                 help="PUE weight draws vmapped at once (default: 1 on CPU, "
                 "up to 16 on GPU/TPU)")
  p.add_argument("--recovery-etas", type=common.etas_arg,
                 default=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0))
  p.add_argument("--recovery-fraction", type=float, default=0.2)
  p.add_argument("--recovery-epochs", type=common.positive_int, default=10)
  p.add_argument("--chunk-size", type=common.positive_int, default=None)
  common.add_cpu_devices_flag(p)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  noise_lib.check_epsilon(args.epsilon)
  if not 0 < args.q < 1:
    raise common.UsageError(f"--q must be in (0, 1), got {args.q}")
  if args.sigma is not None and args.sigma <= 0:
    raise common.UsageError(f"--sigma must be > 0, got {args.sigma}")
  return args


class Stages:
  """Caches each stage's JSON result and model checkpoints under ``out``."""

  def __init__(self, out: pathlib.Path):
    self.out = out

  def json(self, name: str, compute):
    path = self.out / "stages" / f"{name}.json"
    if path.exists():
      return json.loads(path.read_text())
    value = compute()
    checkpoint.write_json(path, value)
    return value

  def model(self, name: str, compute, *, model_spec, input_shape, extra):
    path = self.out / "models" / name
    if (path / "model.json").exists():
      return checkpoint.load_model(path)[1]
    state = compute()
    checkpoint.save_model(path, state, model=model_spec,
                          input_shape=input_shape, extra=extra)
    return state.variables


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  common.request_cpu_devices(args)
  mesh = common.draw_mesh()
  out = args.out
  stages = Stages(out)
  timer = common.Timer()
  key = jax.random.key(args.seed)
  k_clean, k_craft, k_victim, k_cert, k_recover = jax.random.split(key, 5)

  with timer("load"):
    ds = common.load_data(args.dataset, args.data_dir, args.train_size,
                          args.seed)
    full_x, full_y = data_lib.load(args.dataset, "train", args.data_dir)
  x_train, y_train = ds["train"]
  x_test, y_test = ds["test"]
  if args.test_size:
    x_test, y_test = x_test[: args.test_size], y_test[: args.test_size]
  test = (x_test, y_test)
  shape, num_classes = ds["image_shape"], ds["num_classes"]
  model_spec = {"name": "small_cnn", "num_classes": num_classes,
                "widths": list(args.widths)}
  model = models.make_model(**model_spec)
  print(f"{ds['name']}: {len(y_train)} training images, {len(y_test)} test "
        f"images, small CNN {args.widths}, eps "
        f"{common.epsilon_label(args.epsilon)}, {jax.default_backend()}")

  # 1. A clean model and the sigma sweep on it.
  with timer("clean_model"):
    clean = stages.model(
        "clean", lambda: train.train_victim(
            k_clean, model, x_train, y_train, test=test,
            epochs=args.epochs, progress="clean model")[0],
        model_spec=model_spec, input_shape=shape, extra={"method": "clean"})
  with timer("sigma_sweep"):
    sweep = stages.json("sigma_sweep", lambda: {
        str(s): certify_exp.summarize(certify.sample_accuracies(
            jax.random.fold_in(k_cert, 10_000 + i), model.apply, clean,
            x_test, y_test, sigma=s, num_draws=args.sweep_draws,
            chunk_size=args.chunk_size, mesh=mesh), args.q)
        for i, s in enumerate(args.sigma_sweep)})
  rows = [(s, f"{v['mean']:.3f}", f"{v['q_quantile']:.3f}",
           f"{v['min']:.3f}") for s, v in sweep.items()]
  print(f"\nsmoothed accuracy of the clean model ({args.sweep_draws} draws "
        "each):")
  common.print_table(rows, ("sigma", "mean", f"{args.q}-quantile", "min"))
  sigma = args.sigma
  if sigma is None:
    ok = [float(s) for s, v in sweep.items()
          if v["q_quantile"] >= args.min_quantile]
    if not ok:
      raise common.UsageError(
          f"no sigma in {args.sigma_sweep} keeps the clean model's "
          f"{args.q}-quantile >= {args.min_quantile}; pass --sigma")
    sigma = max(ok)
  print(f"certifying at sigma = {sigma}")

  # 2. Craft EM and PUE from the same initial surrogate.
  released, craft_info = {}, {}
  for method in METHODS:
    with timer(f"craft_{method}"):
      mode = method.split("-", 1)[1]
      cfg = noise_lib.EMConfig(mode=mode, epsilon=args.epsilon,
                               max_rounds=args.max_rounds)
      robust = {}
      if method.startswith("pue"):
        robust = pue_lib.pue_steps(cfg, pue_lib.PUEConfig(
            sigma=sigma, sigma_step=sigma / 5,
            surrogate_draws=args.surrogate_draws,
            noise_draws=args.noise_draws, draw_chunk=args.draw_chunk))
      noise_path = out / "noise" / f"{method}.npz"

      def craft(cfg=cfg, robust=robust, method=method,
                noise_path=noise_path):
        init = train.create_train_state(jax.random.fold_in(k_craft, 0),
                                        model, shape,
                                        train.make_optimizer(0.1))
        result = noise_lib.craft(jax.random.fold_in(k_craft, 1), init,
                                 x_train, y_train, cfg,
                                 num_classes=num_classes, **robust,
                                 progress=f"craft {method}")
        checkpoint.save_npz(noise_path, noise=result.noise)
        checkpoint.write_json(out / "stages" / f"craft_{method}.json", {
            "rounds": len(result.history["accuracy"]),
            "converged": result.converged,
            "noisy_accuracy": result.history["accuracy"],
            "robust_rounds": int(sum(result.history.get("robust", [])))})
        return result.surrogate

      stages.model(f"surrogate-{method}", craft, model_spec=model_spec,
                   input_shape=shape,
                   extra={"method": method, "epsilon": args.epsilon,
                          "sigma": sigma if method.startswith("pue")
                          else None})
      craft_info[method] = json.loads(
          (out / "stages" / f"craft_{method}.json").read_text())
      with np.load(noise_path) as f:
        released[method] = noise_lib.release(
            x_train, y_train, f["noise"], epsilon=args.epsilon,
            mode=common.noise_mode(method))
    print(f"{method}: {craft_info[method]['rounds']} rounds "
          f"({craft_info[method]['robust_rounds']} robust), converged "
          f"{craft_info[method]['converged']}")

  # 3. Victims.
  victims = {}
  for i, (method, images) in enumerate(
      [("clean", x_train)] + list(released.items())):
    with timer(f"victims_{method}"):
      def fit_victims(i=i, method=method, images=images):
        state, histories = train.train_victims(
            jax.random.fold_in(k_victim, i), model, images, y_train,
            seeds=args.seeds, test=test, epochs=args.epochs,
            progress=f"victim {method}")
        curves = [h["test_accuracy"] for h in histories]
        finals = [curve[-1] for curve in curves]
        if method != "clean":
          checkpoint.save_model(out / "models" / f"victim-{method}", state,
                                model=model_spec, input_shape=shape,
                                extra={"method": method})
        return {"accuracy": float(np.mean(finals)), "per_seed": finals,
                "curves": curves}
      victims[method] = stages.json(f"victims_{method}", fit_victims)
    print(f"victim on {method}: {victims[method]['accuracy']:.3f} "
          f"{victims[method]['per_seed']}")

  # 4. Certify the crafting surrogates.
  certified = {}
  for method in METHODS:
    with timer(f"certify_{method}"):
      _, variables, _ = checkpoint.load_model(out / "models" /
                                              f"surrogate-{method}")
      certified[method] = certify_exp.certify_checkpoint(
          k_cert, model, variables, x_test, y_test, sigma=sigma,
          num_draws=args.n, q=args.q, confidence=args.confidence,
          path=out / "draws" / f"{method}.npz", chunk_size=args.chunk_size,
          mesh=mesh, name=method)

  # 5. Recovery from each method's first victim.
  recovery_idx = data_lib.stratified_subset(
      jax.random.fold_in(k_recover, 0), full_y, args.recovery_fraction,
      num_classes=num_classes)
  recovery_set = (full_x[recovery_idx], full_y[recovery_idx])
  recovered = {}
  for method in METHODS:
    with timer(f"recover_{method}"):
      def run_recovery(method=method):
        _, theta0, _ = checkpoint.load_model(out / "models" /
                                             f"victim-{method}")
        curve = recover.recovery_curve(
            jax.random.fold_in(k_recover, 1), model, theta0, recovery_set,
            test, etas=args.recovery_etas, epochs=args.recovery_epochs,
            progress=True)
        return {"theta0_accuracy": train.evaluate(model.apply, theta0,
                                                  *test),
                "curve": [[float(e), float(a)] for e, a in curve]}
      recovered[method] = stages.json(f"recover_{method}", run_recovery)

  curves = {m: certified[m]["curve"].to_json()["curve"] for m in METHODS}
  figures.line_plot(out / "certified_learnability.png", curves,
                    xlabel="eta", ylabel="certified learnability",
                    title=f"sigma={sigma}, q={args.q}, N={args.n}, "
                    f"c={args.confidence}", logx=True)
  figures.line_plot(out / "recovery.png",
                    {m: recovered[m]["curve"] for m in METHODS},
                    xlabel="eta (L2 radius)",
                    ylabel="clean test accuracy after recovery", logx=True)
  results = {
      "sigma": sigma, "q": args.q, "n": args.n,
      "confidence": args.confidence, "mode": "per-eta",
      "epsilon": args.epsilon, "train_size": len(y_train),
      "test_size": len(y_test),
      "curves": curves,
      "largest_certified_eta": {
          m: certified[m]["curve"].largest_certified_eta for m in METHODS},
      "victim_accuracy": {m: v["accuracy"] for m, v in victims.items()},
      "victim_accuracy_per_seed": {m: v["per_seed"]
                                   for m, v in victims.items()},
      "recovery": {m: recovered[m]["curve"] for m in METHODS},
      "recovery_theta0_accuracy": {m: recovered[m]["theta0_accuracy"]
                                   for m in METHODS},
      "accuracy_summary": {m: certified[m]["summary"] for m in METHODS},
      "draws_per_second": {m: certified[m]["draws_per_second"]
                           for m in METHODS},
      "sigma_sweep": {"clean": sweep},
      "craft": craft_info,
      "wall_seconds": timer.seconds,
      **common.metadata(args),
  }
  checkpoint.write_json(out / "results.json", results)
  rows = [(f"{e:g}",) + tuple("abstain" if v is None else f"{v:.3f}"
                              for v in vals)
          for e, *vals in zip(certified[METHODS[0]]["curve"].etas,
                              *(certified[m]["curve"].values
                                for m in METHODS))]
  print()
  common.print_table(rows, ("eta",) + METHODS)
  print(f"victims: {results['victim_accuracy']}")
  print(f"recovery: {results['recovery']}")
  print(f"wrote {out / 'results.json'}")
  return results


if __name__ == "__main__":
  main()
