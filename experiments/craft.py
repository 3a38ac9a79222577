"""Craft protective noise and release the protected dataset.

    python -m experiments.craft --method em-samplewise --epsilon 8/255 \\
        --out runs/em-sw

Writes to ``--out``: ``noise.npz`` (the float noise, the training-subset
indices and labels), ``released.npz`` (the protected uint8 images and their
labels: what a data owner publishes), ``surrogate/`` (the crafting
surrogate's checkpoint, for certification) and ``results.json``. Crafting
checkpoints every round to ``--out/resume``; rerunning the same command after
an interruption resumes from the last finished round.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib

import jax
import numpy as np

from experiments import common
from jaxue import checkpoint
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import train

METHODS = ("em-samplewise", "em-classwise", "pue-classwise", "pue-samplewise",
           "random")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.craft", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--method", default="em-samplewise",
                 help=f"one of {', '.join(METHODS)}")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--epsilon", type=common.parse_fraction, default=8 / 255,
                 help="L-inf budget in [0, 1] units; 8/255 accepted "
                 "(default 8/255)")
  p.add_argument("--train-size", type=common.positive_int, default=None,
                 help="stratified training subset (default: whole set)")
  p.add_argument("--model", default="small_cnn", choices=models.MODELS)
  p.add_argument("--widths", type=common.widths_arg, default=None,
                 help="model widths (default: published; e.g. 16,32,64 "
                 "for CPU)")
  p.add_argument("--max-rounds", type=common.positive_int, default=100)
  p.add_argument("--stop-error", type=float, default=None,
                 help="default: 0.01 sample-wise, 0.1 class-wise")
  p.add_argument("--pgd-steps", type=int, default=None,
                 help="PGD steps per batch (default: 20 sample-wise, 1 "
                 "class-wise)")
  p.add_argument("--train-steps", type=common.positive_int, default=10,
                 help="surrogate steps per round (default 10)")
  p.add_argument("--sweep-batch-size", type=common.positive_int,
                 default=None, help="noise-sweep batch (default 128)")
  pue = p.add_argument_group("PUE (pue-* methods)")
  pue.add_argument("--sigma", type=float, default=0.25,
                   help="sigma_train: the weight-noise level to be robust "
                   "to; use the sigma you will certify at (default 0.25, "
                   "the published value for ResNet-18)")
  pue.add_argument("--sigma-step", type=float, default=None,
                   help="spacing of the noise levels (default sigma / 5)")
  pue.add_argument("--surrogate-draws", type=common.positive_int,
                   default=100, help="weight draws per level and surrogate "
                   "step (default 100)")
  pue.add_argument("--noise-draws", type=common.positive_int, default=10,
                   help="weight draws per level and noise step (default 10)")
  pue.add_argument("--draw-chunk", type=common.positive_int, default=None,
                   help="draws vmapped at once (default all)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-resume", action="store_true",
                 help="ignore an existing checkpoint in --out/resume")
  args = p.parse_args(argv)
  if args.method not in METHODS:
    raise common.UsageError(
        f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
  noise_lib.check_epsilon(args.epsilon)
  if args.method.startswith("pue-"):
    args.sigma_step = args.sigma_step or args.sigma / 5
    pue_config(args).check()
  return args


def pue_config(args: argparse.Namespace) -> noise_lib.PUEConfig:
  return noise_lib.PUEConfig(
      sigma=args.sigma, sigma_step=args.sigma_step,
      surrogate_draws=args.surrogate_draws, noise_draws=args.noise_draws,
      draw_chunk=args.draw_chunk)


def _resume_config(args: argparse.Namespace) -> dict:
  keys = ("method", "dataset", "epsilon", "train_size", "model", "widths",
          "stop_error", "pgd_steps", "train_steps", "sweep_batch_size",
          "seed", "sigma", "sigma_step", "surrogate_draws", "noise_draws")
  return {k: common._jsonable(getattr(args, k)) for k in keys}  # pylint: disable=protected-access


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  out = args.out
  out.mkdir(parents=True, exist_ok=True)
  timer = common.Timer()
  with timer("load"):
    ds = common.load_data(args.dataset, args.data_dir, args.train_size,
                          args.seed)
  x_train, y_train = ds["train"]
  num_classes, shape = ds["num_classes"], ds["image_shape"]
  key = jax.random.key(args.seed)
  init_key, craft_key = jax.random.split(key)
  model_spec = {"name": args.model, "num_classes": num_classes,
                "widths": list(args.widths) if args.widths else None}
  summary: dict = {}
  print(f"{ds['name']}: crafting {args.method} at eps = "
        f"{common.epsilon_label(args.epsilon)} for {len(y_train)} images "
        f"({jax.default_backend()})")

  with timer("craft"):
    if args.method == "random":
      delta = np.asarray(noise_lib.random_noise(craft_key, x_train.shape,
                                                epsilon=args.epsilon))
    else:
      model = models.make_model(**model_spec)
      surrogate = train.create_train_state(init_key, model, shape,
                                            train.make_optimizer(0.1))
      resume_dir = out / "resume"
      mode = args.method.split("-", 1)[1]
      noise_shape = ((num_classes,) if mode == "classwise" else
                     (len(y_train),)) + tuple(shape)
      resume = _load_resume(resume_dir, args, surrogate, noise_shape)
      cfg = noise_lib.EMConfig(
          mode=mode, epsilon=args.epsilon,
          pgd_steps=args.pgd_steps, train_steps=args.train_steps,
          sweep_batch_size=args.sweep_batch_size,
          stop_error=args.stop_error, max_rounds=args.max_rounds)

      def on_round(round_index, state, noise, metrics):
        del metrics
        checkpoint.save_pytree(resume_dir / "state",
                               {"state": _state_arrays(state),
                                "noise": noise})
        checkpoint.write_json(resume_dir / "progress.json", {
            "round": round_index, "config": _resume_config(args),
            "history": crafted_history})

      crafted_history = resume["history"] if resume else None
      crafted_history = crafted_history or {"accuracy": [], "loss": [],
                                            "seconds": []}
      robust = (noise_lib.pue_steps(cfg, pue_config(args))
                if args.method.startswith("pue-") else {})
      result = noise_lib.craft(
          craft_key, resume["state"] if resume else surrogate, x_train,
          y_train, cfg, num_classes=num_classes, **robust,
          noise=resume["noise"] if resume else None,
          start_round=resume["round"] + 1 if resume else 0,
          history=crafted_history, on_round=on_round,
          progress=f"craft {args.method}")
      delta = result.noise
      checkpoint.save_model(out / "surrogate", result.surrogate,
                            model=model_spec, input_shape=shape,
                            extra={"method": args.method,
                                   "epsilon": args.epsilon,
                                   "dataset": ds["name"],
                                   **({"sigma": args.sigma}
                                      if args.method.startswith("pue-")
                                      else {})})
      summary = {"rounds": len(result.history["accuracy"]),
                 "converged": result.converged,
                 "noisy_accuracy": result.history["accuracy"],
                 "round_seconds": result.history["seconds"],
                 "resumed_from_round": resume["round"] + 1 if resume else 0}
      print(f"{summary['rounds']} rounds; surrogate accuracy on noisy data "
            f"{result.history['accuracy'][-1]:.3f} "
            f"({'converged' if result.converged else 'NOT converged'})")

  released = noise_lib.release(x_train, y_train, delta, epsilon=args.epsilon)
  checkpoint.save_npz(out / "noise.npz", noise=delta,
                      train_indices=ds["indices"], labels=y_train)
  checkpoint.save_npz(out / "released.npz", images=released, labels=y_train,
                      train_indices=ds["indices"])
  results = {
      "dataset": ds["name"], "method": args.method,
      "epsilon": args.epsilon,
      "epsilon_label": common.epsilon_label(args.epsilon),
      "train_size": len(y_train), "model": model_spec,
      "noise_shape": list(delta.shape),
      "noise_linf": float(np.abs(delta).max()),
      "craft": summary,
      "wall_seconds": dict(timer.seconds),
      **common.metadata(args),
  }
  checkpoint.write_json(out / "results.json", results)
  print(f"wrote {out}/released.npz, noise.npz, results.json "
        f"({timer.seconds['craft']:.0f} s crafting)")
  return results


def _load_resume(resume_dir: pathlib.Path, args: argparse.Namespace,
                 surrogate: train.TrainState, noise_shape: tuple[int, ...]
                 ) -> dict | None:
  """The state of an interrupted run of the same command, if any."""
  progress = resume_dir / "progress.json"
  if args.no_resume or not progress.exists():
    return None
  saved = json.loads(progress.read_text())
  if saved["config"] != _resume_config(args):
    raise common.UsageError(
        f"{resume_dir} holds a run with a different configuration; use "
        "another --out or pass --no-resume to start over")
  like = {"state": _state_arrays(surrogate),
          "noise": np.zeros(noise_shape, np.float32)}
  restored = checkpoint.restore_pytree(resume_dir / "state", like)
  print(f"resuming after round {saved['round']} ({resume_dir})")
  return {"state": surrogate.replace(**restored["state"]),
          "noise": np.asarray(restored["noise"]), "round": saved["round"],
          "history": saved["history"]}


def _state_arrays(state: train.TrainState) -> dict:
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state}


if __name__ == "__main__":
  main()
