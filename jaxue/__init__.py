"""jaxue: unlearnable examples in JAX.

Error-minimizing noise (Huang et al., ICLR 2021), provably unlearnable
examples with certified (q, eta)-learnability (Wang et al., NDSS 2025) and
the weight-recovery attack, as pure jit-compiled functions. Modules:

* `jaxue.data`: datasets (offline IDX / CIFAR-binary readers, TFDS),
  stratified subsets, batching, augmentation.
* `jaxue.models`: the PUE small CNN and the CIFAR ResNet-18 as `Model`s;
  `functional` wraps any linen module taking ``(x, train)`` into one.
* `jaxue.train`: `TrainState`, `train_step`, `fit`, `evaluate`,
  `AdversarialConfig`.
* `jaxue.pgd`: projected gradient descent/ascent on inputs.
* `jaxue.noise`: EM crafting (the min-min loop, `EMConfig`), random noise,
  error-maximizing noise, `CraftResult`, `release`, partial protection.
* `jaxue.pue`: provably unlearnable examples (Wang et al., NDSS 2025): EM
  against randomly perturbed weights (`PUEConfig`).
* `jaxue.rem`: robust error-minimizing noise (Fu et al., ICLR 2022;
  `REMConfig`).
* `jaxue.baselines`: the model-free baselines: One-Pixel Shortcut (OPS),
  autoregressive (AR) and linearly separable patch (LSP) perturbations.
* `jaxue.defences`: training-time defences (cutout, mixup, cutmix,
  grayscale, JPEG re-encoding, UEraser, orthogonal projection).
* `jaxue.ueraser`: UEraser's augmentation policy and schedules (Qin et
  al., 2023); `jaxue.projection`: orthogonal projection (Sandoval-Segura
  et al., NeurIPS 2023).
* `jaxue.salm`: sparse error-minimizing noise on each image's top-k pixels
  (SALM, Sun et al., 2024; reconstructed); `jaxue.bayes_error`: noise that
  raises a kernel estimate of the Bayes error (Zhang et al., 2025).
* `jaxue.uge`: ungeneralizable examples, a generator whose noise an
  authorised network still learns from (Ye & Wang, 2024; reconstructed);
  `jaxue.unlearnable_distance`: per-layer sharpness-aware learnability and
  the Unlearnable Distance (Ye, Su & Qian, 2025).
* `jaxue.certify`: Monte-Carlo accuracies and the (q, eta) bound.
* `jaxue.recover`: the weight-recovery attack.
* `jaxue.diagnostics`: what a release's noise is made of (a shortcut, or
  the classes' features).
* `jaxue.parallel`: data-parallel training and crafting over a device
  mesh (``with jax.set_mesh(jaxue.parallel.data_mesh()): ...``).
* `jaxue.runs`: run directories: config fingerprints, kill-safe
  checkpoints, atomic files, integrity hashes.
* `jaxue.pipelines`: the long jobs behind the ``jaxue`` command.

Conventions. Every crafting method returns a `CraftResult` ``(noise,
surrogate, history, converged, info)`` (``surrogate`` None for model-free
methods): `error_minimizing_noise`, `provably_unlearnable_noise`,
`robust_error_minimizing_noise`, `error_maximizing_noise`,
`error_max_from_clean`, `uniform_noise`, `one_pixel_shortcut_noise`,
`autoregressive_noise`, `linear_separable_noise`. Functions that sample
take their key first; steps (`train_step`, ...) take the state first so
they compose with `lax.scan`. Noise is ``mode="classwise"`` or
``"samplewise"`` everywhere, including `release`. `sample_accuracies`
certifies any classifier: a jaxue `Model`, a plain ``apply(params, x)``,
or a flax linen or NNX module.
"""

from jaxue import baselines
from jaxue import certify
from jaxue import data
from jaxue import defences
from jaxue import diagnostics
from jaxue import models
from jaxue import noise
from jaxue import parallel
from jaxue import pgd
from jaxue import pue
from jaxue import recover
from jaxue import rem
from jaxue import train
from jaxue.baselines import autoregressive_noise
from jaxue.baselines import linear_separable_noise
from jaxue.baselines import one_pixel_shortcut_noise
from jaxue.certify import certified_learnability
from jaxue.certify import learnability_curve
from jaxue.certify import min_draws
from jaxue.certify import sample_accuracies
from jaxue.data import load
from jaxue.models import functional
from jaxue.models import make_model
from jaxue.models import Model
from jaxue.noise import CraftResult
from jaxue.noise import EMConfig
from jaxue.noise import error_max_from_clean
from jaxue.noise import error_maximizing_noise
from jaxue.noise import error_minimizing_noise
from jaxue.noise import random_noise
from jaxue.noise import release
from jaxue.noise import uniform_noise
from jaxue.pue import provably_unlearnable_noise
from jaxue.pue import PUEConfig
from jaxue.recover import recover as recover_weights
from jaxue.recover import recovery_curve
from jaxue.rem import REMConfig
from jaxue.rem import robust_error_minimizing_noise
from jaxue.train import AdversarialConfig
from jaxue.train import create_train_state
from jaxue.train import evaluate
from jaxue.train import fit
from jaxue.train import train_step
from jaxue.train import train_victim
from jaxue import projection
from jaxue import ueraser
from jaxue.projection import orthogonal_projection
from jaxue import salm
from jaxue.salm import salm_noise
from jaxue.salm import SALMConfig
from jaxue import bayes_error
from jaxue.bayes_error import bayes_error_noise
from jaxue.bayes_error import BayesConfig
from jaxue.bayes_error import class_centroid_noise
from jaxue.bayes_error import kernel_bayes_error
from jaxue import uge
from jaxue.uge import ungeneralizable_examples
from jaxue.uge import UGEConfig
from jaxue import unlearnable_distance
from jaxue.unlearnable_distance import sharpness_aware_learnability

__version__ = "0.1.0"

__all__ = [
    "AdversarialConfig", "CraftResult", "EMConfig", "Model", "PUEConfig",
    "REMConfig", "autoregressive_noise", "certified_learnability",
    "create_train_state", "error_max_from_clean", "error_maximizing_noise",
    "error_minimizing_noise", "evaluate", "fit", "functional",
    "learnability_curve", "linear_separable_noise", "load", "make_model",
    "min_draws", "one_pixel_shortcut_noise", "provably_unlearnable_noise",
    "random_noise", "recover_weights", "recovery_curve", "release",
    "robust_error_minimizing_noise", "sample_accuracies", "train_step",
    "train_victim", "uniform_noise",
    "orthogonal_projection",
    "salm_noise", "SALMConfig",
    "bayes_error_noise", "BayesConfig", "class_centroid_noise",
    "kernel_bayes_error",
    "ungeneralizable_examples", "UGEConfig",
    "sharpness_aware_learnability",
]
