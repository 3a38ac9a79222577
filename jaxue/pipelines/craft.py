"""Craft protective noise and release the protected dataset.

    jaxue craft --method em-samplewise --epsilon 8/255 --out runs/em-sw
    jaxue craft --method pue-classwise --sigma 0.05 --out runs/pue
    jaxue craft --method rem --epsilon 16/255 --out runs/rem
    jaxue craft --method lsp --l2-epsilon 1.3 --out runs/lsp

Writes to the run directory ``--out``:

* ``release.npz``: what a data owner publishes: the protected uint8
  ``images``, their int32 ``labels`` and ``train_indices`` (their positions
  in the clean training set); its record names the method, mode, budget,
  dataset, training-subset size and seed, and the fingerprint of the clean
  training subset it was made from (so `jaxue evaluate` can verify it).
* ``noise.npz``: the float ``noise`` with ``train_indices`` and ``labels``
  (plus OPS's ``ops_positions``/``ops_values``, AR's ``ar_coefficients``).
* ``models/surrogate/``: the crafting surrogate (`jaxue.runs.save_model`),
  for certification and recovery; absent for the model-free methods.
* ``results.json``: budget, noise norms, the crafting history, timings.
* ``craft/``: the stage's record; while crafting, ``craft/ckpt/`` holds a
  kill-safe checkpoint after every EM/PUE/SALM round, every
  ``--checkpoint-every`` REM units and every ``--retrain-every``
  Bayes-error steps. Rerunning the same command resumes from
  it, bit for bit; a finished run returns its results at once.

Methods: ``em-*`` / ``pue-*`` (error-minimizing, Huang et al. 2021;
provably unlearnable, Wang et al. 2025, robust to weight noise up to
``--sigma``), ``rem`` (robust error-minimizing, Fu et al. 2022, rho_a =
``--rho-a``, default eps / 2), ``error-max`` and ``error-max-targeted``
(PGD against a clean surrogate trained for ``--clean-epochs``, with the
dataset's standard augmentation unless ``--no-surrogate-augment``; targeted
to (y + 1) mod C), ``random`` (uniform in the L-inf ball).

``salm-samplewise`` (sparse local masking, Sun et al. 2024, reconstructed:
EM whose PGD step moves only each image's top ``--salm-rho`` pixels, chosen
by ``--salm-mask``; it takes the EM flags and resumes as EM does) and
``bayes-error`` (Zhang et al. 2025: sign ascent of a kernel Bayes-error
estimate through ``--feature-map`` features, ``--ascent-steps`` steps,
checkpointed every ``--retrain-every``); ``uge`` (ungeneralizable
examples, Ye & Wang 2024, reconstructed from the abstract: a generator
trained against the authorised ``--model`` with gradient matching, a
feature distance in a frozen ``--encoder-model`` trained on a disjoint
clean split of ``--encoder-size`` images, and an undistillation term;
``encoder/`` keeps the encoder, ``models/surrogate/`` the authorised
network; checkpointed every round).

Model-free baselines, whose budgets are not the L-inf ``--epsilon``:
``ops`` (One-Pixel Shortcut, Wu et al. 2023: one pixel per image), ``ar``
(autoregressive perturbations, Sandoval-Segura et al. 2022: L2 norm
``--l2-epsilon``, default 1.0) and ``lsp`` (linearly separable patches, Yu
et al. 2022: L2 norm ``--l2-epsilon``, default sqrt(H*W*C) * 6/255, with
``--patch-size`` patches, default side / 4). results.json records their
budget (``l2_epsilon`` or ``pixels_changed``) and ``noise_l2_max``;
``epsilon`` is null for them.

A method's flags apply to that method only: giving one with another method
is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from jaxue import baselines
from jaxue import data as data_lib
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import pue as pue_lib
from jaxue import rem as rem_lib
from jaxue import runs
from jaxue import bayes_error as bayes_lib
from jaxue import salm as salm_lib
from jaxue import train
from jaxue import uge as uge_lib
from jaxue.pipelines import _common
from jaxue.pipelines import options
from jaxue.pipelines.options import option

METHODS = ("em-samplewise", "em-classwise", "pue-classwise", "pue-samplewise",
           "rem", "error-max", "error-max-targeted", "random", "ops", "ar",
           "lsp", "salm-samplewise", "bayes-error", "uge")
# The methods crafted by jaxue.noise.craft (SALM: EM with a masked step).
EM_PUE = ("em-samplewise", "em-classwise", "pue-classwise", "pue-samplewise",
          "salm-samplewise")
SALM = ("salm-samplewise",)
BAYES = ("bayes-error",)
UGE = ("uge",)
PUE = ("pue-classwise", "pue-samplewise")
ERROR_MAX = ("error-max", "error-max-targeted")
# Methods crafted without a surrogate.
MODEL_FREE = ("random", "ops", "ar", "lsp")
# Methods whose budget is not an L-inf ball (L2 for ar/lsp, L0 for ops).
NOT_LINF = ("ops", "ar", "lsp")
# The methods each method-specific flag applies to.
APPLIES_TO = {
    "max_rounds": EM_PUE, "stop_error": EM_PUE, "train_steps": EM_PUE,
    "pgd_steps": EM_PUE + ERROR_MAX, "sweep_batch_size": EM_PUE + ("rem",),
    "sigma_step": PUE, "surrogate_draws": PUE, "noise_draws": PUE,
    "draw_chunk": PUE, "reference_loss_scale": PUE,
    "rho_a": ("rem",), "rem_train_steps": ("rem",),
    "lr_decay_every": ("rem",), "noise_steps": ("rem",),
    "eot_draws": ("rem",), "attack_steps": ("rem",),
    "checkpoint_every": ("rem",),
    "clean_epochs": ERROR_MAX, "surrogate_augment": ERROR_MAX,
    "l2_epsilon": ("ar", "lsp"), "patch_size": ("lsp",),
    "ar_min_response": ("ar",),
    "salm_rho": SALM, "salm_mask": SALM, "salm_restrict": SALM,
    "ascent_steps": BAYES, "feature_map": BAYES, "retrain_every": BAYES,
    "feature_epochs": BAYES, "kernel_sigma": BAYES, "bayes_init": BAYES,
    "encoder_model": UGE, "encoder_widths": UGE, "encoder_size": UGE,
    "encoder_epochs": UGE, "uge_rounds": UGE, "uge_steps": UGE,
}
_POS = options.optional(options.positive_int)
_NONNEG = options.optional(options.nonnegative_int)


def _stop_error(value: Any) -> str | None:
  if value is None or (options.unit_interval(value) is None and value < 1):
    return None
  return f"must be a number in [0, 1), got {value!r}"


def _fraction(value: Any) -> str | None:
  if options.unit_interval(value) is None and value > 0:
    return None
  return f"must be a number in (0, 1], got {value!r}"


@dataclasses.dataclass(frozen=True)
class Config:
  """The settings of `run` (the flags of ``jaxue craft``)."""

  method: str = option("em-samplewise", "crafting method", choices=METHODS)
  dataset: str = options.dataset()
  data_dir: str | None = options.data_dir()
  train_size: int | None = options.train_size()
  test_size: int | None = options.test_size()
  model: str = options.model()
  widths: tuple[int, ...] | None = options.widths()
  epsilon: float | None = options.epsilon()
  # EM / PUE.
  max_rounds: int | None = option(
      None, "EM/PUE: give up after this many rounds (default 100)",
      parse=int, check=_POS)
  stop_error: float | None = option(
      None, "EM/PUE: stop once the surrogate's accuracy on the noisy data "
      "reaches 1 - this (default 0.01 sample-wise, 0.1 class-wise)",
      parse=options.parse_fraction, check=_stop_error)
  pgd_steps: int | None = option(
      None, "EM/PUE/error-max: PGD steps per batch (default 20 sample-wise "
      "and error-max, 1 class-wise)", parse=int, check=_NONNEG)
  train_steps: int | None = option(
      None, "EM/PUE: surrogate steps per round (default 10)", parse=int,
      check=_POS)
  sweep_batch_size: int | None = option(
      None, "EM/PUE/REM: batch of the noise sweep (default 128)", parse=int,
      check=_POS)
  # PUE (sigma is the shared --sigma: sigma_train).
  sigma: float = options.sigma()
  sigma_step: float | None = option(
      None, "PUE: spacing of the weight-noise levels (default sigma / 5)",
      parse=options.parse_fraction,
      check=options.optional(options.positive_float))
  surrogate_draws: int | None = option(
      None, "PUE: weight draws per level and surrogate step (default 100)",
      parse=int, check=_POS)
  noise_draws: int | None = option(
      None, "PUE: weight draws per level and noise step (default 10)",
      parse=int, check=_POS)
  draw_chunk: int | None = option(
      None, "PUE: weight draws vmapped at once (default: 1 on CPU, up to 16 "
      "on GPU/TPU)", parse=int, check=_POS, runtime=True)
  reference_loss_scale: bool = option(
      False, "PUE: the reference code's surrogate steps of 1/T of the mean "
      "gradient per level (jaxue.pue.PUEConfig)")
  # REM (rho_u is --epsilon).
  rho_a: float | None = option(
      None, "REM: adversarial radius rho_a (default eps / 2)",
      parse=options.parse_fraction,
      check=options.optional(options.unit_interval))
  rem_train_steps: int | None = option(
      None, "REM: surrogate steps (default 5000)", parse=int, check=_NONNEG)
  lr_decay_every: int | None = option(
      None, "REM: learning rate x0.1 every this many steps (default 2/5 of "
      "--rem-train-steps)", parse=int, check=_POS)
  noise_steps: int | None = option(
      None, "REM: PGD steps on the noise per batch (default 10)", parse=int,
      check=_NONNEG)
  eot_draws: int | None = option(
      None, "REM: transformation draws K per noise step (default 5)",
      parse=int, check=_POS)
  attack_steps: int | None = option(
      None, "REM: inner PGD ascent steps (default 10)", parse=int,
      check=_NONNEG)
  checkpoint_every: int | None = option(
      None, "REM: surrogate steps (and regeneration batches) per checkpoint "
      "(default 200)", parse=int, check=_POS)
  # Error-max.
  clean_epochs: int | None = option(
      None, "error-max: epochs of the clean surrogate (default 10)",
      parse=int, check=_POS)
  surrogate_augment: bool = option(
      True, "error-max: train the clean surrogate with the dataset's "
      "standard augmentation, as the reference trains the model it attacks")
  # Model-free baselines.
  l2_epsilon: float | None = option(
      None, "ar/lsp: L2 norm of each perturbation in [0, 1] units (default "
      "1.0 for ar, sqrt(H*W*C) * 6/255 for lsp)",
      parse=options.parse_fraction,
      check=options.optional(options.positive_float))
  patch_size: int | None = option(
      None, "lsp: patch side; must divide the image sides (default side / "
      "4)", parse=int, check=_POS)
  ar_min_response: float | None = option(
      None, "ar: distinctness bound of the AR processes (default 10 for up "
      "to 10 classes, else 3)", parse=float,
      check=options.optional(options.positive_float))
  # SALM.
  salm_rho: float | None = option(
      None, "salm: fraction of each image's pixels the noise may change "
      "(default 0.1; 1 is EM)", parse=options.parse_fraction,
      check=options.optional(_fraction))
  salm_mask: str | None = option(
      None, "salm: how the pixels are chosen (default grad-topk-per-step)",
      choices=salm_lib.MASKS)
  salm_restrict: bool = option(
      False, "salm: also zero the noise outside the current mask, so each "
      "image keeps at most rho of its pixels changed")
  # Bayes-error.
  ascent_steps: int | None = option(
      None, "bayes-error: sign-ascent steps (default 100)", parse=int,
      check=_NONNEG)
  feature_map: str | None = option(
      None, "bayes-error: features of the estimate: a network retrained on "
      "the current release, one trained on clean data, or PCA (default "
      "retrain)", choices=bayes_lib.FEATURES)
  retrain_every: int | None = option(
      None, "bayes-error: steps per feature network and checkpoint (default "
      "10)", parse=int, check=_POS)
  feature_epochs: int | None = option(
      None, "bayes-error: epochs of each feature network (default 3)",
      parse=int, check=_POS)
  kernel_sigma: float | None = option(
      None, "bayes-error: kernel width of the Bayes-error estimate (default "
      "0.3)", parse=options.parse_fraction,
      check=options.optional(options.positive_float))
  bayes_init: str | None = option(
      None, "bayes-error: start from zero or from the class-centroid step "
      "(default zero)", choices=bayes_lib.INITS)
  # UGE.
  encoder_model: str | None = option(
      None, "uge: architecture of the frozen feature encoder (default "
      "small_cnn_flat, or small_cnn when --model is small_cnn_flat)",
      choices=models.MODELS)
  encoder_widths: tuple[int, ...] | None = option(
      None, "uge: the encoder's widths (default: --widths for the small "
      "CNNs, the published ones for resnet18)",
      parse=options.parse_int_list,
      check=options.optional(options.each(options.positive_int)),
      metavar="W,W,W")
  encoder_size: int | None = option(
      None, "uge: images of the encoder's clean split, disjoint from the "
      "release's (default: as many as the release, at most what is left)",
      parse=int, check=_POS)
  encoder_epochs: int | None = option(
      None, "uge: training epochs of the encoder (default 10)", parse=int,
      check=_POS)
  uge_rounds: int | None = option(
      None, "uge: re-initialisations of the authorised network (default "
      "10)", parse=int, check=_POS)
  uge_steps: int | None = option(
      None, "uge: generator steps per round (default 50)", parse=int,
      check=_POS)
  seed: int = options.seed()
  data_parallel: bool = option(
      False, "split every training and crafting batch over all devices of "
      "this host (equal to one device's run up to float rounding)",
      runtime=True)
  quiet: bool = options.quiet()

  def __post_init__(self):
    options.validate(self)
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    for name, methods in APPLIES_TO.items():
      if getattr(self, name) != defaults[name] and self.method not in methods:
        names = " and ".join(filter(None, [", ".join(methods[:-1]),
                                           methods[-1]]))
        raise ValueError(f"{options.flag(name)} applies to --method {names} "
                         "only")
    if self.epsilon is not None and self.method in NOT_LINF:
      budget = ("one pixel" if self.method == "ops" else
                "an L2 norm: --l2-epsilon")
      raise ValueError(f"--epsilon does not apply to --method {self.method} "
                       f"(its budget is {budget})")


def resolved(config: Config) -> Config:
  """``config`` with the method's defaults filled in (what the run's
  fingerprint records, so that a flag left at its default and the same
  value given explicitly are the same run)."""
  method = config.method
  info = data_lib.get_info(config.dataset)
  changes: dict[str, Any] = {}

  def default(name: str, value: Any) -> None:
    if getattr(config, name) is None:
      changes[name] = value

  if method not in NOT_LINF:
    changes["epsilon"] = options.resolve_epsilon(config.epsilon,
                                                 config.dataset)
  epsilon = changes.get("epsilon", config.epsilon)
  classwise = method in _common.CLASSWISE
  if method in EM_PUE:
    default("max_rounds", 100)
    default("stop_error", 0.1 if classwise else 0.01)
    default("pgd_steps", 1 if classwise else 20)
    default("train_steps", 10)
    default("sweep_batch_size", 128)
  if method in PUE:
    default("sigma_step", config.sigma / 5)
    default("surrogate_draws", 100)
    default("noise_draws", 10)
  if method == "rem":
    default("rho_a", epsilon / 2)
    default("rem_train_steps", 5000)
    steps = changes.get("rem_train_steps", config.rem_train_steps)
    default("lr_decay_every", max(1, round(0.4 * steps)))
    default("noise_steps", 10)
    default("eot_draws", 5)
    default("attack_steps", 10)
    default("checkpoint_every", 200)
    default("sweep_batch_size", 128)
  if method in ERROR_MAX:
    default("clean_epochs", 10)
    default("pgd_steps", 20)
  if method == "ar":
    default("l2_epsilon", 1.0)
    default("ar_min_response",
            baselines.ar_default_min_response(info.num_classes))
  if method == "lsp":
    default("l2_epsilon", baselines.lsp_default_epsilon(info.image_shape))
    default("patch_size", baselines.lsp_default_patch_size(info.image_shape))
  if method in SALM:
    default("salm_rho", salm_lib.SALMConfig().rho)
    default("salm_mask", salm_lib.SALMConfig().mask)
  if method in BAYES:
    library = bayes_lib.BayesConfig()
    default("ascent_steps", library.steps)
    default("feature_map", library.features)
    default("retrain_every", library.retrain_every)
    default("feature_epochs", library.feature_epochs)
    default("kernel_sigma", library.sigma)
    default("bayes_init", library.init)
  if method in UGE:
    default("encoder_model", "small_cnn" if config.model == "small_cnn_flat"
            else "small_cnn_flat")
    encoder = changes.get("encoder_model", config.encoder_model)
    if encoder != "resnet18" and config.model != "resnet18":
      default("encoder_widths", config.widths)
    default("encoder_epochs", 10)
    default("uge_rounds", uge_lib.UGEConfig().rounds)
    default("uge_steps", uge_lib.UGEConfig().steps)
  return dataclasses.replace(config, **changes)


def salm_config(config: Config) -> salm_lib.SALMConfig:
  """The `SALMConfig` of a resolved SALM config."""
  return salm_lib.SALMConfig(rho=config.salm_rho, mask=config.salm_mask,
                             restrict=config.salm_restrict)


def bayes_config(config: Config) -> bayes_lib.BayesConfig:
  """The `BayesConfig` of a resolved bayes-error config."""
  return bayes_lib.BayesConfig(
      epsilon=config.epsilon, steps=config.ascent_steps,
      sigma=config.kernel_sigma, features=config.feature_map,
      retrain_every=config.retrain_every,
      feature_epochs=config.feature_epochs, init=config.bayes_init)


def uge_config(config: Config) -> uge_lib.UGEConfig:
  """The `UGEConfig` of a resolved UGE config."""
  return uge_lib.UGEConfig(epsilon=config.epsilon, rounds=config.uge_rounds,
                           steps=config.uge_steps)


def em_config(config: Config) -> noise_lib.EMConfig:
  """The `EMConfig` of a resolved EM/PUE config."""
  return noise_lib.EMConfig(
      mode=_mode(config.method), epsilon=config.epsilon,
      pgd_steps=config.pgd_steps, train_steps=config.train_steps,
      sweep_batch_size=config.sweep_batch_size,
      stop_error=config.stop_error, max_rounds=config.max_rounds)


def pue_config(config: Config) -> pue_lib.PUEConfig:
  """The `PUEConfig` of a resolved PUE config."""
  return pue_lib.PUEConfig(
      sigma=config.sigma, sigma_step=config.sigma_step,
      surrogate_draws=config.surrogate_draws,
      noise_draws=config.noise_draws, draw_chunk=config.draw_chunk,
      reference_loss_scale=config.reference_loss_scale)


def rem_config(config: Config) -> rem_lib.REMConfig:
  """The `REMConfig` of a resolved REM config (rho_u is --epsilon)."""
  return rem_lib.REMConfig(
      rho_u=config.epsilon, rho_a=config.rho_a,
      noise_steps=config.noise_steps, eot_draws=config.eot_draws,
      attack_steps=config.attack_steps, train_steps=config.rem_train_steps,
      lr_decay_every=config.lr_decay_every,
      checkpoint_every=config.checkpoint_every,
      sweep_batch_size=config.sweep_batch_size)


def _mode(method: str) -> str:
  return "classwise" if method in _common.CLASSWISE else "samplewise"


def check_method_settings(config: Config, data: _common.Data) -> None:
  """Library-level checks of a resolved config, before the run directory
  is touched (a typo must not leave a run with the wrong settings)."""
  if config.method in EM_PUE:
    em_config(config).resolved()
    if config.method in PUE:
      pue_config(config).check()
    if config.method in SALM:
      salm_config(config).check()
  elif config.method == "rem":
    rem_config(config).resolved()
  elif config.method in BAYES:
    bayes_config(config).resolved()
  elif config.method in UGE:
    uge_config(config).resolved()
    total = len(data_lib.load(data.name, "train", config.data_dir)[1])
    left = total - len(data.train[1])
    if left < 128:
      raise ValueError(
          "--method uge trains its encoder on a clean split disjoint from "
          f"the release, but --train-size {len(data.train[1])} leaves "
          f"{left} training images: give a smaller --train-size")
  if (config.method in EM_PUE + ("rem",) or (
      config.method in BAYES and config.feature_map != "pca")) and len(
          data.train[1]) < 128:
    raise ValueError(f"--train-size {len(data.train[1])} is below the "
                     f"surrogate batch of 128 images that {config.method} "
                     "needs")
  if config.method == "lsp":
    height, width = data.image_shape[:2]
    if height % config.patch_size or width % config.patch_size:
      raise ValueError(f"--patch-size {config.patch_size}: patch_size "
                       f"{config.patch_size} does not divide the "
                       f"{height}x{width} images")


def run(config: Config, workdir: str | pathlib.Path, *,
        overwrite: bool = False) -> dict[str, Any]:
  """Crafts ``config.method`` noise and writes the release (see the module
  docstring for the files).

  Args:
    config: the settings.
    workdir: the run directory (created; rerunning into it resumes).
    overwrite: delete an earlier run in ``workdir`` first.

  Returns:
    The results (as in ``results.json``).
  """
  config = resolved(config)
  timer = _common.Timer()
  with timer("load"):
    data = _common.load_data(config.dataset, config.data_dir,
                             config.train_size, config.seed,
                             config.test_size)
  check_method_settings(config, data)
  out = pathlib.Path(workdir)
  run_dir = runs.Run(out, "craft", options.fingerprinted(config),
                     overwrite=overwrite)
  stage = run_dir.stage("craft", {
      **options.fingerprinted(config),
      "data": data.train_fingerprint["sha256"]})
  if stage.done:
    stage.clear_checkpoints()  # Left if a kill followed `finish`.
    _common.log(config.quiet, f"{out}: crafted already; results.json")
    return stage.result()

  x_train, y_train = data.train
  linf = config.method not in NOT_LINF
  budget, budget_label = _budget(config)
  _common.log(config.quiet, f"{data.name}: crafting {config.method} at "
              f"{budget_label} for {len(y_train)} images "
              f"({jax.default_backend()})")
  key = jax.random.key(config.seed)
  init_key, craft_key = jax.random.split(key)
  model_spec = None
  if config.method not in MODEL_FREE:
    model_spec = {"name": config.model, "num_classes": data.num_classes,
                  "widths": list(config.widths) if config.widths else None}
  with timer("craft"), _common.device_scope(config.data_parallel):
    if config.method in MODEL_FREE:
      result = craft_model_free(config, data, craft_key)
      summary = _model_free_summary(config, result)
    else:
      model = models.make_model(**model_spec)
      if config.method in EM_PUE:
        result, summary = craft_em(config, data, model, stage, init_key,
                                    craft_key)
      elif config.method == "rem":
        result, summary = _craft_rem(config, data, model, stage, init_key,
                                     craft_key)
      elif config.method in BAYES:
        result, summary = _craft_bayes(config, data, model, stage, craft_key)
      elif config.method in UGE:
        result, summary = _craft_uge(config, data, model_spec, run_dir,
                                     stage, out, init_key, craft_key)
      else:
        result, summary = _craft_error_max(config, data, model, init_key)

  delta = np.asarray(result.noise, np.float32)
  mode = _mode(config.method)
  released = noise_lib.release(
      x_train, y_train, delta, epsilon=config.epsilon if linf else None,
      mode=mode)
  meta = {"dataset": data.train_fingerprint, "dataset_name": data.name,
          "method": config.method, "mode": mode,
          "epsilon": config.epsilon if linf else None, **budget,
          "train_size": len(y_train), "seed": config.seed,
          "model": model_spec}
  arrays = {"noise": delta, "train_indices": data.indices,
            "labels": y_train, **_method_arrays(result)}
  runs.save_arrays(out / "noise.npz", arrays, meta=meta)
  runs.save_arrays(out / "release.npz",
                   {"images": released, "labels": y_train.astype(np.int32),
                    "train_indices": data.indices}, meta=meta,
                   compress=True)
  if result.surrogate is not None:
    extra = {"method": config.method, "epsilon": config.epsilon,
             "dataset": data.name}
    if config.method in PUE:
      extra["sigma"] = config.sigma
    elif config.method == "rem":
      extra["rho_a"] = config.rho_a
    runs.save_model(out / "models" / "surrogate", result.surrogate.variables,
                    model=model_spec, input_shape=data.image_shape,
                    dataset=data.train_fingerprint, extra=extra)
  results = {
      "dataset": data.name, "method": config.method, "mode": mode,
      "epsilon": config.epsilon if linf else None,
      "epsilon_label": (_common.epsilon_label(config.epsilon) if linf
                        else budget_label),
      **budget,
      "train_size": len(y_train),
      "model": model_spec,
      "noise_shape": list(delta.shape),
      "noise_linf": float(np.abs(delta).max()),
      "noise_l2_max": float(np.sqrt(np.square(
          delta.astype(np.float64)).reshape(len(delta), -1).sum(1)).max()),
      "converged": bool(result.converged),
      "craft": summary,
      "wall_seconds": dict(timer.seconds),
      **_common.metadata(config),
  }
  results = runs.jsonable(results)
  runs.write_json(out / "results.json", results)
  stage.finish(results)
  stage.clear_checkpoints()
  _common.log(config.quiet, f"wrote {out}/release.npz, noise.npz, "
              f"results.json ({timer.seconds['craft']:.0f} s crafting)")
  return results


def _budget(config: Config) -> tuple[dict[str, Any], str]:
  """The results.json budget entries of a method, and its label."""
  if config.method == "ops":
    return {"pixels_changed": 1}, "1 pixel per image (L0)"
  if config.method in ("ar", "lsp"):
    return ({"l2_epsilon": config.l2_epsilon},
            f"L2 eps = {config.l2_epsilon:.4g}")
  return {}, f"eps = {_common.epsilon_label(config.epsilon)}"


def _method_arrays(result: noise_lib.CraftResult) -> dict[str, np.ndarray]:
  """The arrays of a model-free method that noise.npz keeps."""
  info = result.info
  if info.get("method") == "ops":
    return {"ops_positions": info["positions"], "ops_values": info["values"]}
  if info.get("method") == "ar":
    return {"ar_coefficients": info["coefficients"]}
  return {}


def _model_free_summary(config: Config, result: noise_lib.CraftResult
                        ) -> dict[str, Any]:
  info = result.info
  if config.method == "ops":
    return {"positions": info["positions"].tolist(),
            "values": info["values"].tolist(),
            "scores": info["scores"].tolist()}
  if config.method == "ar":
    return {"window": info["window"], "min_response": info["min_response"]}
  if config.method == "lsp":
    return {"patch_size": info["patch_size"]}
  return {}


def craft_model_free(config: Config, data: _common.Data,
                      key: jax.Array) -> noise_lib.CraftResult:
  """Random noise and the OPS / AR / LSP baselines: no surrogate."""
  x_train, y_train = data.train
  num_classes = data.num_classes
  if config.method == "random":
    return noise_lib.uniform_noise(key, x_train, y_train,
                                   num_classes=num_classes,
                                   mode="samplewise", epsilon=config.epsilon)
  if config.method == "ops":
    return baselines.one_pixel_shortcut_noise(x_train, y_train,
                                              num_classes=num_classes)
  if config.method == "ar":
    return baselines.autoregressive_noise(
        key, x_train, y_train, num_classes=num_classes,
        epsilon=config.l2_epsilon, min_response=config.ar_min_response,
        progress=not config.quiet)
  return baselines.linear_separable_noise(
      key, x_train, y_train, num_classes=num_classes,
      epsilon=config.l2_epsilon, patch_size=config.patch_size)


def _state_tree(state: train.TrainState) -> dict[str, Any]:
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state}


def _restore(stage: runs.Stage, surrogate: train.TrainState,
             noise_shape: Sequence[int]
             ) -> tuple[int, train.TrainState, np.ndarray, dict] | None:
  """The last checkpoint of an interrupted craft: ``(step, state, noise,
  meta)``, or None."""
  like = {"state": _state_tree(surrogate),
          "noise": np.zeros(tuple(noise_shape), np.float32)}
  restored = stage.checkpoints().restore(like)
  if restored is None:
    return None
  step, tree, meta = restored
  return step, surrogate.replace(**tree["state"]), tree["noise"], meta


def _progress(config: Config, label: str) -> bool | str:
  return False if config.quiet else label


def craft_em(config: Config, data: _common.Data, model: models.Model,
              stage: runs.Stage, init_key: jax.Array, craft_key: jax.Array
              ) -> tuple[noise_lib.CraftResult, dict[str, Any]]:
  """EM / PUE crafting with a checkpoint after every round."""
  x_train, y_train = data.train
  cfg = em_config(config)
  surrogate = train.create_train_state(init_key, model, data.image_shape,
                                        train.make_optimizer(0.1))
  lead = data.num_classes if cfg.mode == "classwise" else len(y_train)
  restored = _restore(stage, surrogate, (lead,) + data.image_shape)
  start_round, noise, history = 0, None, None
  if restored is not None:
    last, surrogate, noise, meta = restored
    start_round, history = last + 1, meta["history"]
    _common.log(config.quiet, f"resuming after round {last} "
                f"({stage.path / 'ckpt'})")
  history = history or {"accuracy": [], "loss": [], "seconds": []}
  checkpoints = stage.checkpoints()

  def on_round(round_index, state, noise, metrics):
    del metrics
    runs.fault_point("craft:round")
    checkpoints.save(round_index, {"state": _state_tree(state),
                                   "noise": noise},
                     {"round": round_index, "history": history})

  robust = (pue_lib.pue_steps(cfg, pue_config(config))
            if config.method in PUE else {})
  if config.method in SALM:
    salm = salm_config(config)
    saliency = None
    if salm.mask == "grad-topk-fixed":
      # Retrained on resume: deterministic in the seed.
      saliency = salm_lib.train_saliency_model(
          jax.random.fold_in(craft_key, 1), model, x_train, y_train,
          epochs=salm.saliency_epochs)
    robust = salm_lib.salm_steps(cfg, salm, saliency=saliency)
  result = noise_lib.craft(
      craft_key, surrogate, x_train, y_train, cfg,
      num_classes=data.num_classes, **robust, noise=noise,
      start_round=start_round, history=history, on_round=on_round,
      progress=_progress(config, f"craft {config.method}"))
  accuracy = result.history["accuracy"]
  summary = {"rounds": len(accuracy), "converged": result.converged,
             "noisy_accuracy": accuracy,
             "round_seconds": result.history["seconds"],
             "robust": result.history.get("robust", []),
             "resumed_from_round": start_round}
  if config.method in PUE:
    summary["pue"] = pue_config(config)._asdict()
  if config.method in SALM:
    summary["salm"] = salm_config(config)._asdict()
    summary["pixels_per_image"] = salm_lib.pixel_count(config.salm_rho,
                                                       data.image_shape)
    summary["noise_sparsity"] = salm_lib.noise_sparsity(result.noise)
  _common.log(config.quiet, f"{len(accuracy)} rounds; surrogate accuracy on "
              f"noisy data {accuracy[-1] if accuracy else float('nan'):.3f}"
              f" ({'converged' if result.converged else 'NOT converged'})")
  return result, summary


def _craft_rem(config: Config, data: _common.Data, model: models.Model,
               stage: runs.Stage, init_key: jax.Array, craft_key: jax.Array
               ) -> tuple[noise_lib.CraftResult, dict[str, Any]]:
  """REM crafting with a checkpoint every ``--checkpoint-every`` units."""
  x_train, y_train = data.train
  cfg = rem_config(config)
  surrogate = train.create_train_state(init_key, model, data.image_shape,
                                        cfg.optimizer())
  restored = _restore(stage, surrogate, x_train.shape)
  start_step, noise, history = 0, None, None
  if restored is not None:
    start_step, surrogate, noise, meta = restored
    history = meta["history"]
    _common.log(config.quiet, f"resuming after step {start_step} "
                f"({stage.path / 'ckpt'})")
  checkpoints = stage.checkpoints()

  def on_block(step, state, noise, history):
    runs.fault_point("craft:round")
    checkpoints.save(step, {"state": _state_tree(state), "noise": noise},
                     {"step": step, "history": history})

  cost = rem_lib.rem_cost(cfg)
  _common.log(config.quiet, f"REM: {cfg.train_steps} surrogate steps of ~"
              f"{cost['per_train_step']} forward/backward passes, then "
              f"{rem_lib.total_units(cfg, len(y_train)) - cfg.train_steps} "
              "regeneration batches")
  result = rem_lib.robust_error_minimizing_noise(
      craft_key, surrogate, x_train, y_train, num_classes=data.num_classes,
      cfg=cfg, noise=noise, start_step=start_step, history=history,
      on_block=on_block, progress=_progress(config, "craft rem"))
  trained = [a for a in result.history["accuracy"] if a is not None]
  summary = {"train_steps": cfg.train_steps, "rho_a": cfg.rho_a,
             "passes_per_step": cost["per_train_step"],
             "adversarial_train_accuracy": trained,
             "block_steps": result.history["step"],
             "block_seconds": result.history["seconds"],
             "craft_seconds_total": round(sum(result.history["seconds"]), 1),
             "resumed_from_step": start_step}
  return result, summary


def _craft_error_max(config: Config, data: _common.Data, model: models.Model,
                     init_key: jax.Array
                     ) -> tuple[noise_lib.CraftResult, dict[str, Any]]:
  """A clean surrogate, then sample-wise PGD against it."""
  x_train, y_train = data.train
  result = noise_lib.error_max_from_clean(
      init_key, model, x_train, y_train, test=data.test,
      num_classes=data.num_classes, epsilon=config.epsilon,
      clean_epochs=config.clean_epochs,
      surrogate_augment=config.surrogate_augment, steps=config.pgd_steps,
      targeted=config.method == "error-max-targeted",
      progress=_progress(config, "clean surrogate"))
  summary = {k: v for k, v in result.info.items()
             if k not in ("method", "mode")}
  _common.log(config.quiet, "clean surrogate: test accuracy "
              f"{summary['surrogate_test_accuracy']:.3f}")
  return result, summary


def _craft_bayes(config: Config, data: _common.Data, model: models.Model,
                 stage: runs.Stage, craft_key: jax.Array
                 ) -> tuple[noise_lib.CraftResult, dict[str, Any]]:
  """Bayes-error ascent with a checkpoint (the noise) every
  ``--retrain-every`` steps; a resumed run retrains that block's feature
  network from the saved noise with the same key."""
  x_train, y_train = data.train
  cfg = bayes_config(config)
  restored = stage.checkpoints().restore(
      {"noise": np.zeros(x_train.shape, np.float32)})
  start_step, noise, history = 0, None, None
  if restored is not None:
    start_step, tree, meta = restored
    noise, history = tree["noise"], meta["history"]
    _common.log(config.quiet, f"resuming after step {start_step} "
                f"({stage.path / 'ckpt'})")
  checkpoints = stage.checkpoints()

  def on_block(step, noise, history):
    runs.fault_point("craft:round")
    checkpoints.save(step, {"noise": noise}, {"step": step,
                                              "history": history})

  result = bayes_lib.bayes_error_noise(
      craft_key, model, x_train, y_train, num_classes=data.num_classes,
      cfg=cfg, noise=noise, start_step=start_step, history=history,
      on_block=on_block, progress=_progress(config, "craft bayes-error"))
  summary = {"bayes_error": result.history["bayes_error"],
             "final_bayes_error": result.info["final_bayes_error"],
             "feature_train_accuracy":
                 result.history["feature_train_accuracy"],
             "step_seconds": result.history["seconds"],
             "config": result.info["config"],
             "resumed_from_step": start_step}
  _common.log(config.quiet, f"{cfg.steps} ascent steps; Bayes-error "
              f"estimate {result.info['final_bayes_error']:.4f}")
  return result, summary


def _uge_encoder(config: Config, data: _common.Data, run_dir: runs.Run,
                 out: pathlib.Path, key: jax.Array
                 ) -> tuple[uge_lib.Encoder, dict[str, Any]]:
  """The frozen encoder: trained (once: ``encoder/``) on a stratified clean
  split disjoint from the release's images."""
  spec = {"name": config.encoder_model, "num_classes": data.num_classes,
          "widths": list(config.encoder_widths) if config.encoder_widths
          else None}
  x_all, y_all = data_lib.load(data.name, "train", config.data_dir)
  rest = np.setdiff1d(np.arange(len(y_all)), data.indices)
  size = min(config.encoder_size or len(data.indices), len(rest))
  pick = np.asarray(data_lib.stratified_subset(
      jax.random.fold_in(key, 1), y_all[rest], size,
      num_classes=data.num_classes)) if size < len(rest) else np.arange(
          len(rest))
  indices = rest[pick]
  x_enc, y_enc = x_all[indices], y_all[indices]
  fingerprint = runs.dataset_fingerprint(data.name, "train", x_enc, y_enc)
  stage = run_dir.stage("encoder", {"model": spec,
                                    "epochs": config.encoder_epochs,
                                    "data": fingerprint["sha256"]})
  if not stage.done:
    model = models.make_model(**spec)
    state, history = train.train_victim(
        jax.random.fold_in(key, 2), model, x_enc, y_enc, test=data.test,
        epochs=config.encoder_epochs,
        augment=data_lib.default_augmentation(data.image_shape),
        progress=_progress(config, "uge encoder"))
    runs.save_arrays(out / "encoder" / "train_indices.npz",
                     {"train_indices": indices}, meta={"dataset": fingerprint})
    runs.save_model(out / "encoder", state.variables, model=spec,
                    input_shape=data.image_shape, dataset=fingerprint,
                    extra={"role": "uge encoder"})
    stage.finish({"model": spec, "train_size": int(size),
                  "test_accuracy": history["test_accuracy"][-1]})
  model, variables, _ = runs.load_model(out / "encoder", dataset=fingerprint)
  summary = dict(stage.result())
  _common.log(config.quiet, f"uge encoder {model.name}: test accuracy "
              f"{summary['test_accuracy']:.3f} ({size} disjoint images)")
  return uge_lib.penultimate(model, variables), summary


def _craft_uge(config: Config, data: _common.Data, model_spec: dict,
               run_dir: runs.Run, stage: runs.Stage, out: pathlib.Path,
               init_key: jax.Array, craft_key: jax.Array
               ) -> tuple[noise_lib.CraftResult, dict[str, Any]]:
  """UGE: the encoder, then the generator with a checkpoint every round."""
  x_train, y_train = data.train
  encoder, encoder_summary = _uge_encoder(config, data, run_dir, out,
                                          init_key)
  # im2col: gradient matching needs second-order gradients (same function).
  model = models.make_model(**model_spec, conv_impl="im2col")
  cfg = uge_config(config).resolved()
  generator = uge_lib.make_generator(cfg, data.image_shape[-1])
  like_params = generator.init(jax.random.key(0),
                               np.zeros((1,) + data.image_shape, np.float32))[
                                   "params"]
  like_net = train.create_train_state(
      jax.random.key(0), model, data.image_shape,
      uge_lib._network_optimizer(cfg.network_lr))
  like = {"generator": like_params,
          "generator_opt": uge_lib._adam(cfg.generator_lr).init(like_params),
          "network": _state_tree(like_net)}
  resume: dict[str, Any] = {}
  restored = stage.checkpoints().restore(like)
  if restored is not None:
    last, tree, meta = restored
    resume = {"start_round": last + 1, "history": meta["history"],
              "generator_state": (tree["generator"], tree["generator_opt"]),
              "network": like_net.replace(**tree["network"])}
    _common.log(config.quiet, f"resuming after round {last} "
                f"({stage.path / 'ckpt'})")
  checkpoints = stage.checkpoints()

  def on_round(r, gen_params, gen_opt, net, history):
    runs.fault_point("craft:round")
    checkpoints.save(r, {"generator": gen_params, "generator_opt": gen_opt,
                         "network": _state_tree(net)},
                     {"round": r, "history": history})

  result = uge_lib.ungeneralizable_examples(
      craft_key, model, x_train, y_train, num_classes=data.num_classes,
      encoder=encoder, config=cfg, on_round=on_round,
      progress=_progress(config, "craft uge"), **resume)
  summary = {"method_status": "reconstructed from the paper's abstract: "
             "every loss form and weight is jaxue's (jaxue.uge)",
             "encoder": encoder_summary, "config": result.info["config"],
             "history": result.history,
             "resumed_from_round": resume.get("start_round", 0)}
  return result, summary
