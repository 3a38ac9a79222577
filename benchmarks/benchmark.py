"""jaxue against a PyTorch port of the reference loops, timed in one run.

    python benchmarks/benchmark.py --quick [--out DIR]

For each workload, jaxue's own code path and a PyTorch implementation of the
*reference loop as the official code runs it* (same small CNN, batch, data
sizes and float32; PyTorch on the CPU with ``--threads`` threads, XLA with
all cores) are warmed up (jaxue compiles), then timed ``--repeats`` times;
the medians per unit and ``ratio = torch / jaxue`` are reported (> 1 means
jaxue is faster):

* ``sgd_step`` (per step): surrogate SGD in train mode -- forward, backward,
  global-norm clipping at 5, SGD(lr 0.1, momentum 0.9, weight decay 5e-4).
  jaxue: `jaxue.train.train_epoch` (one `lax.scan` over ``--sgd-steps``
  steps, as victims and surrogates train); PyTorch: the reference's
  ``Trainer.train_batch`` body in a Python loop.
* ``pgd_step`` (per PGD step): one input-gradient signed descent step in
  eval mode on a batch. jaxue: `jaxue.noise.pgd_noise_step` (K steps in one
  `fori_loop`); PyTorch: the UE repository's ``min_min_attack`` loop body
  (parameters frozen, as its sample-wise sweep sets ``requires_grad=False``).
* ``em_iteration`` (per outer iteration of sample-wise EM): 10 train steps,
  a PGD sweep (K steps per batch) over a fixed subset of ``--em-images``
  images and the stop check (eval-mode accuracy on the noisy subset). jaxue:
  one `jaxue.noise._em_round` call (what `jaxue.noise.craft` runs per round);
  PyTorch: the reference's ``sample_wise_perturbation`` loop body.
* ``pue_surrogate_step`` (per step): PUE's robust surrogate step, levels
  sigma_j = j * 0.05 for j = 0..5 times ``--pue-draws`` weight draws, one
  optimizer step per level. jaxue: `jaxue.pue.robust_surrogate_step`
  (vmapped draws, each ``--pue-chunks`` value tried, the best reported;
  level 0, sigma = 0, is one pass where the reference makes ``--pue-draws``
  identical ones);
  PyTorch: the reference's ``train_batch_robust`` (a Python loop over draws:
  perturb the parameters, forward, backward, clip, restore).
* ``certify`` (per draw): accuracy of one perturbed copy of the model on a
  10,000-image test set, eval mode, both in batches of
  `jaxue.certify.default_batch_size()` (50 on CPU, where small batches are
  faster; 1,000 on GPU), and again at 100 and 1,000 (extra workloads
  ``certify_b100``, ``certify_b1000``; ``ratio_vs_torch_best_batch``
  compares jaxue's default with PyTorch's fastest of these batches).
  jaxue: `jaxue.certify.sample_accuracies` (the backend's default chunk);
  PyTorch: the reference's certification loop (perturb the parameters in
  place, run the test set, restore). jaxue's draws are sharded over every
  device, as jaxue's certification runs them; on a CPU host that is one
  device per core (``--cpu-devices``, default auto), and one device's time
  is recorded as well.

Both sides get the data pre-loaded as tensors (no input pipeline) and the
PyTorch side leaves out the reference's per-image Python loops (adding noise
image by image, counting predicted classes), its plotting and logging, and
runs certification under ``torch.no_grad()`` (the reference does not): each
of these only makes the reference faster, so the ratios are conservative.
Images are generated (throughput does not depend on pixel values).

Also measured: the CPU's float32 matmul GFLOP/s (the median of a few
``--matmul-size``-cubed products in XLA, at the start and at the end of the
run; ``matmul_gflops`` is the faster of the two) and each workload's achieved
GFLOP/s. FLOPs are the model's, counted by XLA's cost analysis
(`certify_speed.xla_flops`, beside this script) of loop-free functions with
XLA's own convolutions (conv impl "lax"), times the trip counts: one SGD step
(forward, backward, update), one PGD step (forward and input gradient),
one eval forward pass. For certification, the draws needed to certify
eta in {0.1, 0.25, 0.5, 0.75} at sigma 0.25, q 0.9, c 0.99 and the implied
run time at the measured draws/s are printed.

PyTorch is the optional ``bench`` extra (``pip install torch==2.13.0``);
without it (or with ``--no-torch``) only jaxue is timed and the PyTorch
fields are null. Writes ``OUT/results.json`` (default OUT:
``benchmarks/results/benchmark-PRESET``, PRESET one of full, quick)::

    {"workloads": {NAME: {"jaxue_s": f, "torch_s": f | null,
                          "ratio": f | null, "gflops": f, ...}, ...},
     "extra_workloads": {...}, "matmul_gflops": f, "device": str,
     "torch_threads": int | null, "certify_sizing": [...], ...}

Presets: the default runs 5 repeats, a 1,024-image EM subset, 100 PUE draws
per level (the published count; draw chunks 1 and 10), 64 jaxue and 16
PyTorch certification draws, and the SGD step at batch 256 too (an extra
workload), and certification at batches of 100 and 1,000. ``--quick``
(under 5 minutes on 2 cores): 3 repeats, a 512-image EM subset, 10 PUE
draws per level (draw chunks 1 and all 10), 16 jaxue and 8 PyTorch
certification draws. The size flags below override either preset.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import dataclasses
import functools
import os
import pathlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxue import certify
from jaxue import runs
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import pue as pue_lib
from jaxue import train as train_lib

# Siblings: the script runs by path, with this folder first on sys.path.
import _common as common  # pylint: disable=g-bad-import-order
from certify_speed import xla_flops  # pylint: disable=g-bad-import-order

WORKLOADS = ("sgd_step", "pgd_step", "em_iteration", "pue_surrogate_step",
             "certify")
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
LEARNING_RATE = 0.1
CLIP_NORM = 5.0
EPSILON = 8 / 255
STEP_SIZE = EPSILON / 10
CERTIFY_SIGMA = 0.25
SIZING_ETAS = (0.1, 0.25, 0.5, 0.75)
SIZING = {"sigma": 0.25, "q": 0.9, "confidence": 0.99}
PUE = pue_lib.PUEConfig()  # sigma 0.25, step 0.05: 6 levels.
# Minimum ratios (torch / jaxue) the issue sets; certification also needs
# >= 50% of the matmul GFLOP/s.
TARGETS = {"sgd_step": 1.0, "em_iteration": 1.0, "pue_surrogate_step": 3.0,
           "certify": 3.0}
CERTIFY_PEAK_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Workload sizes and repeat counts of one benchmark preset."""

  repeats: int = 5
  batch_size: int = 128
  extra_batch_size: int | None = 256
  sgd_steps: int = 10
  em_train_steps: int = 10
  pgd_steps: int = 20
  em_images: int = 1024
  pue_draws: int = 100
  pue_chunks: tuple[str, ...] = ("1", "10")
  test_size: int = 10_000
  certify_batch: int | None = None  # certify.default_batch_size().
  extra_certify_batches: tuple[int, ...] = (100, 1000)
  jaxue_draws: int = 64
  torch_draws: int = 16
  matmul_size: int = 2048


PRESETS = {
    "full": Sizes(),
    "quick": Sizes(repeats=3, em_images=512, pue_draws=10,
                   pue_chunks=("1", "all"), jaxue_draws=16, torch_draws=8),
    # Hidden --smoke: exercises every code path in seconds (tests); its
    # timings mean nothing.
    "smoke": Sizes(repeats=1, batch_size=8, extra_batch_size=None,
                   sgd_steps=2, em_train_steps=2, pgd_steps=2, em_images=16,
                   pue_draws=2, pue_chunks=("1",), test_size=40,
                   certify_batch=20, extra_certify_batches=(),
                   jaxue_draws=4, torch_draws=1,
                   matmul_size=64),
}


def _chunks_arg(text: str) -> tuple[str, ...]:
  chunks = tuple(c.strip() for c in text.split(",") if c.strip())
  for c in chunks:
    if c != "all" and not (c.isdigit() and int(c) >= 1):
      raise argparse.ArgumentTypeError(
          f"draw chunks must be integers >= 1 or 'all', got {text!r}")
  if not chunks:
    raise argparse.ArgumentTypeError("no draw chunk given")
  return chunks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python benchmarks/benchmark.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, default=None,
                 help="writes OUT/results.json (default "
                 "benchmarks/results/benchmark-PRESET)")
  p.add_argument("--quick", action="store_true",
                 help="smaller sizes and fewer repeats (< 5 min on 2 cores)")
  p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--widths", type=common.widths_arg,
                 default=common.CPU_WIDTHS,
                 help="small CNN widths (default 16,32,64)")
  p.add_argument("--no-torch", action="store_true",
                 help="time jaxue alone even if PyTorch is installed")
  p.add_argument("--threads", type=common.positive_int,
                 default=os.cpu_count() or 1,
                 help="PyTorch threads (default: os.cpu_count())")
  common.add_cpu_devices_flag(p)
  p.add_argument("--seed", type=int, default=0)
  overrides = p.add_argument_group(
      "size overrides (default: the --quick or full preset)")
  overrides.add_argument("--repeats", type=common.positive_int)
  overrides.add_argument("--batch-size", type=common.positive_int)
  overrides.add_argument("--em-images", type=common.positive_int)
  overrides.add_argument("--pgd-steps", type=common.positive_int)
  overrides.add_argument("--pue-draws", type=common.positive_int)
  overrides.add_argument("--pue-chunks", type=_chunks_arg,
                         help="comma list of draw_chunk values, integers or "
                         "'all' (full: 1,10; quick: 1,all)")
  overrides.add_argument("--jaxue-draws", type=common.positive_int)
  overrides.add_argument("--torch-draws", type=common.positive_int)
  overrides.add_argument("--test-size", type=common.positive_int)
  overrides.add_argument("--certify-batch", type=common.positive_int,
                         help="certification test batch (default: "
                         "jaxue.certify.default_batch_size())")
  overrides.add_argument("--matmul-size", type=common.positive_int)
  args = p.parse_args(argv)
  preset = "smoke" if args.smoke else "quick" if args.quick else "full"
  sizes = dataclasses.replace(PRESETS[preset], **{
      f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)
      if getattr(args, f.name, None) is not None})
  if sizes.em_images < sizes.batch_size:
    raise common.UsageError(
        f"--em-images ({sizes.em_images}) must be >= the batch size "
        f"({sizes.batch_size})")
  args.preset = preset
  if args.out is None:
    args.out = common.RESULTS / f"benchmark-{preset}"
  args.sizes = sizes
  return args


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def time_per_unit(fn: Callable[[], Any], *, repeats: int,
                  units: int = 1) -> list[float]:
  """Wall seconds per unit of ``repeats`` calls of ``fn`` (already warm).

  ``fn`` must wait for its results (`jax.block_until_ready`); each call does
  ``units`` units of work (steps, draws, ...).
  """
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) / units)
  return times


def matmul_gflops(n: int, repeats: int) -> dict[str, Any]:
  """float32 ``n x n @ n x n`` GFLOP/s in XLA (median of ``repeats``)."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), jnp.float32)
  b = jax.random.normal(key_b, (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  times = time_per_unit(lambda: jax.block_until_ready(matmul(a, b)),
                        repeats=max(repeats, 3))
  return {"size": n, "seconds": times,
          "gflops": 2 * n**3 / statistics.median(times) / 1e9}


def entry(unit: str, flops: float, jaxue_times: Sequence[float],
          torch_times: Sequence[float] | None, *,
          jaxue_flops: float | None = None, **details: Any
          ) -> dict[str, Any]:
  """One workload's JSON record (medians, ratio, achieved GFLOP/s).

  ``flops`` is the reference's work per unit; ``jaxue_flops`` jaxue's, where
  it skips some (the GFLOP/s are of the work each side does).
  """
  jaxue_s = statistics.median(jaxue_times)
  torch_s = statistics.median(torch_times) if torch_times else None
  jaxue_flops = flops if jaxue_flops is None else jaxue_flops
  return {
      "jaxue_s": jaxue_s,
      "torch_s": torch_s,
      "ratio": torch_s / jaxue_s if torch_s is not None else None,
      "gflops": jaxue_flops / jaxue_s / 1e9,
      "torch_gflops": flops / torch_s / 1e9 if torch_s is not None else None,
      "unit": unit,
      "flops_per_unit": flops,
      "jaxue_times": list(jaxue_times),
      "torch_times": list(torch_times) if torch_times else None,
      **details,
  }


# ---------------------------------------------------------------------------
# The PyTorch reference (optional dependency: imported lazily).
# ---------------------------------------------------------------------------


def import_torch():
  """The torch module, or None if PyTorch is not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return torch


def torch_small_cnn(widths: Sequence[int], *, in_channels: int = 1,
                    num_classes: int = NUM_CLASSES, bias: bool = True):
  """The small CNN in PyTorch (NCHW), as the reference code builds it.

  conv3x3 (with a bias, PyTorch's default, unless ``bias=False``) -
  BatchNorm2d (momentum 0.1, eps 1e-5) - ReLU - MaxPool2d(2) per width,
  AdaptiveAvgPool2d(1), Linear: the same function as
  ``jaxue.models.make_model("small_cnn", widths=widths)`` (with
  ``bias=False``, as ``"small_cnn_nobias"``).
  """
  from torch import nn  # pylint: disable=g-import-not-at-top
  layers, channels = [], in_channels
  for width in widths:
    layers += [nn.Conv2d(channels, width, 3, padding=1, bias=bias),
               nn.BatchNorm2d(width, eps=1e-5, momentum=0.1),
               nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    channels = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
             nn.Linear(channels, num_classes)]
  return nn.Sequential(*layers)


def has_conv_bias(variables: models.Variables) -> bool:
  """Whether small-CNN variables hold convolution biases ("small_cnn")
  or not ("small_cnn_nobias")."""
  return "bias" in variables["params"]["Conv_0"]


def load_jax_weights(module, variables: models.Variables) -> None:
  """Copies jaxue small-CNN variables into `torch_small_cnn` in place.

  Layouts: conv kernels HWIO -> OIHW, conv biases as they are, dense
  kernel (in, out) -> (out, in); batch-norm scale/bias/mean/var ->
  weight/bias/running_mean/running_var.
  """
  import torch  # pylint: disable=g-import-not-at-top
  params, stats = variables["params"], variables["batch_stats"]

  def tensor(x, *perm):
    x = np.array(x, np.float32)  # A writable copy.
    return torch.from_numpy(np.ascontiguousarray(x.transpose(*perm)))

  convs = [m for m in module if isinstance(m, torch.nn.Conv2d)]
  norms = [m for m in module if isinstance(m, torch.nn.BatchNorm2d)]
  (dense,) = [m for m in module if isinstance(m, torch.nn.Linear)]
  if (convs[0].bias is not None) != has_conv_bias(variables):
    raise ValueError(
        "variables and torch module disagree on convolution biases; build "
        "the module with torch_small_cnn(..., bias=has_conv_bias(variables))")
  with torch.no_grad():
    for i, (conv, norm) in enumerate(zip(convs, norms)):
      conv.weight.copy_(tensor(params[f"Conv_{i}"]["kernel"], 3, 2, 0, 1))
      if conv.bias is not None:
        conv.bias.copy_(tensor(params[f"Conv_{i}"]["bias"]))
      norm.weight.copy_(tensor(params[f"BatchNorm_{i}"]["scale"]))
      norm.bias.copy_(tensor(params[f"BatchNorm_{i}"]["bias"]))
      norm.running_mean.copy_(tensor(stats[f"BatchNorm_{i}"]["mean"]))
      norm.running_var.copy_(tensor(stats[f"BatchNorm_{i}"]["var"]))
    dense.weight.copy_(tensor(params["Dense_0"]["kernel"], 1, 0))
    dense.bias.copy_(tensor(params["Dense_0"]["bias"]))


def nchw(images: np.ndarray):
  """uint8 NHWC images -> float32 NCHW torch tensor in [0, 1]."""
  import torch  # pylint: disable=g-import-not-at-top
  x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
  return torch.from_numpy(np.ascontiguousarray(x))


class TorchReference:
  """The reference loops, written as the official PyTorch code runs them.

  Sources: the UE repository (Huang et al. 2021: ``trainer.py``
  ``train_batch``, ``toolbox.py`` ``min_min_attack``, ``perturbation.py``
  ``sample_wise_perturbation``) and the PUE repository (Wang et al. 2025:
  ``trainer.py`` ``train_batch_robust``, ``certify.py``).
  """

  def __init__(self, widths: Sequence[int], variables: models.Variables, *,
               threads: int):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.model = torch_small_cnn(widths, bias=has_conv_bias(variables))
    load_jax_weights(self.model, variables)
    self.optimizer = self.sgd()
    self.criterion = torch.nn.CrossEntropyLoss()

  def sgd(self):
    return self.torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE,
                                momentum=0.9, weight_decay=5e-4)

  def _requires_grad(self, flag: bool) -> None:
    for param in self.model.parameters():
      param.requires_grad = flag

  def train_batch(self, images, labels) -> None:
    """``Trainer.train_batch``: forward, backward, clip, step (train mode)."""
    self.model.zero_grad()
    self.optimizer.zero_grad()
    logits = self.model(images)
    loss = self.criterion(logits, labels)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
    self.optimizer.step()

  def train_steps(self, images, labels, batch_size: int, steps: int) -> None:
    """``steps`` SGD steps on consecutive batches (train mode)."""
    self.model.train()
    self._requires_grad(True)
    for s in range(steps):
      sl = slice(s * batch_size, (s + 1) * batch_size)
      self.train_batch(images[sl], labels[sl])

  def min_min_attack(self, images, labels, noise, steps: int):
    """``PerturbationTool.min_min_attack``: K signed descent steps."""
    torch = self.torch
    perturb = torch.clamp(images + noise, 0, 1).requires_grad_(True)
    eta = noise
    for _ in range(steps):
      opt = torch.optim.SGD([perturb], lr=1e-3)
      opt.zero_grad()
      self.model.zero_grad()
      logits = self.model(perturb)
      loss = self.criterion(logits, labels)
      perturb.retain_grad()
      loss.backward()
      eta = STEP_SIZE * perturb.grad.data.sign() * (-1)
      perturb = perturb.data + eta
      eta = torch.clamp(perturb - images, -EPSILON, EPSILON)
      perturb = torch.clamp(images + eta, 0, 1).requires_grad_(True)
    return perturb, eta

  def pgd(self, images, labels, noise, steps: int):
    """The sample-wise sweep's attack on one batch (eval mode, frozen)."""
    self.model.eval()
    self._requires_grad(False)
    return self.min_min_attack(images, labels, noise, steps)[1]

  def em_iteration(self, state: dict[str, Any], images, labels, *,
                   batch_size: int, train_steps: int, pgd_steps: int
                   ) -> float:
    """One ``sample_wise_perturbation`` iteration over a fixed subset.

    ``state`` holds the noise (N, C, H, W) and the position of the
    reference's unshuffled training iterator; returns the stop check's
    accuracy.
    """
    n = images.shape[0]
    noise = state["noise"]
    self.model.train()
    self._requires_grad(True)
    for _ in range(train_steps):
      if state["position"] + batch_size > n:
        state["position"] = 0
      sl = slice(state["position"], state["position"] + batch_size)
      state["position"] += batch_size
      self.train_batch(images[sl] + noise[sl], labels[sl])
    self.model.eval()
    self._requires_grad(False)
    for start in range(0, n, batch_size):
      sl = slice(start, start + batch_size)
      noise[sl] = self.min_min_attack(images[sl], labels[sl], noise[sl],
                                      pgd_steps)[1].detach()
    correct = 0
    for start in range(0, n, batch_size):
      sl = slice(start, start + batch_size)
      logits = self.model(images[sl] + noise[sl])
      correct += int((logits.argmax(1) == labels[sl]).sum())
    return correct / n

  def pue_step(self, images, labels, *, draws: int,
               levels: int, level_step: float) -> None:
    """``Trainer.train_batch_robust``: per level, ``draws`` perturbed
    forward/backward passes (accumulated, clipped after each), then one
    optimizer step."""
    torch = self.torch
    self.model.train()
    self._requires_grad(True)
    self.model.zero_grad()
    params = list(self.model.parameters())
    for j in range(levels):
      self.optimizer.zero_grad()
      for _ in range(draws):
        with torch.no_grad():
          noise = [level_step * j * torch.randn_like(p) for p in params]
          for p, xi in zip(params, noise):
            p.add_(xi)
        logits = self.model(images)
        loss = self.criterion(logits, labels) / (levels * draws)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        with torch.no_grad():
          for p, xi in zip(params, noise):
            p.sub_(xi)
      self.optimizer.step()

  def certify_draw(self, images, labels, *, sigma: float,
                   batch_size: int) -> float:
    """One certification draw: perturb in place, score the test set,
    restore (eval mode; ``no_grad``, which the reference omits)."""
    torch = self.torch
    self.model.eval()
    params = list(self.model.parameters())
    correct = 0
    with torch.no_grad():
      noise = [sigma * torch.randn_like(p) for p in params]
      for p, xi in zip(params, noise):
        p.add_(xi)
      for start in range(0, images.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        logits = self.model(images[sl])
        correct += int((logits.argmax(1) == labels[sl]).sum())
      for p, xi in zip(params, noise):
        p.sub_(xi)
    return correct / images.shape[0]


# ---------------------------------------------------------------------------
# FLOP counts (the model's, with XLA's convolutions).
# ---------------------------------------------------------------------------


class Flops:
  """Per-batch FLOPs of the model's building blocks (XLA cost analysis)."""

  def __init__(self, widths: Sequence[int], variables: models.Variables):
    self.model = models.make_model("small_cnn", widths=widths,
                                   conv_impl="lax")
    self.variables = variables  # Same layout for every conv impl.
    tx = train_lib.make_optimizer(LEARNING_RATE)
    self.state = train_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]), apply_fn=self.model.apply,
        tx=tx)

  @functools.cache
  def sgd_step(self, batch: int) -> float:
    """One `train_step`: train-mode forward, backward, optimizer update."""
    x = jnp.zeros((batch, *IMAGE_SHAPE), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    return xla_flops(
        lambda s, x, y, k: train_lib.train_step(s, (x, y), k),
        self.state, x, y, jax.random.key(0))

  @functools.cache
  def pgd_step(self, batch: int) -> float:
    """One input gradient of the eval-mode loss."""
    x = jnp.zeros((batch, *IMAGE_SHAPE), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    return xla_flops(
        lambda s, x, y: jax.grad(
            lambda x: noise_lib.eval_loss(s, x, y, None))(x),
        self.state, x, y)

  @functools.cache
  def forward(self, batch: int) -> float:
    """One eval-mode forward pass."""
    x = jnp.zeros((batch, *IMAGE_SHAPE), jnp.float32)
    return xla_flops(lambda v, x: self.model.apply(v, x, False)[0],
                     self.variables, x)


# ---------------------------------------------------------------------------
# The workloads.
# ---------------------------------------------------------------------------


def _new_state(model: models.Model, key: jax.Array) -> train_lib.TrainState:
  return train_lib.create_train_state(key, model, IMAGE_SHAPE,
                                      train_lib.make_optimizer(LEARNING_RATE))


def bench_sgd(ctx: dict[str, Any], batch: int) -> dict[str, Any]:
  """Surrogate SGD steps: `train_epoch` (a scan) vs ``train_batch``."""
  sizes: Sizes = ctx["sizes"]
  steps = sizes.sgd_steps
  n = steps * batch
  images, labels = ctx["images"][:n], ctx["labels"][:n]
  holder = {"state": _new_state(ctx["model"], jax.random.key(1))}
  x, y = jnp.asarray(images), jnp.asarray(labels)

  def run_jaxue():
    holder["state"], metrics = train_lib.train_epoch(
        holder["state"], x, y, jax.random.key(2), batch_size=batch)
    jax.block_until_ready(metrics)

  run_jaxue()  # Compile.
  jaxue_times = time_per_unit(run_jaxue, repeats=sizes.repeats, units=steps)
  torch_times = None
  ref = ctx["torch"]
  if ref is not None:
    tx, ty = nchw(images), ref.torch.from_numpy(labels.astype(np.int64))
    run_torch = lambda: ref.train_steps(tx, ty, batch, steps)
    run_torch()  # Warm-up (allocator, kernels).
    torch_times = time_per_unit(run_torch, repeats=sizes.repeats,
                                units=steps)
  return entry("step", ctx["flops"].sgd_step(batch), jaxue_times,
               torch_times, batch_size=batch, steps_per_call=steps,
               jaxue_path="jaxue.train.train_epoch (lax.scan)")


def bench_pgd(ctx: dict[str, Any]) -> dict[str, Any]:
  """PGD input-gradient steps in eval mode on one batch."""
  sizes: Sizes = ctx["sizes"]
  batch, steps = sizes.batch_size, sizes.pgd_steps
  images, labels = ctx["images"][:batch], ctx["labels"][:batch]
  state = _new_state(ctx["model"], jax.random.key(1))
  cfg = noise_lib.EMConfig(epsilon=EPSILON, step_size=STEP_SIZE,
                           pgd_steps=steps).resolved()
  x = train_lib.as_float(jnp.asarray(images))
  y = jnp.asarray(labels)
  delta = jnp.zeros_like(x)
  pgd = jax.jit(functools.partial(noise_lib.pgd_noise_step, cfg=cfg,
                                  noise_loss=noise_lib.eval_loss))
  run_jaxue = lambda: jax.block_until_ready(
      pgd(state, x, y, delta, jax.random.key(3)))
  run_jaxue()
  jaxue_times = time_per_unit(run_jaxue, repeats=sizes.repeats, units=steps)
  torch_times = None
  ref = ctx["torch"]
  if ref is not None:
    tx, ty = nchw(images), ref.torch.from_numpy(labels.astype(np.int64))
    t_noise = ref.torch.zeros_like(tx)
    run_torch = lambda: ref.pgd(tx, ty, t_noise, steps)
    run_torch()
    torch_times = time_per_unit(run_torch, repeats=sizes.repeats,
                                units=steps)
  return entry("PGD step", ctx["flops"].pgd_step(batch), jaxue_times,
               torch_times, batch_size=batch, steps_per_call=steps,
               jaxue_path="jaxue.noise.pgd_noise_step (fori_loop)")


def bench_em(ctx: dict[str, Any]) -> dict[str, Any]:
  """One sample-wise EM outer iteration over a fixed subset."""
  sizes: Sizes = ctx["sizes"]
  n, batch = sizes.em_images, sizes.batch_size
  images, labels = ctx["images"][:n], ctx["labels"][:n]
  cfg = noise_lib.EMConfig(
      mode="samplewise", epsilon=EPSILON, step_size=STEP_SIZE,
      pgd_steps=sizes.pgd_steps, train_steps=sizes.em_train_steps,
      batch_size=batch, max_rounds=1).resolved()
  noise_step = functools.partial(noise_lib.pgd_noise_step, cfg=cfg,
                                 noise_loss=noise_lib.eval_loss)
  x = train_lib.as_float(jnp.asarray(images))
  y = jnp.asarray(labels)
  subset = jnp.arange(n, dtype=jnp.int32)
  holder = {"state": _new_state(ctx["model"], jax.random.key(1)),
            "noise": jnp.zeros_like(x), "round": 0}

  def run_jaxue():
    # pylint: disable-next=protected-access
    state, noise, accuracy, _ = noise_lib._em_round(
        holder["state"], holder["noise"],
        jax.random.fold_in(jax.random.key(4), holder["round"]), x, y, subset,
        cfg=cfg, surrogate_step=train_lib.train_step, noise_step=noise_step)
    jax.block_until_ready(accuracy)
    holder.update(state=state, noise=noise, round=holder["round"] + 1)

  run_jaxue()
  jaxue_times = time_per_unit(run_jaxue, repeats=sizes.repeats)
  torch_times = None
  ref = ctx["torch"]
  if ref is not None:
    tx, ty = nchw(images), ref.torch.from_numpy(labels.astype(np.int64))
    t_state = {"noise": ref.torch.zeros_like(tx), "position": 0}
    run_torch = lambda: ref.em_iteration(
        t_state, tx, ty, batch_size=batch,
        train_steps=sizes.em_train_steps, pgd_steps=sizes.pgd_steps)
    run_torch()
    torch_times = time_per_unit(run_torch, repeats=sizes.repeats)
  batches = -(-n // batch)
  flops = (sizes.em_train_steps * ctx["flops"].sgd_step(batch)
           + batches * sizes.pgd_steps * ctx["flops"].pgd_step(batch)
           + batches * ctx["flops"].forward(batch))
  return entry("iteration", flops, jaxue_times, torch_times,
               images=n, batch_size=batch, train_steps=sizes.em_train_steps,
               pgd_steps=sizes.pgd_steps,
               jaxue_path="jaxue.noise._em_round (one craft round)")


def bench_pue(ctx: dict[str, Any]) -> dict[str, Any]:
  """PUE's robust surrogate step (levels x draws)."""
  sizes: Sizes = ctx["sizes"]
  batch, draws = sizes.batch_size, sizes.pue_draws
  levels = len(PUE.levels())
  images, labels = ctx["images"][:batch], ctx["labels"][:batch]
  x = train_lib.as_float(jnp.asarray(images))
  y = jnp.asarray(labels)
  per_chunk = {}
  for chunk in dict.fromkeys(sizes.pue_chunks):
    draw_chunk = draws if chunk == "all" else min(int(chunk), draws)
    pue = PUE._replace(surrogate_draws=draws, draw_chunk=draw_chunk).check()
    step = jax.jit(functools.partial(pue_lib.robust_surrogate_step,
                                     pue=pue), donate_argnums=(0,))
    holder = {"state": _new_state(ctx["model"], jax.random.key(1)), "i": 0}

    def run_jaxue(step=step, holder=holder):
      holder["state"], metrics = step(
          holder["state"], (x, y),
          jax.random.fold_in(jax.random.key(5), holder["i"]))
      holder["i"] += 1
      jax.block_until_ready(metrics)

    run_jaxue()
    per_chunk[chunk] = time_per_unit(run_jaxue, repeats=sizes.repeats)
    print(f"  pue_surrogate_step draw_chunk {chunk}: "
          f"{statistics.median(per_chunk[chunk]):.3f} s/step", flush=True)
  best = min(per_chunk, key=lambda c: statistics.median(per_chunk[c]))
  torch_times = None
  ref = ctx["torch"]
  if ref is not None:
    tx, ty = nchw(images), ref.torch.from_numpy(labels.astype(np.int64))
    run_torch = lambda: ref.pue_step(tx, ty, draws=draws, levels=levels,
                                     level_step=PUE.sigma_step)
    run_torch()
    torch_times = time_per_unit(run_torch, repeats=sizes.repeats)
  # Level 0 (sigma = 0) is one pass in jaxue, `draws` in the reference.
  torch_passes, jaxue_passes = levels * draws, (levels - 1) * draws + 1
  pass_flops = ctx["flops"].sgd_step(batch)
  return entry(f"step ({levels}x{draws} draws)", torch_passes * pass_flops,
               per_chunk[best], torch_times,
               jaxue_flops=jaxue_passes * pass_flops,
               batch_size=batch, levels=levels, draws_per_level=draws,
               torch_passes=torch_passes, jaxue_passes=jaxue_passes,
               best_draw_chunk=best,
               draw_chunk_s={c: statistics.median(t)
                             for c, t in per_chunk.items()},
               jaxue_path="jaxue.pue.robust_surrogate_step (vmapped draws)")


def bench_certify(ctx: dict[str, Any], batch: int) -> dict[str, Any]:
  """Certification draws over the test set (seconds per draw), both sides
  in test batches of ``batch``.

  jaxue runs as its certification does by default: draws sharded over
  every device (on a CPU host, one device per core: ``--cpu-devices``).
  With more than one device, one device's time is recorded too
  (``single_device_s``).
  """
  sizes: Sizes = ctx["sizes"]
  n = sizes.test_size
  images, labels = ctx["test_images"], ctx["test_labels"]
  chunk = certify.default_chunk_size()
  variables = ctx["variables"]
  holder = {"first": 0}

  def time_jaxue(mesh):
    devices = 1 if mesh is None else mesh.size
    block = chunk * 4 * devices  # sample_accuracies' chunks_per_block = 4.
    per_call = max(block, sizes.jaxue_draws // sizes.repeats // block * block)
    calls = max(1, sizes.jaxue_draws // per_call)

    def run(draws=per_call):
      accuracies = certify.sample_accuracies(
          jax.random.key(6), ctx["model"].apply, variables, images, labels,
          sigma=CERTIFY_SIGMA, num_draws=draws, first_draw=holder["first"],
          chunk_size=chunk, batch_size=batch, mesh=mesh)
      holder["first"] += draws
      return accuracies

    run(block)  # Compile (one block).
    return time_per_unit(run, repeats=calls, units=per_call), calls * per_call

  mesh = common.draw_mesh()
  jaxue_times, jaxue_draws = time_jaxue(mesh)
  single = None
  if mesh is not None:
    single_times, _ = time_jaxue(None)
    single = statistics.median(single_times)
  torch_times = None
  ref = ctx["torch"]
  if ref is not None:
    tx, ty = nchw(images), ref.torch.from_numpy(labels.astype(np.int64))
    run_torch = lambda: ref.certify_draw(tx, ty, sigma=CERTIFY_SIGMA,
                                         batch_size=batch)
    run_torch()
    torch_times = time_per_unit(run_torch, repeats=sizes.torch_draws)
  flops = -(-n // batch) * ctx["flops"].forward(batch)
  result = entry(f"draw ({n:,} images)", flops, jaxue_times, torch_times,
                 test_size=n,
                 batch_size=batch, chunk_size=chunk,
                 devices=1 if mesh is None else mesh.size,
                 single_device_s=single,
                 jaxue_draws=jaxue_draws,
                 torch_draws=sizes.torch_draws if ref is not None else None,
                 jaxue_path="jaxue.certify.sample_accuracies"
                 + ("" if mesh is None else
                    f" (draws sharded over {mesh.size} devices)"))
  result["jaxue_draws_per_s"] = 1.0 / result["jaxue_s"]
  result["torch_draws_per_s"] = (1.0 / result["torch_s"]
                                 if result["torch_s"] else None)
  if single is not None:
    result["single_device_gflops"] = flops / single / 1e9
    result["single_device_ratio"] = (result["torch_s"] / single
                                     if result["torch_s"] else None)
  return result


def certify_sizing(draws_per_s: float, torch_draws_per_s: float | None
                   ) -> list[dict[str, Any]]:
  """Draws that certify each eta (sigma 0.25, q 0.9, c 0.99) and the time
  they take at the measured throughputs."""
  rows = []
  for eta in SIZING_ETAS:
    draws = certify.min_draws(eta=eta, **SIZING)
    rows.append({
        "eta": eta, "draws": draws,
        "jaxue_seconds": draws / draws_per_s,
        "torch_seconds": (draws / torch_draws_per_s
                          if torch_draws_per_s else None)})
  return rows


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
    if seconds >= size:
      return f"{seconds / size:.1f} {unit}"
  return f"{seconds:.1f} s"


def _seconds(value: float | None) -> str:
  if value is None:
    return "-"
  return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.3f} s"


def meets_target(name: str, result: dict[str, Any],
                 peak: float) -> bool | None:
  """Whether the issue's target holds (None: no target or no PyTorch)."""
  if name not in TARGETS or result["ratio"] is None:
    return None
  ok = result["ratio"] >= TARGETS[name]
  if name == "certify":
    ok = ok and result["gflops"] >= CERTIFY_PEAK_FRACTION * peak
  return ok


@common.cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  common.request_cpu_devices(args)
  sizes: Sizes = args.sizes
  torch = None if args.no_torch else import_torch()
  if torch is None:
    print("PyTorch not timed (" + ("--no-torch" if args.no_torch else
          "not installed: pip install torch==2.13.0") + "); jaxue only.")
  if jax.default_backend() != "cpu" and torch is not None:
    print(f"note: jaxue runs on {jax.default_backend()}, PyTorch on the CPU.")
  rng = np.random.default_rng(args.seed)
  train_n = max(sizes.em_images,
                sizes.sgd_steps * max(sizes.batch_size,
                                      sizes.extra_batch_size or 0))
  model = models.make_model("small_cnn", widths=args.widths)
  variables = model.init(jax.random.key(args.seed), IMAGE_SHAPE)
  ctx = {
      "sizes": sizes, "model": model, "variables": variables,
      "images": rng.integers(0, 256, (train_n, *IMAGE_SHAPE), np.uint8),
      "labels": rng.integers(0, NUM_CLASSES, train_n).astype(np.int32),
      "test_images": rng.integers(0, 256, (sizes.test_size, *IMAGE_SHAPE),
                                  np.uint8),
      "test_labels": rng.integers(0, NUM_CLASSES,
                                  sizes.test_size).astype(np.int32),
      "flops": Flops(args.widths, variables),
      "torch": (TorchReference(args.widths, variables, threads=args.threads)
                if torch is not None else None),
  }
  print(f"model {model.name}, batch {sizes.batch_size}, preset "
        f"{args.preset}, {os.cpu_count()} CPUs, torch threads "
        f"{args.threads if torch is not None else '-'}", flush=True)
  load_before = _load_average()
  if load_before is not None and load_before > 0.5 * (os.cpu_count() or 1):
    print(f"warning: load average {load_before:.1f} on {os.cpu_count()} "
          "CPUs: other processes compete for the cores, which slows "
          "PyTorch's OpenMP threads badly; time on a quiet machine.")
  start = time.perf_counter()
  matmul = matmul_gflops(sizes.matmul_size, sizes.repeats)
  print(f"matmul {sizes.matmul_size}^3: {matmul['gflops']:.1f} GFLOP/s",
        flush=True)
  certify_batch = sizes.certify_batch or certify.default_batch_size()
  benches = {
      "sgd_step": lambda: bench_sgd(ctx, sizes.batch_size),
      "pgd_step": lambda: bench_pgd(ctx),
      "em_iteration": lambda: bench_em(ctx),
      "pue_surrogate_step": lambda: bench_pue(ctx),
      "certify": lambda: bench_certify(ctx, certify_batch),
  }
  if sizes.extra_batch_size:
    benches[f"sgd_step_b{sizes.extra_batch_size}"] = (
        lambda: bench_sgd(ctx, sizes.extra_batch_size))
  for extra_batch in sizes.extra_certify_batches:
    if extra_batch != certify_batch:
      benches[f"certify_b{extra_batch}"] = functools.partial(
          bench_certify, ctx, extra_batch)
  workloads, extra = {}, {}
  for name, bench in benches.items():
    wall = time.perf_counter()
    r = bench()
    r["wall_s"] = time.perf_counter() - wall  # Compiles and warm-ups too.
    (workloads if name in WORKLOADS else extra)[name] = r
    print(f"{name}: jaxue {_seconds(r['jaxue_s'])}/{r['unit']}, torch "
          f"{_seconds(r['torch_s'])} ({r['wall_s']:.0f} s)", flush=True)
  # Measured again at the end and the faster kept: on a shared machine the
  # rate drifts, and a slow first measurement would flatter every fraction.
  matmul_end = matmul_gflops(sizes.matmul_size, sizes.repeats)
  peak = max(matmul["gflops"], matmul_end["gflops"])
  for name, r in {**workloads, **extra}.items():
    r["fraction_of_matmul"] = r["gflops"] / peak
    r["target_ratio"] = TARGETS.get(name)
    r["meets_target"] = meets_target(name, r, peak)
  cert = workloads["certify"]
  # PyTorch's fastest test batch, for a ratio that does not depend on the
  # two sides preferring the same batch size.
  torch_certify = {r["batch_size"]: r["torch_s"]
                   for n, r in {**workloads, **extra}.items()
                   if n.startswith("certify") and r["torch_s"]}
  if torch_certify:
    best_batch = min(torch_certify, key=torch_certify.get)
    cert["torch_best_batch"] = best_batch
    cert["ratio_vs_torch_best_batch"] = (torch_certify[best_batch]
                                         / cert["jaxue_s"])
  sizing = certify_sizing(cert["jaxue_draws_per_s"],
                          cert["torch_draws_per_s"])
  rows = []
  for name, r in {**workloads, **extra}.items():
    rows.append([
        name, r["unit"], _seconds(r["jaxue_s"]), _seconds(r["torch_s"]),
        "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
        f"{r['gflops']:.1f}", f"{100 * r['fraction_of_matmul']:.0f}%",
        "-" if r["target_ratio"] is None else (
            f">= {r['target_ratio']:g}x"
            + (" + 50% peak" if name == "certify" else "")
            + {True: " ok", False: " MISSED", None: ""}[r["meets_target"]])])
  print()
  text = common.print_table(rows, [
      "workload", "unit", "jaxue", "torch", "torch/jaxue", "GFLOP/s",
      "of matmul", "target"])
  print(f"\nmatmul peak {peak:.1f} GFLOP/s; certification: "
        f"{cert['jaxue_draws_per_s']:.2f} draws/s jaxue"
        + (f", {cert['torch_draws_per_s']:.2f} draws/s torch"
           if cert["torch_draws_per_s"] else "")
        + f" ({cert['test_size']} test images)")
  if "torch_best_batch" in cert:
    print(f"certify against PyTorch's fastest batch "
          f"({cert['torch_best_batch']}): "
          f"{cert['ratio_vs_torch_best_batch']:.2f}x")
  for name, r in {**workloads, **extra}.items():
    if r.get("single_device_s"):
      print(f"{name} on one of the {r['devices']} devices: "
            f"{_seconds(r['single_device_s'])}/draw, "
            f"{r['single_device_gflops'] / peak:.0%} of matmul"
            + (f", {r['single_device_ratio']:.2f}x torch"
               if r["single_device_ratio"] else ""))
  print(f"\nDraws to certify eta at sigma {SIZING['sigma']}, q "
        f"{SIZING['q']}, c {SIZING['confidence']}:")
  common.print_table(
      [[s["eta"], f"{s['draws']:,}", _duration(s["jaxue_seconds"]),
        _duration(s["torch_seconds"])] for s in sizing],
      ["eta", "draws N", "jaxue time", "torch time"])
  out = {
      "workloads": workloads,
      "extra_workloads": extra,
      "matmul_gflops": peak,
      "matmul": matmul,
      "matmul_end": matmul_end,
      "certify_sizing": sizing,
      "table": text,
      "model": model.name,
      "preset": args.preset,
      "sizes": dataclasses.asdict(sizes),
      "torch_version": torch.__version__ if torch is not None else None,
      "torch_threads": (torch.get_num_threads() if torch is not None
                        else None),
      "jax_devices": jax.device_count(),
      "flops_counted_by": "XLA cost analysis (conv impl 'lax', CPU backend)",
      "seconds_total": time.perf_counter() - start,
      "load_average": {"before": load_before, "after": _load_average()},
      **common.metadata(args, __file__, argv),
  }
  out["config"].pop("sizes", None)
  out["device"] = out["device"] + _cpu_model()
  runs.write_json(args.out / "results.json", out)
  print(f"\nwrote {args.out / 'results.json'} "
        f"({out['seconds_total']:.0f} s)")
  return out


def _load_average() -> float | None:
  """The 1-minute load average, or None where the OS has none."""
  try:
    return os.getloadavg()[0]
  except (AttributeError, OSError):
    return None


def _cpu_model() -> str:
  """`` (CPU model name)`` from /proc/cpuinfo, or empty."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return f" ({line.split(':', 1)[1].strip()})"
  except OSError:
    pass
  return ""


if __name__ == "__main__":
  main()
