"""Craft protective noise and release the protected dataset.

    python -m experiments.craft --method em-samplewise --epsilon 8/255 \\
        --out runs/em-sw
    python -m experiments.craft --method rem --epsilon 16/255 --out runs/rem
    python -m experiments.craft --method error-max --out runs/error-max
    python -m experiments.craft --method lsp --l2-epsilon 1.3 --out runs/lsp

Writes to ``--out``: ``noise.npz`` (the float noise, the training-subset
indices and labels), ``released.npz`` (the protected uint8 images and their
labels: what a data owner publishes), ``surrogate/`` (the crafting
surrogate's checkpoint, for certification; not for the model-free methods)
and ``results.json``. EM/PUE crafting checkpoints every round, REM every
``--checkpoint-every`` surrogate steps (or regeneration batches), to
``--out/resume``; rerunning the same command after an interruption resumes
from the last checkpoint.

Methods: ``em-*`` / ``pue-*`` (error-minimizing, Huang et al. 2021; provably
unlearnable, Wang et al. 2025), ``rem`` (robust error-minimizing, Fu et al.
2022, sample-wise, rho_a = ``--rho-a``, default eps / 2), ``error-max`` and
``error-max-targeted`` (PGD against a clean surrogate trained for
``--clean-epochs``, with the dataset's standard augmentation unless
``--no-surrogate-augment``; targeted to (y + 1) mod C), ``random``.

Model-free baselines (no surrogate; ``jaxue.baselines``), whose budgets are
not the L-inf ``--epsilon``: ``ops`` (One-Pixel Shortcut, Wu et al. 2023:
one pixel per image), ``ar`` (autoregressive perturbations, Sandoval-Segura
et al. 2022: L2 norm ``--l2-epsilon``, default 1.0) and ``lsp`` (linearly
separable patches, Yu et al. 2022: L2 norm ``--l2-epsilon``, default
sqrt(H*W*C) * 6/255, 1.30 on CIFAR-10, with ``--patch-size`` patches,
default side / 4). results.json records their budget (``l2_epsilon`` or
``pixels_changed``) and ``noise_l2_max``; ``epsilon`` is null for them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib

import jax
import numpy as np

from experiments import common
from jaxue import baselines
from jaxue import checkpoint
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import pue as pue_lib
from jaxue import rem as rem_lib
from jaxue import train

METHODS = ("em-samplewise", "em-classwise", "pue-classwise", "pue-samplewise",
           "rem", "error-max", "error-max-targeted", "random", "ops", "ar",
           "lsp")
# Methods crafted without a surrogate.
MODEL_FREE = ("random", "ops", "ar", "lsp")
# Methods whose budget is not an L-inf ball (L2 for ar/lsp, L0 for ops).
NOT_LINF = ("ops", "ar", "lsp")


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
                 help="PGD steps per batch (default: 20 sample-wise and "
                 "error-max, 1 class-wise)")
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
                   help="draws vmapped at once (default: 1 on CPU, "
                   "up to 16 on GPU/TPU)")
  pue.add_argument("--reference-loss-scale", action="store_true",
                   help="the reference code's surrogate steps of 1/T of the "
                   "mean gradient per level (jaxue.pue.PUEConfig)")
  add_rem_arguments(p)
  em = p.add_argument_group("error-max (--method error-max[-targeted])")
  em.add_argument("--clean-epochs", type=common.positive_int, default=10,
                  help="epochs of the clean surrogate (default 10)")
  em.add_argument("--surrogate-augment", action=argparse.BooleanOptionalAction,
                  default=True,
                  help="train the clean surrogate with the dataset's standard "
                  "augmentation (random crop, plus flips on RGB data), as "
                  "the reference trains the model it attacks (default: on)")
  free = p.add_argument_group("model-free baselines (--method ops/ar/lsp)")
  free.add_argument("--l2-epsilon", type=common.parse_fraction, default=None,
                    help="L2 norm of each AR / LSP perturbation in [0, 1] "
                    "units (default: 1.0 for ar, sqrt(H*W*C) * 6/255 for "
                    "lsp)")
  free.add_argument("--patch-size", type=common.positive_int, default=None,
                    help="LSP patch side; must divide the image sides "
                    "(default: side / 4)")
  free.add_argument("--ar-min-response", type=common.positive_float,
                    default=None,
                    help="AR process distinctness bound "
                    "(baselines.ar_coefficients; default: 10, the published "
                    "CIFAR-10 bound, for up to 10 classes, else 3, the "
                    "CIFAR-100 one)")
  p.add_argument("--seed", type=int, default=0)
  common.add_data_parallel_flag(p)
  p.add_argument("--no-resume", action="store_true",
                 help="ignore an existing checkpoint in --out/resume")
  args = p.parse_args(argv)
  if args.method not in METHODS:
    raise common.UsageError(
        f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
  noise_lib.check_epsilon(args.epsilon)
  if args.ar_min_response is not None and args.method != "ar":
    raise common.UsageError("--ar-min-response applies to --method ar only")
  if args.l2_epsilon is not None:
    if args.method not in ("ar", "lsp"):
      raise common.UsageError("--l2-epsilon applies to --method ar and lsp "
                              "only")
    if not args.l2_epsilon > 0:
      raise common.UsageError(
          f"--l2-epsilon must be > 0, got {args.l2_epsilon}")
  if args.patch_size is not None and args.method != "lsp":
    raise common.UsageError("--patch-size applies to --method lsp only")
  if args.method.startswith("pue-"):
    args.sigma_step = args.sigma_step or args.sigma / 5
    pue_config(args).check()
  if args.method == "rem":
    args.rho_a = args.epsilon / 2 if args.rho_a is None else args.rho_a
    args.lr_decay_every = args.lr_decay_every or max(
        1, round(0.4 * args.rem_train_steps))
    rem_config(args).resolved()
  return args


def rem_config(args: argparse.Namespace) -> rem_lib.REMConfig:
  """The `REMConfig` of the REM flags (rho_u is --epsilon)."""
  return rem_lib.REMConfig(
      rho_u=args.epsilon, rho_a=args.rho_a, noise_steps=args.noise_steps,
      eot_draws=args.eot_draws, attack_steps=args.attack_steps,
      train_steps=args.rem_train_steps, lr_decay_every=args.lr_decay_every,
      checkpoint_every=args.checkpoint_every,
      sweep_batch_size=args.sweep_batch_size)


# The REM flags' destinations, in the order `add_rem_arguments` adds them.
REM_FLAGS = ("rho_a", "rem_train_steps", "lr_decay_every", "noise_steps",
             "eot_draws", "attack_steps", "checkpoint_every")


def add_rem_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the REM flags (shared with `experiments.table`)."""
  rem = parser.add_argument_group(
      "REM (--method rem; defaults: Fu et al. 2022)")
  rem.add_argument("--rho-a", type=common.parse_fraction, default=None,
                   help="adversarial radius rho_a (default eps / 2; eps is "
                   "rho_u)")
  rem.add_argument("--rem-train-steps", type=common.nonnegative_int,
                   default=5000, help="surrogate steps (default 5000)")
  rem.add_argument("--lr-decay-every", type=common.positive_int,
                   default=None, help="learning rate x0.1 every this many "
                   "steps (default 2/5 of --rem-train-steps: 2000 of 5000)")
  rem.add_argument("--noise-steps", type=common.nonnegative_int, default=10,
                   help="PGD steps on the noise per batch (default 10)")
  rem.add_argument("--eot-draws", type=common.positive_int, default=5,
                   help="transformation draws K per noise step (default 5)")
  rem.add_argument("--attack-steps", type=common.nonnegative_int, default=10,
                   help="inner PGD ascent steps (default 10)")
  rem.add_argument("--checkpoint-every", type=common.positive_int,
                   default=200, help="surrogate steps per checkpoint "
                   "(default 200)")


def pue_config(args: argparse.Namespace) -> pue_lib.PUEConfig:
  return pue_lib.PUEConfig(
      sigma=args.sigma, sigma_step=args.sigma_step,
      surrogate_draws=args.surrogate_draws, noise_draws=args.noise_draws,
      draw_chunk=args.draw_chunk,
      reference_loss_scale=args.reference_loss_scale)


def _resume_config(args: argparse.Namespace) -> dict:
  keys = ("method", "dataset", "epsilon", "train_size", "model", "widths",
          "stop_error", "pgd_steps", "train_steps", "sweep_batch_size",
          "seed", "sigma", "sigma_step", "surrogate_draws", "noise_draws")
  if args.method == "rem":
    keys += REM_FLAGS
  if args.method.startswith("pue-") and args.reference_loss_scale:
    keys += ("reference_loss_scale",)  # Only when set: older runs resume.
  return {k: common.jsonable(getattr(args, k)) for k in keys}


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
  arrays: dict = {}
  budget, budget_label = _budget(args, shape)
  print(f"{ds['name']}: crafting {args.method} at {budget_label} for "
        f"{len(y_train)} images ({jax.default_backend()})")

  with timer("craft"), common.device_scope(args):
    if args.method in MODEL_FREE:
      delta, summary, arrays = _craft_model_free(args, ds, craft_key, budget)
    else:
      craft_fn = {"rem": _craft_rem, "error-max": _craft_error_max,
                  "error-max-targeted": _craft_error_max}.get(args.method,
                                                              _craft_em)
      delta, surrogate, summary = craft_fn(
          args, ds, models.make_model(**model_spec), init_key, craft_key)
      extra = {"method": args.method, "epsilon": args.epsilon,
               "dataset": ds["name"]}
      extra.update({"sigma": args.sigma} if args.method.startswith("pue-")
                   else {"rho_a": args.rho_a} if args.method == "rem"
                   else {})
      checkpoint.save_model(out / "surrogate", surrogate, model=model_spec,
                            input_shape=shape, extra=extra)

  linf = args.method not in NOT_LINF
  released = noise_lib.release(
      x_train, y_train, delta, epsilon=args.epsilon if linf else None,
      mode=common.noise_mode(args.method))
  checkpoint.save_npz(out / "noise.npz", noise=delta,
                      train_indices=ds["indices"], labels=y_train, **arrays)
  checkpoint.save_npz(out / "released.npz", images=released, labels=y_train,
                      train_indices=ds["indices"])
  results = {
      "dataset": ds["name"], "method": args.method,
      "epsilon": args.epsilon if linf else None,
      "epsilon_label": (common.epsilon_label(args.epsilon) if linf
                        else budget_label),
      **budget,
      "train_size": len(y_train),
      "model": None if args.method in NOT_LINF else model_spec,
      "noise_shape": list(delta.shape),
      "noise_linf": float(np.abs(delta).max()),
      "noise_l2_max": float(np.sqrt(np.square(
          delta.astype(np.float64)).reshape(len(delta), -1).sum(1)).max()),
      "craft": summary,
      "wall_seconds": dict(timer.seconds),
      **common.metadata(args),
  }
  checkpoint.write_json(out / "results.json", results)
  print(f"wrote {out}/released.npz, noise.npz, results.json "
        f"({timer.seconds['craft']:.0f} s crafting)")
  return results


def _budget(args: argparse.Namespace, shape) -> tuple[dict, str]:
  """The results.json budget entries of a method, and its label."""
  if args.method == "ops":
    return {"pixels_changed": 1}, "1 pixel per image (L0)"
  if args.method in ("ar", "lsp"):
    default = (1.0 if args.method == "ar"
               else baselines.lsp_default_epsilon(shape))
    l2 = args.l2_epsilon if args.l2_epsilon is not None else default
    return {"l2_epsilon": l2}, f"L2 eps = {l2:.4g}"
  return {}, f"eps = {common.epsilon_label(args.epsilon)}"


def ar_min_response(args: argparse.Namespace, num_classes: int) -> float:
  """The AR distinctness bound of a run: ``--ar-min-response`` or the
  published one for the class count."""
  return (args.ar_min_response
          or baselines.ar_default_min_response(num_classes))


def _craft_model_free(args, ds, craft_key, budget):
  """Random noise and the OPS / AR / LSP baselines: no surrogate."""
  x_train, y_train = ds["train"]
  num_classes = ds["num_classes"]
  summary, arrays = {}, {}
  if args.method == "random":
    result = noise_lib.uniform_noise(craft_key, x_train, y_train,
                                     num_classes=num_classes,
                                     epsilon=args.epsilon)
  elif args.method == "ops":
    result = baselines.one_pixel_shortcut_noise(x_train, y_train,
                                                num_classes=num_classes)
    info = result.info
    summary = {"positions": info["positions"].tolist(),
               "values": info["values"].tolist(),
               "scores": info["scores"].tolist()}
    arrays = {"ops_positions": info["positions"],
              "ops_values": info["values"]}
  elif args.method == "ar":
    result = baselines.autoregressive_noise(
        craft_key, x_train, y_train, num_classes=num_classes,
        epsilon=budget["l2_epsilon"],
        min_response=ar_min_response(args, num_classes))
    summary = {"window": result.info["window"],
               "min_response": result.info["min_response"]}
    arrays = {"ar_coefficients": result.info["coefficients"]}
  else:
    result = baselines.linear_separable_noise(
        craft_key, x_train, y_train, num_classes=num_classes,
        epsilon=budget["l2_epsilon"], patch_size=args.patch_size or None)
    summary = {"patch_size": result.info["patch_size"]}
  return result.noise, summary, arrays


def _craft_em(args, ds, model, init_key, craft_key):
  """EM / PUE crafting with a checkpoint after every round."""
  x_train, y_train = ds["train"]
  num_classes, shape = ds["num_classes"], ds["image_shape"]
  surrogate = train.create_train_state(init_key, model, shape,
                                        train.make_optimizer(0.1))
  resume_dir = args.out / "resume"
  mode = args.method.split("-", 1)[1]
  noise_shape = ((num_classes,) if mode == "classwise" else
                 (len(y_train),)) + tuple(shape)
  resume = _load_resume(resume_dir, args, surrogate, noise_shape)
  cfg = noise_lib.EMConfig(
      mode=mode, epsilon=args.epsilon,
      pgd_steps=args.pgd_steps, train_steps=args.train_steps,
      sweep_batch_size=args.sweep_batch_size,
      stop_error=args.stop_error, max_rounds=args.max_rounds)
  crafted_history = resume["history"] if resume else None
  crafted_history = crafted_history or {"accuracy": [], "loss": [],
                                        "seconds": []}

  def on_round(round_index, state, noise, metrics):
    del metrics
    _save_resume(resume_dir, args, round_index, state, noise,
                 crafted_history)

  robust = (pue_lib.pue_steps(cfg, pue_config(args))
            if args.method.startswith("pue-") else {})
  result = noise_lib.craft(
      craft_key, resume["state"] if resume else surrogate, x_train,
      y_train, cfg, num_classes=num_classes, **robust,
      noise=resume["noise"] if resume else None,
      start_round=resume["round"] + 1 if resume else 0,
      history=crafted_history, on_round=on_round,
      progress=f"craft {args.method}")
  summary = {"rounds": len(result.history["accuracy"]),
             "converged": result.converged,
             "noisy_accuracy": result.history["accuracy"],
             "round_seconds": result.history["seconds"],
             "resumed_from_round": resume["round"] + 1 if resume else 0}
  print(f"{summary['rounds']} rounds; surrogate accuracy on noisy data "
        f"{result.history['accuracy'][-1]:.3f} "
        f"({'converged' if result.converged else 'NOT converged'})")
  return result.noise, result.surrogate, summary


def _craft_rem(args, ds, model, init_key, craft_key):
  """REM crafting with a checkpoint every ``--checkpoint-every`` units."""
  x_train, y_train = ds["train"]
  cfg = rem_config(args)
  surrogate = train.create_train_state(init_key, model, ds["image_shape"],
                                        cfg.optimizer())
  resume_dir = args.out / "resume"
  resume = _load_resume(resume_dir, args, surrogate, x_train.shape,
                        unit="step")

  def on_block(step, state, noise, history):
    _save_resume(resume_dir, args, step, state, noise, history)

  cost = rem_lib.rem_cost(cfg)
  print(f"REM: {cfg.train_steps} surrogate steps of ~"
        f"{cost['per_train_step']} forward/backward passes, then "
        f"{rem_lib.total_units(cfg, len(y_train)) - cfg.train_steps} "
        "regeneration batches")
  result = rem_lib.robust_error_minimizing_noise(
      craft_key, resume["state"] if resume else surrogate, x_train, y_train,
      num_classes=ds["num_classes"], cfg=cfg,
      noise=resume["noise"] if resume else None,
      start_step=resume["round"] if resume else 0,
      history=resume["history"] if resume else None, on_block=on_block,
      progress="craft rem")
  trained = [a for a in result.history["accuracy"] if a is not None]
  summary = {"train_steps": cfg.train_steps, "rho_a": cfg.rho_a,
             "passes_per_step": cost["per_train_step"],
             "adversarial_train_accuracy": trained,
             "block_steps": result.history["step"],
             "block_seconds": result.history["seconds"],
             "craft_seconds_total": round(sum(result.history["seconds"]), 1),
             "resumed_from_step": resume["round"] if resume else 0}
  return result.noise, result.surrogate, summary


def _craft_error_max(args, ds, model, init_key, craft_key):
  """A clean surrogate, then sample-wise PGD against it."""
  x_train, y_train = ds["train"]
  del craft_key  # The attack starts from zero: only the surrogate is random.
  result = noise_lib.error_max_from_clean(
      init_key, model, x_train, y_train, test=ds["test"],
      num_classes=ds["num_classes"], epsilon=args.epsilon,
      clean_epochs=args.clean_epochs,
      surrogate_augment=args.surrogate_augment,
      steps=args.pgd_steps if args.pgd_steps is not None else 20,
      targeted=args.method == "error-max-targeted")
  print("clean surrogate: test accuracy "
        f"{result.info['surrogate_test_accuracy']:.3f}")
  summary = {k: v for k, v in result.info.items()
             if k not in ("method", "mode")}
  return result.noise, result.surrogate, summary


def _save_resume(resume_dir: pathlib.Path, args: argparse.Namespace,
                 position: int, state: train.TrainState, noise: np.ndarray,
                 history: dict) -> None:
  checkpoint.save_pytree(resume_dir / "state",
                         {"state": _state_arrays(state), "noise": noise})
  checkpoint.write_json(resume_dir / "progress.json", {
      "round": position, "config": _resume_config(args),
      "history": history})


def _load_resume(resume_dir: pathlib.Path, args: argparse.Namespace,
                 surrogate: train.TrainState, noise_shape: tuple[int, ...],
                 unit: str = "round") -> dict | None:
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
  print(f"resuming after {unit} {saved['round']} ({resume_dir})")
  return {"state": surrogate.replace(**restored["state"]),
          "noise": np.asarray(restored["noise"]), "round": saved["round"],
          "history": saved["history"]}


def _state_arrays(state: train.TrainState) -> dict:
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state}


if __name__ == "__main__":
  main()
