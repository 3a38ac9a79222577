"""Certified (q, η)-learnability by Monte-Carlo parameter smoothing.

Implements the certification of Wang et al., "Provably Unlearnable Data
Examples", NDSS 2025 (arXiv 2405.03316), section "Certified
(q, η)-Learnability" (the quantile bound under parameter smoothing) and its
Monte-Carlo certification procedure (sections are cited by name; their
numbers were not checked against the published version):

1. Device side: `sample_accuracies` draws ξ_1..ξ_N ~ N(0, σ²I) over the
   trainable parameters of a surrogate θ̂ (batch-norm statistics are left
   alone) and measures the accuracy of θ̂ + ξ_i on the whole test set. The
   surrogate can be any classifier: a jaxue `Model`, a plain
   ``apply(params, x) -> logits``, a flax linen or NNX module
   (`as_logits_fn`), with an optional ``preprocess`` of the images.
2. Host side: `certified_learnability` turns the sorted accuracies into an
   upper confidence bound a_(k) on the q̄-quantile of the smoothed accuracy,
   q̄ = Φ(Φ⁻¹(q) + η/σ), which bounds the q-quantile for every θ′ with
   ‖θ′ − θ̂‖₂ ≤ η. `learnability_curve` does this over a grid of η, optionally
   with a bound that holds for the whole curve at once (beyond the paper).
3. Host side, beyond the paper: `expected_learnability_curve` bounds the
   expected smoothed accuracy E_ξ acc(θ′ + ξ) of every θ′ in the η-ball
   from an upper confidence bound on the mean accuracy (the betting bound
   of Waudby-Smith & Ramdas 2024, or Maurer & Pontil's empirical
   Bernstein) and the Lipschitz property of Φ⁻¹ of a smoothed function
   (Salman et al., NeurIPS 2019). `check_target` and `look_schedule`
   certify a target η sequentially: α-spending over a fixed schedule of
   looks for the quantile bound, the betting confidence sequence for the
   expected one.

Reference quirks fixed here (docs/design.md, "Deviations from the reference
code"): the whole test set is scored (no `drop_last`), and every draw perturbs
a fresh copy of θ̂ (no in-place add and subtract, so no floating-point drift
between draws).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import stats

from jaxue import models as models_lib

__all__ = [
    "DEFAULT_ETAS",
    "MEAN_BOUNDS",
    "PUBLISHED_ETAS",
    "TARGET_BOUNDS",
    "CertificationCurve",
    "ExpectedCurve",
    "Look",
    "check_target",
    "expected_learnability_curve",
    "expected_level",
    "look_confidence",
    "look_schedule",
    "mean_upper_bound",
    "certified_learnability",
    "certified_rank",
    "default_batch_size",
    "default_chunk_size",
    "learnability_curve",
    "min_draws",
    "perturb_params",
    "quantile_level",
    "sample_accuracies",
    "as_logits_fn",
    "uint8_to_unit",
]

# η grid of the reference's certification script (Wang et al. 2025,
# ``certify.py`` of the authors' repository; σ = 0.25, q = 0.9).
PUBLISHED_ETAS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7,
    0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0)

# The default grid: the published one plus η = 0.02 (between 0.01 and 0.05,
# where certificates at a small σ such as 0.05 end) and η = 0.75 (the
# largest radius that benchmarks/benchmark.py sizes certification runs for).
DEFAULT_ETAS: tuple[float, ...] = tuple(sorted(
    set(PUBLISHED_ETAS) | {0.02, 0.75}))

ApplyFn = Callable[..., tuple[jax.Array, Any]]
# A model in the form the sampler runs: ``logits_fn(params, rest, images)``,
# eval mode, with ``params`` the smoothed (trainable) part of its state and
# ``rest`` the part left alone (batch-norm statistics, RNG state).
LogitsFn = Callable[[Any, Any, jax.Array], jax.Array]
Preprocess = Callable[[jax.Array], jax.Array]

_SEARCH_WINDOW = 1 << 16


# ----------------------------------------------------------------------------
# Device side: Monte-Carlo accuracies of θ̂ + ξ.
# ----------------------------------------------------------------------------


def perturb_params(key: jax.Array, params: Any,
                   sigma: float | jax.Array) -> Any:
  """Returns params + ξ, ξ ~ N(0, σ²I) over every leaf (parameter smoothing).

  ξ is one flat standard-normal draw from `key` (in the widest floating dtype
  of the leaves, at least float32), split over the leaves in flattening
  order, so it is a deterministic function of (key, tree structure). One draw
  for the whole tree rather than one per leaf: on XLA:CPU every threefry call
  costs about a second of compile time, which a ResNet's ~60 leaves would
  multiply. Only pass the trainable parameters: batch-norm statistics are not
  perturbed in the certification.

  Args:
    key: a typed PRNG key.
    params: a pytree of floating-point arrays.
    sigma: the noise standard deviation σ (> 0; may be traced).

  Returns:
    A pytree like `params` (same shapes and dtypes) with the noise added.
  """
  if isinstance(sigma, numbers.Real) and not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma}")
  leaves, treedef = jax.tree.flatten(params)
  leaves = [jnp.asarray(leaf) for leaf in leaves]
  dtype = jnp.float32
  for j, leaf in enumerate(leaves):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise ValueError(
          f"params leaf {j} has non-floating dtype {leaf.dtype}; pass only "
          "trainable (floating-point) parameters")
    dtype = jnp.promote_types(dtype, leaf.dtype)
  if not leaves:
    return params
  sizes = [leaf.size for leaf in leaves]
  noise = jax.random.normal(key, (sum(sizes),), dtype)
  noise = noise * jnp.asarray(sigma, dtype)
  noisy, offset = [], 0
  for leaf, size in zip(leaves, sizes):
    xi = noise[offset:offset + size].reshape(leaf.shape).astype(leaf.dtype)
    noisy.append(leaf + xi)
    offset += size
  return jax.tree.unflatten(treedef, noisy)


def _on_cpu(backend: str | None) -> bool:
  """Whether ``backend`` (default `jax.default_backend()`) is the CPU."""
  return (jax.default_backend() if backend is None else backend).lower() == (
      "cpu")


def default_chunk_size(backend: str | None = None) -> int:
  """Draws vmapped together per device: 1 on CPU, 16 on GPU/TPU.

  On XLA:CPU a wide vmap of convolutions with per-draw weights was ~8x slower
  per draw than one draw at a time. On an H100 (small CNN, 28x28) chunk 16
  gave 3.1x the draws/s of chunk 1 with 250-image batches and the same with
  1000-image batches (the GPU is already full); 64 added ~10%.

  Args:
    backend: "cpu", "gpu", "cuda", "rocm", "tpu", ...; default
      `jax.default_backend()`.
  """
  return 1 if _on_cpu(backend) else 16


def default_batch_size(backend: str | None = None) -> int:
  """Test images per forward pass: 50 on CPU, 1000 on GPU/TPU.

  On XLA:CPU small batches keep the activations in the cores' caches. On 2
  cores (small CNN 16/32/64, 28x28, chunk 1, a draw over 10,000 images):
  an Intel Xeon ran 100 and 200 alike (0.54-0.55 s) against 0.74 s at
  1000; once the first layer became an im2col product, 200 was 1.7x slower
  than 100 and 50 about 5% faster. An AMD EPYC (1 MiB of L2 per core), with
  draws sharded over 2 CPU devices, ran medians of 343-352 ms a draw at
  100, 290-323 ms at 50 and 259-300 ms at 25 (2 alternating rounds of 3
  calls). 50 is the smallest size measured faster than 100 on both.
  Accelerators need large batches to fill.

  Args:
    backend: as in `default_chunk_size`.
  """
  return 50 if _on_cpu(backend) else 1000


# ----------------------------------------------------------------------------
# Models: jaxue apply functions, plain apply functions, linen and NNX modules.
# ----------------------------------------------------------------------------

# Keyword arguments that put a module's __call__ in eval mode, if it takes
# them (batch norm then uses its running statistics, dropout is off).
_EVAL_KWARGS = (("train", False), ("training", False),
                ("deterministic", True), ("use_running_average", True))


def _first(out: Any) -> jax.Array:
  """The logits of ``logits`` or of jaxue's ``(logits, batch_stats)``."""
  return out[0] if isinstance(out, (tuple, list)) else out


def uint8_to_unit(images: jax.Array) -> jax.Array:
  """The default preprocessing: uint8 pixels to float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


@functools.lru_cache(maxsize=64)
def _linen_logits(module: nn.Module) -> LogitsFn:
  try:
    parameters = inspect.signature(module.__call__).parameters
  except (TypeError, ValueError):
    parameters = {}
  kwargs = {k: v for k, v in _EVAL_KWARGS if k in parameters}

  def logits_fn(params, rest, images):
    return _first(module.apply({**rest, "params": params}, images, **kwargs))

  return logits_fn


@functools.lru_cache(maxsize=64)
def _nnx_logits(graphdef: Any) -> LogitsFn:

  def logits_fn(params, rest, images):
    model = nnx.merge(graphdef, params, rest)
    model.eval()  # A traced copy: the caller's module is not touched.
    return _first(model(images))

  return logits_fn


def _takes_train(fn: Callable[..., Any]) -> bool:
  """Whether ``fn(variables, images, False)`` binds (jaxue's form)."""
  try:
    inspect.signature(fn).bind(None, None, False)
  except TypeError:
    return False
  except ValueError:  # No signature to read: assume jaxue's form.
    return True
  return True


@functools.lru_cache(maxsize=64)
def _callable_logits(fn: Callable[..., Any], nested: bool) -> LogitsFn:
  three = _takes_train(fn)

  def logits_fn(params, rest, images):
    variables = {**rest, "params": params} if nested else params
    return _first(fn(variables, images, False) if three
                  else fn(variables, images))

  return logits_fn


def _is_nnx(model: Any) -> bool:
  return isinstance(model, nnx.Module)


def as_logits_fn(model: Any, variables: Any = None
                 ) -> tuple[LogitsFn, Any, Any]:
  """Splits a model into what the sampler runs: ``(logits_fn, params,
  rest)``, ``logits_fn(params, rest, images) -> logits`` in eval mode.

  Only ``params`` (the trainable parameters) is smoothed. Accepted models:

  * a jaxue `Model` or its ``apply(variables, images, train) -> (logits,
    batch_stats)``;
  * a plain ``apply(params, images) -> logits``;
  * a flax linen module (``module.apply(variables, images)``, with
    ``train=False`` / ``training=False`` / ``deterministic=True`` /
    ``use_running_average=True`` when its ``__call__`` takes one);
  * a flax NNX module (``variables`` None): `nnx.split` into the
    `nnx.Param` leaves and the rest, merged and put in eval mode
    (``.eval()``) inside the jitted function.

  For the first three, if ``variables`` is a mapping with a ``"params"``
  entry (flax's ``{"params": ..., "batch_stats": ...}``) only that entry is
  smoothed; otherwise every leaf of ``variables`` is.
  """
  if _is_nnx(model):
    if variables is not None:
      raise ValueError("an NNX module holds its own parameters: pass "
                       "variables=None (or call sample_accuracies(key, "
                       "module, images, labels, ...))")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return _nnx_logits(graphdef), params, rest
  if isinstance(model, models_lib.Model):
    model = model.apply
  if variables is None:
    raise ValueError("variables is required for this model (only an NNX "
                     "module holds its own parameters)")
  nested = isinstance(variables, Mapping) and "params" in variables
  if isinstance(model, nn.Module):
    if not nested:
      raise ValueError("variables of a linen module must be a dict with a "
                       "'params' entry (what module.init returns)")
    fn = _linen_logits(model)
  elif callable(model):
    fn = _callable_logits(model, nested)
  else:
    raise ValueError(
        f"model must be an apply function, a flax linen or NNX module, or "
        f"a jaxue Model, got {type(model).__name__}")
  if nested:
    rest = {k: v for k, v in variables.items() if k != "params"}
    return fn, variables["params"], rest
  return fn, variables, {}


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


@functools.lru_cache(maxsize=32)
def _block_fn(logits_fn: LogitsFn, preprocess: Preprocess, key_impl: str,
              block_size: int, chunk_size: int, mesh: Mesh | None,
              draw_axis: str, data_axis: str | None,
              precision: str | None) -> Callable[..., jax.Array]:
  """One jitted call: correct counts of draws start .. start + block_size."""

  per_dev = block_size if mesh is None else block_size // mesh.shape[draw_axis]

  def count_correct(key_data, sigma, start, params, rest, images, labels):
    key = jax.random.wrap_key_data(key_data, impl=key_impl)
    if mesh is not None:  # This device's draws: a contiguous slice.
      start = start + jax.lax.axis_index(draw_axis) * per_dev
    idx = start + jnp.arange(per_dev, dtype=jnp.int32)

    def single_draw(i):
      noisy = perturb_params(jax.random.fold_in(key, i), params, sigma)

      def batch_correct(batch):
        x, y = batch
        with jax.default_matmul_precision(precision):
          logits = logits_fn(noisy, rest, preprocess(x))
        # Padded labels are -1 and never match a prediction.
        hit = jnp.argmax(logits, axis=-1).astype(jnp.int32) == y
        return jnp.sum(hit, dtype=jnp.int32)

      total = jnp.sum(jax.lax.map(batch_correct, (images, labels)))
      if data_axis is not None:
        total = jax.lax.psum(total, data_axis)
      return total

    if chunk_size == 1:
      return jax.lax.map(single_draw, idx)
    return jax.lax.map(single_draw, idx, batch_size=chunk_size)

  if mesh is None:
    return jax.jit(count_correct)
  data_spec = P(None, data_axis)
  return jax.jit(jax.shard_map(
      count_correct, mesh=mesh,
      in_specs=(P(), P(), P(), P(), P(), data_spec, data_spec),
      out_specs=P(draw_axis)))


def _global_put(x: Any, sharding: NamedSharding) -> jax.Array:
  """Places a host value (same on every process) as a global array."""
  if isinstance(x, jax.Array) and (
      not x.is_fully_addressable
      or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)):
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def _check_test_set(images: Any, labels: Any, need_uint8: bool = True
                    ) -> None:
  if getattr(images, "ndim", None) != 4:
    raise ValueError(
        f"images must be a 4-D NHWC array, got shape {np.shape(images)}")
  if need_uint8 and images.dtype != np.uint8:
    raise ValueError(
        f"images must be uint8 (released data) unless a preprocess function "
        f"is given, got {images.dtype}")
  if not (np.issubdtype(images.dtype, np.integer)
          or np.issubdtype(images.dtype, np.floating)):
    raise ValueError(f"images must be numeric, got {images.dtype}")
  if getattr(labels, "ndim", None) != 1:
    raise ValueError(f"labels must be 1-D, got shape {np.shape(labels)}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
        f"images and labels lengths differ: {images.shape[0]} vs "
        f"{labels.shape[0]}")
  if images.shape[0] < 1:
    raise ValueError("the test set is empty")


@functools.lru_cache(maxsize=32)
def _num_logits(logits_fn: LogitsFn, preprocess: Preprocess, treedef: Any,
                leaves: tuple[tuple[tuple[int, ...], Any], ...],
                image_shape: tuple[int, ...], image_dtype: Any) -> int:
  """Logits per image of ``logits_fn`` on a state of this structure
  (cached: tracing a model costs ~16 ms, per call of `sample_accuracies`)."""
  params, rest = jax.tree.unflatten(
      treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in leaves])
  one = jax.ShapeDtypeStruct((1,) + image_shape, image_dtype)
  try:
    logits = jax.eval_shape(lambda p, r, x: logits_fn(p, r, preprocess(x)),
                            params, rest, one)
  except Exception as e:  # pylint: disable=broad-except
    cause = (str(e).strip().splitlines() or [""])[0][:200]
    raise ValueError(
        f"the model cannot be applied to images of shape {image_shape}: "
        f"{type(e).__name__}: {cause}") from e
  if getattr(logits, "ndim", 0) != 2:
    raise ValueError(f"the model must return (batch, classes) logits, got "
                     f"shape {getattr(logits, 'shape', None)}")
  return logits.shape[-1]


def _dtype(x: Any) -> Any:
  # Not jnp.result_type: it rejects typed PRNG keys (an NNX module's RNGs).
  dtype = getattr(x, "dtype", None)
  return jnp.result_type(x) if dtype is None else dtype


def _check_model_fits(logits_fn: LogitsFn, preprocess: Preprocess,
                      params: Any, rest: Any, images: Any,
                      labels: Any) -> None:
  """The model takes these images, and the labels index its logits."""
  leaves, treedef = jax.tree.flatten((params, rest))
  num_classes = _num_logits(
      logits_fn, preprocess, treedef,
      tuple((tuple(np.shape(x)), _dtype(x)) for x in leaves),
      tuple(images.shape[1:]), images.dtype)
  # jnp, not np: a multi-host global array is not addressable as a whole.
  lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
  if lo < 0 or hi >= num_classes:
    raise ValueError(
        f"labels must lie in [0, {num_classes}) for this model's "
        f"{num_classes} logits, got [{lo}, {hi}]")


def sample_accuracies(
    key: jax.Array,
    model: Any,
    variables: Any,
    images: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array | None = None,
    *,
    sigma: float,
    num_draws: int,
    first_draw: int = 0,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
    draw_axis: str = "samples",
    data_axis: str | None = None,
    chunks_per_block: int = 4,
    precision: str | None = None,
    preprocess: Preprocess | None = None,
    progress: bool = False,
) -> np.ndarray:
  """Accuracies a_i of θ̂ + ξ_i on the whole test set (MC certification).

  Draw i uses `perturb_params(jax.random.fold_in(key, i), params, sigma)`, so
  a_i depends only on (key, i): not on `chunk_size`, blocks or device count
  (up to accelerator matmul precision, see `precision`). Draws
  `first_draw .. first_draw + num_draws - 1` are computed, so a long run can
  be done in segments (and resumed): concatenated segments equal one run.
  a_i is the exact fraction of correct predictions (eval mode) over all N
  test images: the last batch is padded and the padding never counts; correct
  predictions are integer counts divided by N on the host.

  Draws are evaluated `chunk_size` at a time (`lax.map(..., batch_size=...)`
  vmaps a chunk) and the test set is streamed in batches with `lax.scan`. The
  host loops over blocks of `chunks_per_block` chunks per device, each block
  one call of a single compiled function (the start index is traced and the
  last block is padded with extra draws that are dropped).

  Sharding: with `mesh`, draws are sharded over `draw_axis` and, if
  `data_axis` is given, each test batch is split over `data_axis` (correct
  counts are summed across it with `psum`); results are identical to
  `mesh=None`. Multi-host: call `jax.distributed.initialize()` first, build
  the mesh over all processes' devices (`jax.make_mesh`), call this function
  with the same arguments on every process; every process gets all N
  accuracies back.

  Models (see `as_logits_fn`): a jaxue `Model` or its ``apply(variables,
  images, train) -> (logits, batch_stats)``, a plain ``apply(params,
  images) -> logits``, a flax linen module (with its ``variables``), or a
  flax NNX module, which holds its own state:
  ``sample_accuracies(key, module, images, labels, sigma=..., ...)``. Only
  trainable parameters are smoothed (``variables["params"]``, or the
  `nnx.Param` leaves), never batch-norm statistics; the model runs in eval
  mode.

  Args:
    key: a typed PRNG key.
    model: the model (above). Treated as static (jit cache key): pass the
      same function or module object to reuse the compilation.
    variables: its state: ``{"params": ..., "batch_stats": ..., ...}``
      (only "params" is perturbed) or a plain parameter pytree (all of it
      is); None, or left out, for an NNX module.
    images: NHWC test images: uint8 (scaled to [0, 1] floats), or any
      numeric dtype with ``preprocess``.
    labels: integer labels, shape (N,).
    sigma: noise standard deviation σ > 0.
    num_draws: number of Monte-Carlo draws (>= 1).
    first_draw: index of the first draw (>= 0).
    chunk_size: draws vmapped together per device; default
      `default_chunk_size()` for the mesh's (or default) backend.
    batch_size: test images per forward pass (split over `data_axis`; rounded
      up to a multiple of its size); default `default_batch_size()` for the
      mesh's (or default) backend.
    mesh: optional `jax.sharding.Mesh`.
    draw_axis: mesh axis over which draws are sharded.
    data_axis: optional mesh axis over which test batches are sharded.
    chunks_per_block: chunks per device per host-side block (progress bar
      granularity).
    precision: matmul/conv precision while tracing the model
      (`jax.default_matmul_precision`); None keeps the backend default. On
      GPU (TF32) and TPU (bf16 passes) the default lets a prediction near a
      tie flip with the chunk size or sharding (measured on an H100: one test
      image in 10,000 for some draws); "highest" made them bit-identical
      there, at about half the throughput. On CPU both agree.
    preprocess: ``preprocess(images) -> model inputs`` applied to every
      test batch inside jit (e.g. ``lambda x: (x - mean) / std`` for float
      images); default `uint8_to_unit` (uint8 images required). Treated as
      static.
    progress: show a tqdm progress bar.

  Returns:
    float64 array of shape (num_draws,) with the accuracies of draws
    `first_draw ..`, in draw order.
  """
  if labels is None:  # sample_accuracies(key, nnx_module, images, labels)
    if not _is_nnx(model):
      raise ValueError("labels is missing: only an NNX module, which holds "
                       "its own parameters, is called without variables")
    variables, images, labels = None, variables, images
  _check_test_set(images, labels, need_uint8=preprocess is None)
  preprocess = uint8_to_unit if preprocess is None else preprocess
  if not callable(preprocess):
    raise ValueError(f"preprocess must be a function, got {preprocess!r}")
  if not (isinstance(sigma, numbers.Real) and math.isfinite(sigma)
          and sigma > 0):
    raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
  if not (isinstance(num_draws, (int, np.integer)) and 1 <= num_draws < 2**31):
    raise ValueError(f"num_draws must be an integer >= 1, got {num_draws}")
  if not (isinstance(first_draw, (int, np.integer))
          and 0 <= first_draw < 2**31 - num_draws):
    raise ValueError(f"first_draw must be an integer >= 0 with first_draw + "
                     f"num_draws < 2**31, got {first_draw}")
  for name, value in (("chunk_size", chunk_size), ("batch_size", batch_size),
                      ("chunks_per_block", chunks_per_block)):
    if value is not None and not (isinstance(value, (int, np.integer))
                                  and value >= 1):
      raise ValueError(f"{name} must be an integer >= 1, got {value}")
  logits_fn, params, rest = as_logits_fn(model, variables)
  if not jax.tree.leaves(params):
    raise ValueError("the model has no trainable parameters to smooth")
  _check_model_fits(logits_fn, preprocess, params, rest, images, labels)
  if mesh is None:
    if data_axis is not None:
      raise ValueError("data_axis needs a mesh")
    n_draw_dev, n_data_dev = 1, 1
    backend = jax.default_backend()
  else:
    if draw_axis not in mesh.shape:
      raise ValueError(f"draw_axis {draw_axis!r} is not a mesh axis of "
                       f"{dict(mesh.shape)}")
    if data_axis is not None and (data_axis not in mesh.shape
                                  or data_axis == draw_axis):
      raise ValueError(f"data_axis {data_axis!r} must be a mesh axis other "
                       f"than draw_axis; mesh axes {dict(mesh.shape)}")
    n_draw_dev = mesh.shape[draw_axis]
    n_data_dev = 1 if data_axis is None else mesh.shape[data_axis]
    backend = mesh.devices.flat[0].platform
  num_draws, first_draw = int(num_draws), int(first_draw)

  # Draws: per-device block of chunks_per_block chunks, capped by the need.
  per_dev_need = -(-num_draws // n_draw_dev)
  chunk = min(chunk_size or default_chunk_size(backend), per_dev_need)
  per_dev = min(chunk * chunks_per_block, _round_up(per_dev_need, chunk))
  block_size = per_dev * n_draw_dev
  num_blocks = -(-num_draws // block_size)

  # Test set: (num_batches, batch, H, W, C), padded labels are -1.
  images = np.asarray(images)
  labels = np.asarray(labels).astype(np.int32)
  n = images.shape[0]
  batch = _round_up(min(batch_size or default_batch_size(backend), n),
                    n_data_dev)
  num_batches = -(-n // batch)
  pad = num_batches * batch - n
  if pad:
    images = np.concatenate(
        [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.full((pad,), -1, np.int32)])
  images = images.reshape((num_batches, batch) + images.shape[1:])
  labels = labels.reshape(num_batches, batch)

  key_data = np.asarray(jax.random.key_data(key))
  sigma_arr = np.float32(sigma)
  if mesh is None:
    put = jax.device_put
    data_sharding = replicated = None
  else:
    put = _global_put
    replicated = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P(None, data_axis))
  args = (put(key_data, replicated), put(sigma_arr, replicated),
          jax.tree.map(lambda x: put(x, replicated), params),
          jax.tree.map(lambda x: put(x, replicated), rest),
          put(images, data_sharding), put(labels, data_sharding))
  fn = _block_fn(logits_fn, preprocess, jax.random.key_impl(key), block_size,
                 chunk, mesh, draw_axis, data_axis, precision)

  def fetch(counts):
    if jax.process_count() > 1:
      # pylint: disable-next=g-import-not-at-top
      from jax.experimental import multihost_utils
      counts = multihost_utils.process_allgather(counts, tiled=True)
    return np.asarray(counts, np.int64)

  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  results = []
  pending = None
  with tqdm(total=num_draws, disable=not progress, unit="draw") as bar:
    for b in range(num_blocks + 1):
      if b < num_blocks:  # Dispatch block b before waiting on block b - 1.
        start = put(np.int32(first_draw + b * block_size), replicated)
        out = fn(args[0], args[1], start, *args[2:])
      if pending is not None:
        results.append(fetch(pending))
        bar.update(min(block_size, num_draws - (b - 1) * block_size))
      pending = out if b < num_blocks else None
  counts = np.concatenate(results)[:num_draws]
  return counts / float(n)


# ----------------------------------------------------------------------------
# Host side: the (q, η) bound.
# ----------------------------------------------------------------------------


def _check_level(q: float, sigma: float, eta: float, confidence: float) -> None:
  if not 0.0 < q < 1.0:
    raise ValueError(f"q must be in (0, 1), got {q}")
  if not (math.isfinite(sigma) and sigma > 0):
    raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
  if not (math.isfinite(eta) and eta >= 0):
    raise ValueError(f"eta must be a finite number >= 0, got {eta}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _tail(q: float, sigma: float, eta: float) -> float:
  """1 − q̄, computed without cancellation (accurate when q̄ is near 1)."""
  return float(stats.norm.sf(stats.norm.ppf(q) + eta / sigma))


def quantile_level(*, q: float, sigma: float, eta: float) -> float:
  """q̄ = Φ(Φ⁻¹(q) + η/σ), the level certified at radius η."""
  _check_level(q, sigma, eta, 0.5)
  return float(stats.norm.cdf(stats.norm.ppf(q) + eta / sigma))


def _ceil_tol(n: int) -> float:
  # ⌈q̄N⌉ must not jump to the next integer when q̄N = 900.0000000001.
  return max(1e-9, 64 * np.finfo(np.float64).eps * n)


def _binomial_rank(n: int, tail: float, confidence: float) -> int | None:
  """Smallest k in [⌈q̄N⌉, N] with BinomCDF(k − 1; N, q̄) > c, else None."""
  lo = max(1, n - math.floor(tail * n + _ceil_tol(n)))
  # BinomCDF(k − 1; N, q̄) = P(Bin(N, 1 − q̄) ≥ N − k + 1)
  #                      = sf(N − k; N, 1 − q̄), accurate for q̄ near 1.
  for first in range(lo, n + 1, _SEARCH_WINDOW):
    ks = np.arange(first, min(first + _SEARCH_WINDOW, n + 1))
    ok = stats.binom.sf(n - ks, n, tail) > confidence
    if ok.any():
      return int(ks[np.argmax(ok)])
  return None


def _dkw_epsilon(n: int, confidence: float) -> float:
  return math.sqrt(math.log(1.0 / (1.0 - confidence)) / (2.0 * n))


def _dkw_rank(n: int, tail: float, confidence: float) -> int | None:
  """Smallest k with k/N ≥ q̄ + ε_DKW, else None."""
  k = n - math.floor((tail - _dkw_epsilon(n, confidence)) * n + _ceil_tol(n))
  return max(k, 1) if k <= n else None


def certified_rank(n: int, *, q: float, sigma: float, eta: float,
                   confidence: float = 0.99) -> int | None:
  """The 1-based order-statistic index k of the certificate, or None.

  k = the smallest index in [⌈q̄N⌉, N] with BinomCDF(k − 1; N, q̄) > c
  (the paper's Monte-Carlo certification). k depends only on
  (N, q, σ, η, c), not on the accuracies.

  Args:
    n: number of Monte-Carlo draws N (>= 1).
    q: quantile level in (0, 1).
    sigma: smoothing noise σ > 0.
    eta: certified radius η >= 0.
    confidence: c in (0, 1).

  Returns:
    k in [1, N], or None (abstain) if no index qualifies.
  """
  _check_level(q, sigma, eta, confidence)
  if not (isinstance(n, (int, np.integer)) and n >= 1):
    raise ValueError(f"N (number of draws) must be an integer >= 1, got {n}")
  return _binomial_rank(int(n), _tail(q, sigma, eta), confidence)


def _check_accuracies(accuracies: Any) -> np.ndarray:
  a = np.asarray(accuracies, dtype=np.float64)
  if a.ndim != 1:
    raise ValueError(f"accuracies must be 1-D, got shape {a.shape}")
  if a.size < 1:
    raise ValueError("accuracies is empty: need N >= 1 draws")
  if not np.all(np.isfinite(a)):
    raise ValueError("accuracies contain NaN or inf")
  if np.any((a < 0) | (a > 1)):
    raise ValueError("accuracies must lie in [0, 1]")
  return np.sort(a)


def certified_learnability(accuracies: Any, *, q: float, sigma: float,
                           eta: float, confidence: float = 0.99
                           ) -> float | None:
  """Certified (q, η)-learnability a_(k), or None to abstain.

  With q̄ = Φ(Φ⁻¹(q) + η/σ) and k = `certified_rank(N, ...)`, returns the
  k-th smallest accuracy. Guarantee (this η alone): with probability
  ≥ BinomCDF(k − 1; N, q̄) > c over the N draws, a_(k) ≥ the q̄-quantile of
  the accuracy of θ̂ + ξ, hence (the paper's smoothing theorem) ≥ the
  q-quantile of the accuracy
  of θ′ + ξ for every θ′ with ‖θ′ − θ̂‖₂ ≤ η. Holds for any accuracy
  distribution, ties included; it is per η, not for a whole curve (see
  `learnability_curve`).

  Args:
    accuracies: the N Monte-Carlo accuracies in [0, 1].
    q: quantile level in (0, 1).
    sigma: the σ used to draw the accuracies (> 0).
    eta: parameter-space radius η >= 0.
    confidence: c in (0, 1).

  Returns:
    The certified learnability (lower is better for the data owner), or None
    if no order statistic qualifies (N too small for this η).
  """
  _check_level(q, sigma, eta, confidence)
  a = _check_accuracies(accuracies)
  k = _binomial_rank(a.size, _tail(q, sigma, eta), confidence)
  return None if k is None else float(a[k - 1])


class CertificationCurve(NamedTuple):
  """Certified learnability over a grid of η (one entry per η).

  Attributes:
    etas: the radii η.
    values: certified learnability per η, None where it abstains.
    ranks: the 1-based order statistic used per η, None where it abstains.
    largest_certified_eta: largest η with a value, None if all abstain.
    n: number of draws N.
    q: quantile level.
    sigma: smoothing noise σ.
    confidence: c, the confidence of the guarantee described by `mode`.
    mode: "per_eta", "union" or "dkw" (see `learnability_curve`).
  """
  etas: tuple[float, ...]
  values: tuple[float | None, ...]
  ranks: tuple[int | None, ...]
  largest_certified_eta: float | None
  n: int
  q: float
  sigma: float
  confidence: float
  mode: str

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict; the curve is `[[eta, value_or_null], ...]`."""
    return {
        "curve": [[e, v] for e, v in zip(self.etas, self.values)],
        "ranks": list(self.ranks),
        "largest_certified_eta": self.largest_certified_eta,
        "n": self.n, "q": self.q, "sigma": self.sigma,
        "confidence": self.confidence, "mode": self.mode,
    }


def learnability_curve(accuracies: Any, *, q: float, sigma: float,
                       etas: Sequence[float] = DEFAULT_ETAS,
                       confidence: float = 0.99,
                       simultaneous: str | None = None) -> CertificationCurve:
  """Certified (q, η)-learnability over a grid of η (the paper's curves).

  Modes and their guarantees (probability over the N Monte-Carlo draws; Q(p)
  = the p-quantile of the accuracy of θ̂ + ξ, q̄(η) = Φ(Φ⁻¹(q) + η/σ)):

  * None ("per_eta", the paper): each η separately, P(value(η) ≥ Q(q̄(η)))
    > c. The curve as a whole holds only with probability ≥ 1 − m(1 − c)
    for m grid points.
  * "union" (Bonferroni): every η uses confidence 1 − (1 − c)/m, so
    P(value(η) ≥ Q(q̄(η)) for all η in the grid) ≥ c.
  * "dkw": with ε = sqrt(ln(1/(1 − c))/(2N)), value(η) = a_(k) for the
    smallest k with k/N ≥ q̄(η) + ε (abstain if q̄ + ε > 1). By the one-sided
    Dvoretzky–Kiefer–Wolfowitz–Massart inequality
    P(sup_x (F_N(x) − F(x)) > ε) ≤ exp(−2Nε²) = 1 − c, so with probability
    ≥ c the bound holds for every η ≥ 0 (every q̄) at once, not just the grid.
    Massart proves the one-sided form for exp(−2Nε²) ≤ 1/2, so this mode
    needs c ≥ 1/2.

  Abstentions make no claim. Through the smoothing theorem each
  value(η) ≥ Q(q̄(η))
  bounds the q-quantile of the smoothed accuracy of every θ′ in the η-ball.

  Args:
    accuracies: the N Monte-Carlo accuracies in [0, 1].
    q: quantile level in (0, 1).
    sigma: the σ used to draw the accuracies (> 0).
    etas: radii η >= 0.
    confidence: c in (0, 1).
    simultaneous: None, "union" or "dkw".

  Returns:
    A `CertificationCurve`.
  """
  etas = tuple(float(e) for e in np.asarray(etas, np.float64).reshape(-1))
  if not etas:
    raise ValueError("etas is empty")
  for eta in etas:
    _check_level(q, sigma, eta, confidence)
  a = _check_accuracies(accuracies)
  n = a.size
  if simultaneous is None:
    mode = "per_eta"
    ranks = [_binomial_rank(n, _tail(q, sigma, e), confidence) for e in etas]
  elif simultaneous == "union":
    mode = "union"
    c = 1.0 - (1.0 - confidence) / len(etas)
    ranks = [_binomial_rank(n, _tail(q, sigma, e), c) for e in etas]
  elif simultaneous == "dkw":
    if confidence < 0.5:
      raise ValueError(
          f"simultaneous='dkw' needs confidence >= 0.5 (Massart's condition "
          f"for the one-sided DKW bound), got {confidence}")
    mode = "dkw"
    ranks = [_dkw_rank(n, _tail(q, sigma, e), confidence) for e in etas]
  else:
    raise ValueError(
        f"simultaneous must be None, 'union' or 'dkw', got {simultaneous!r}")
  values = tuple(None if k is None else float(a[k - 1]) for k in ranks)
  certified = [e for e, v in zip(etas, values) if v is not None]
  return CertificationCurve(
      etas=etas, values=values, ranks=tuple(ranks),
      largest_certified_eta=max(certified) if certified else None,
      n=n, q=float(q), sigma=float(sigma), confidence=float(confidence),
      mode=mode)


def min_draws(*, q: float, sigma: float, eta: float,
              confidence: float = 0.99) -> int:
  """Smallest N for which `certified_learnability` does not abstain.

  A rank exists iff k = N qualifies: BinomCDF(N − 1; N, q̄) = 1 − q̄^N > c,
  i.e. N = ⌈log(1 − c)/log q̄⌉ (then checked by search with the same
  predicate the bound uses). At σ = 0.25, q = 0.9, c = 0.99: η = 0.3 → 702,
  0.5 → 8,920, 0.75 → 496,259.

  Args:
    q: quantile level in (0, 1).
    sigma: smoothing noise σ > 0.
    eta: certified radius η >= 0.
    confidence: c in (0, 1).

  Returns:
    The minimum number of Monte-Carlo draws (a Python int, possibly huge).
  """
  _check_level(q, sigma, eta, confidence)
  tail = _tail(q, sigma, eta)
  ratio = (math.log1p(-confidence) / math.log1p(-tail) if tail > 0.0
           else math.inf)
  if not math.isfinite(ratio):
    # 1 − q̄ is 0 or so small (subnormal) that log(1 − c)/log q̄ overflows.
    raise ValueError(
        f"1 - q̄ = {tail:.3g} at eta/sigma = {eta / sigma}: the minimum "
        "number of draws is not a finite float; lower eta or raise sigma")
  n = max(1, math.ceil(ratio))
  if n < 2**53:
    def ok(m: int) -> bool:  # The bound's own test at k = N.
      return bool(stats.binom.sf(0, m, tail) > confidence)

    while n > 1 and ok(n - 1):
      n -= 1
    while not ok(n):
      n += 1
  return n


# ----------------------------------------------------------------------------
# Expected learnability: an upper bound on the mean smoothed accuracy, moved
# to every θ′ in the η-ball by the Lipschitz property of Φ⁻¹ ∘ g.
# ----------------------------------------------------------------------------

MEAN_BOUNDS = ("betting", "bernstein")

# WSR's truncation c of the bets: λ(1 − m) ≤ c keeps every wealth factor
# 1 − λ(x − m) ≥ 1 − c = 1/4 > 0. Of their suggested 1/2 and 3/4, 3/4 gave
# bounds up to a third tighter on low-variance accuracies (std 0.01, N = 1000)
# and within 10% otherwise.
_BET_TRUNCATION = 0.75
_BISECTIONS = 60


def _check_confidence(confidence: float) -> None:
  if not (isinstance(confidence, numbers.Real) and 0.0 < confidence < 1.0):
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_draw_matrix(accuracies: Any) -> np.ndarray:
  """Accuracies as float64 (..., N), N >= 1, values in [0, 1], draw order."""
  a = np.asarray(accuracies, dtype=np.float64)
  if a.ndim < 1 or a.shape[-1] < 1:
    raise ValueError(f"accuracies must hold N >= 1 draws, got shape "
                     f"{a.shape}")
  if not np.all(np.isfinite(a)):
    raise ValueError("accuracies contain NaN or inf")
  if np.any((a < 0) | (a > 1)):
    raise ValueError("accuracies must lie in [0, 1]")
  return a


def _predictable_bets(x: np.ndarray, log_inv_alpha: float,
                      anytime: bool) -> np.ndarray:
  """WSR's predictable plug-in bets λ_t (before truncation), shape of x.

  λ_t uses only x_1 .. x_{t−1} (predictable): the regularised running
  variance σ̂²_{t−1} (σ̂²_0 = 1/4) in sqrt(2 log(1/α) / (σ̂²_{t−1} · s_t)),
  s_t = t log(1 + t) for the confidence sequence (WSR eq. (26), one-sided)
  and s_t = N for the fixed-N interval (WSR Sec. 4.3's "betting CI").
  """
  n = x.shape[-1]
  t = np.arange(1, n + 1, dtype=np.float64)
  mean = (0.5 + np.cumsum(x, axis=-1)) / (t + 1)
  var = (0.25 + np.cumsum((x - mean) ** 2, axis=-1)) / (t + 1)
  lead = np.full(x.shape[:-1] + (1,), 0.25)
  var_prev = np.concatenate([lead, var[..., :-1]], axis=-1)
  scale = t * np.log1p(t) if anytime else np.float64(n)
  return np.sqrt(2.0 * log_inv_alpha / (var_prev * scale))


def _betting_upper(x: np.ndarray, alpha: float, anytime: bool) -> np.ndarray:
  """The betting upper confidence bound of E x over the last axis.

  Wealth against the null mean m: K(m) = ∏_t (1 − λ_t(m)(x_t − m)) with
  λ_t(m) = min(λ_t, c/(1 − m)). Under E x = m it is a non-negative
  martingale, so by Ville's inequality P(sup_t K_t(m) ≥ 1/α) ≤ α. Every
  factor is non-decreasing in m (for x_t ≤ m both λ_t(m) and m − x_t grow;
  for x_t > m both λ_t (x_t − m) and c (x_t − m)/(1 − m) shrink), so K(m)
  is non-decreasing, the m not rejected form an interval [0, U), and
  bisection finds U. The upper end of the last bracket is returned, which
  is ≥ U: rounding never makes the bound smaller.
  """
  log_inv_alpha = math.log(1.0 / alpha)
  bets = _predictable_bets(x, log_inv_alpha, anytime)
  lo = np.zeros(x.shape[:-1])
  hi = np.ones(x.shape[:-1])
  for _ in range(_BISECTIONS):
    mid = 0.5 * (lo + hi)
    m = mid[..., None]
    with np.errstate(divide="ignore"):  # m = 1: no cap (c / 0 = inf).
      lam = np.minimum(bets, _BET_TRUNCATION / (1.0 - m))
    log_wealth = np.sum(np.log1p(-lam * (x - m)), axis=-1)
    rejected = log_wealth >= log_inv_alpha
    hi = np.where(rejected, mid, hi)
    lo = np.where(rejected, lo, mid)
  return hi


def _bernstein_upper(x: np.ndarray, alpha: float) -> np.ndarray:
  """Maurer & Pontil's empirical-Bernstein upper bound (their Theorem 4)."""
  n = x.shape[-1]
  log_term = math.log(2.0 / alpha)
  var = np.var(x, axis=-1, ddof=1)
  bound = (np.mean(x, axis=-1) + np.sqrt(2.0 * var * log_term / n)
           + 7.0 * log_term / (3.0 * (n - 1)))
  return np.minimum(bound, 1.0)


def _mean_upper(x: np.ndarray, confidence: float, method: str,
                anytime: bool) -> np.ndarray:
  alpha = 1.0 - confidence
  if method == "betting":
    return _betting_upper(x, alpha, anytime)
  if method == "bernstein":
    if anytime:
      raise ValueError("the empirical-Bernstein bound holds for a fixed N "
                       "only: use method='betting' for anytime=True")
    if x.shape[-1] < 2:
      raise ValueError("the empirical-Bernstein bound needs N >= 2 draws")
    return _bernstein_upper(x, alpha)
  raise ValueError(f"method must be one of {MEAN_BOUNDS}, got {method!r}")


def mean_upper_bound(accuracies: Any, *, confidence: float = 0.99,
                     method: str = "betting", anytime: bool = False
                     ) -> float:
  """An upper confidence bound U on the mean of [0, 1]-valued i.i.d. draws.

  ``method="betting"`` (default): the hedged-capital betting bound of
  Waudby-Smith & Ramdas, "Estimating means of bounded random variables by
  betting", JRSS-B 2024 (arXiv 2010.09686), one-sided: the capital process
  of a bettor against each candidate mean m, with their predictable plug-in
  bets (Sec. 4), truncated at 3/4 of the largest safe bet. With
  ``anytime=True`` the bets are those of their confidence sequence
  (eq. (26)) and P(∃ n: U_n < μ) ≤ 1 − c, where U_n is this function on
  the first n draws: the bound survives any data-dependent choice of when
  to stop (optional stopping). With ``anytime=False`` the bets are tuned
  for this N (their "betting CI"); valid for a fixed N only, and tighter.
  The draws are bet on in the order given, which must not depend on their
  values (pass them in draw order).

  ``method="bernstein"``: the empirical-Bernstein bound of Maurer & Pontil,
  "Empirical Bernstein bounds and sample variance penalization", COLT 2009,
  Theorem 4: U = x̄ + sqrt(2 V ln(2/α)/N) + 7 ln(2/α)/(3(N − 1)) with V the
  unbiased sample variance (N >= 2; fixed N only).

  Guarantee: P(U ≥ E acc) ≥ c over the draws, for every law on [0, 1].

  Args:
    accuracies: the N draws, in [0, 1], in draw order.
    confidence: c in (0, 1).
    method: "betting" or "bernstein".
    anytime: a confidence sequence (betting only).

  Returns:
    U in (0, 1].
  """
  _check_confidence(confidence)
  a = _check_draw_matrix(accuracies)
  if a.ndim != 1:
    raise ValueError(f"accuracies must be 1-D, got shape {a.shape}")
  return float(_mean_upper(a, confidence, method, anytime))


def _lipschitz_level(upper: np.ndarray | float, sigma: float,
                     eta: np.ndarray | float) -> np.ndarray:
  # norm.cdf(norm.ppf(1) + x) = cdf(inf) = 1: U = 1 stays trivially 1.
  return stats.norm.cdf(stats.norm.ppf(upper) + np.asarray(eta) / sigma)


def expected_level(upper_mean: float, *, sigma: float, eta: float) -> float:
  """Φ(Φ⁻¹(U) + η/σ): the expected-accuracy bound at radius η.

  For any f with values in [0, 1], θ ↦ Φ⁻¹(E_ξ f(θ + ξ)), ξ ~ N(0, σ²I),
  is 1/σ-Lipschitz (Salman et al., "Provably robust deep learning via
  adversarially trained smoothed classifiers", NeurIPS 2019, appendix
  Lemma 2). So g(θ̂) ≤ U gives g(θ′) ≤ Φ(Φ⁻¹(U) + η/σ) for every θ′ with
  ‖θ′ − θ̂‖₂ ≤ η.
  """
  if not 0.0 <= upper_mean <= 1.0:
    raise ValueError(f"upper_mean must lie in [0, 1], got {upper_mean}")
  _check_level(0.5, sigma, eta, 0.5)
  return float(_lipschitz_level(upper_mean, sigma, eta))


class ExpectedCurve(NamedTuple):
  """Certified expected learnability over a grid of η.

  Attributes:
    etas: the radii η.
    values: Φ(Φ⁻¹(U) + η/σ) per η: an upper bound on the expected accuracy
      E_ξ acc(θ′ + ξ) of every θ′ in the η-ball (never abstains).
    upper_mean: U, the upper confidence bound on E_ξ acc(θ̂ + ξ).
    mean: the mean of the N accuracies.
    n: number of draws N.
    sigma: smoothing noise σ.
    confidence: c; one confidence for the whole curve (every η ≥ 0 at
      once: the Lipschitz step is deterministic).
    method: "betting" or "bernstein" (see `mean_upper_bound`).
    anytime: whether U comes from a confidence sequence (valid under
      optional stopping).
  """
  etas: tuple[float, ...]
  values: tuple[float, ...]
  upper_mean: float
  mean: float
  n: int
  sigma: float
  confidence: float
  method: str
  anytime: bool

  def largest_eta_at_most(self, level: float) -> float | None:
    """Largest η of the grid whose bound is ≤ ``level`` (None if none)."""
    ok = [e for e, v in zip(self.etas, self.values) if v <= level]
    return max(ok) if ok else None

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict; the curve is `[[eta, value], ...]`."""
    return {
        "curve": [[e, v] for e, v in zip(self.etas, self.values)],
        "upper_mean": self.upper_mean, "mean": self.mean, "n": self.n,
        "sigma": self.sigma, "confidence": self.confidence,
        "method": self.method, "anytime": self.anytime,
    }


def expected_learnability_curve(accuracies: Any, *, sigma: float,
                                etas: Sequence[float] = DEFAULT_ETAS,
                                confidence: float = 0.99,
                                method: str = "betting",
                                anytime: bool = False) -> ExpectedCurve:
  """Certified expected learnability over a grid of η.

  U = `mean_upper_bound(accuracies, ...)` bounds g(θ̂) = E_ξ acc(θ̂ + ξ)
  with probability ≥ c, and then, deterministically, g(θ′) ≤ Φ(Φ⁻¹(U) +
  η/σ) for every η ≥ 0 and every θ′ with ‖θ′ − θ̂‖₂ ≤ η (`expected_level`;
  Salman et al., NeurIPS 2019, appendix Lemma 2). Unlike the quantile
  certificate (`learnability_curve`) one confidence covers the whole curve
  and no η makes it abstain; it bounds the mean smoothed accuracy, not a
  quantile.

  Args:
    accuracies: the N Monte-Carlo accuracies in [0, 1], in draw order.
    sigma: the σ used to draw them (> 0).
    etas: radii η >= 0.
    confidence: c in (0, 1).
    method: "betting" (Waudby-Smith & Ramdas 2024) or "bernstein" (Maurer
      & Pontil 2009).
    anytime: use the betting confidence sequence (valid at a stopping time).

  Returns:
    An `ExpectedCurve`.
  """
  etas = tuple(float(e) for e in np.asarray(etas, np.float64).reshape(-1))
  if not etas:
    raise ValueError("etas is empty")
  for eta in etas:
    _check_level(0.5, sigma, eta, confidence)
  upper = mean_upper_bound(accuracies, confidence=confidence, method=method,
                           anytime=anytime)
  a = np.asarray(accuracies, np.float64)
  values = _lipschitz_level(upper, sigma, np.asarray(etas))
  return ExpectedCurve(
      etas=etas, values=tuple(float(v) for v in values), upper_mean=upper,
      mean=float(a.mean()), n=int(a.size), sigma=float(sigma),
      confidence=float(confidence), method=method, anytime=bool(anytime))


# ----------------------------------------------------------------------------
# Certification to a target η under optional stopping.
# ----------------------------------------------------------------------------

TARGET_BOUNDS = ("quantile", "expected")


def look_schedule(first: int, last: int, *, growth: float = 2.0
                  ) -> tuple[int, ...]:
  """The draw counts at which a sequential certification looks.

  ``first``, ``first · growth``, ... (rounded up), then ``last``. Fixed
  before any draw is seen, as α-spending over looks requires.

  Args:
    first: draws at the first look (>= 1).
    last: the budget: draws at the last look (>= first).
    growth: ratio between successive looks (> 1).
  """
  if not (isinstance(first, (int, np.integer)) and first >= 1):
    raise ValueError(f"first must be an integer >= 1, got {first}")
  if not (isinstance(last, (int, np.integer)) and last >= first):
    raise ValueError(f"last (the draw budget) must be an integer >= first "
                     f"= {first}, got {last}")
  if not (math.isfinite(growth) and growth > 1.0):
    raise ValueError(f"growth must be a number > 1, got {growth}")
  looks, n = [], float(first)
  while math.ceil(n) < last:
    if not looks or math.ceil(n) > looks[-1]:
      looks.append(math.ceil(n))
    n *= growth
  looks.append(int(last))
  return tuple(int(v) for v in looks)


def look_confidence(confidence: float, num_looks: int) -> float:
  """Per-look confidence of α-spending by Bonferroni: 1 − (1 − c)/J.

  With J looks fixed in advance and each look's statement failing with
  probability ≤ (1 − c)/J, all J hold with probability ≥ c (union bound),
  so the statement at any data-dependent stopping look holds with
  probability ≥ c.
  """
  _check_confidence(confidence)
  if not (isinstance(num_looks, (int, np.integer)) and num_looks >= 1):
    raise ValueError(f"num_looks must be an integer >= 1, got {num_looks}")
  return 1.0 - (1.0 - confidence) / num_looks


class Look(NamedTuple):
  """One look of a sequential certification at the target η.

  Attributes:
    draws: draws seen at this look.
    quantile: the quantile certificate at the target η with the per-look
      confidence (None: abstains).
    expected: the expected-learnability bound at the target η.
    certified: whether the target is met (the run stops here).
  """
  draws: int
  quantile: float | None
  expected: float
  certified: bool

  def to_json(self) -> dict[str, Any]:
    return dict(self._asdict())


def check_target(accuracies: Any, *, eta: float, q: float, sigma: float,
                 confidence: float, num_looks: int,
                 bound: str = "quantile", target_value: float | None = None,
                 method: str = "betting") -> Look:
  """One look: is the target radius η certified by the draws so far?

  The quantile certificate (`certified_learnability`) is taken at the
  per-look confidence `look_confidence(c, num_looks)` (α-spending over the
  looks of a fixed schedule); the expected-learnability bound comes from
  the anytime-valid betting confidence sequence at c itself (Ville's
  inequality already covers every n; with ``method="bernstein"``, from
  Maurer & Pontil at the per-look confidence). The target is met when the
  chosen ``bound`` gives a certificate at η whose value is ≤
  ``target_value`` (None: any certificate, i.e. the quantile bound does not
  abstain, the expected bound is < 1).

  Args:
    accuracies: the draws so far, in draw order.
    eta: the target radius.
    q: quantile level of the quantile certificate.
    sigma: smoothing noise σ.
    confidence: c, the confidence at the stopping look.
    num_looks: J, the number of looks in the schedule.
    bound: "quantile" or "expected": the certificate that must meet the
      target.
    target_value: the learnability to certify, or None.
    method: the expected bound's mean bound ("betting" or "bernstein").

  Returns:
    A `Look`.
  """
  if bound not in TARGET_BOUNDS:
    raise ValueError(f"bound must be one of {TARGET_BOUNDS}, got {bound!r}")
  if target_value is not None and not 0.0 <= target_value <= 1.0:
    raise ValueError(f"target_value must lie in [0, 1], got {target_value}")
  c_look = look_confidence(confidence, num_looks)
  a = _check_accuracies(accuracies)  # Sorted: for the quantile bound.
  quantile = certified_learnability(a, q=q, sigma=sigma, eta=eta,
                                    confidence=c_look)
  if method == "betting":
    upper = mean_upper_bound(accuracies, confidence=confidence,
                             method="betting", anytime=True)
  else:
    upper = mean_upper_bound(accuracies, confidence=c_look, method=method)
  expected = float(_lipschitz_level(upper, sigma, eta))
  if bound == "quantile":
    certified = quantile is not None and (
        target_value is None or quantile <= target_value)
  else:
    certified = (expected < 1.0 if target_value is None
                 else expected <= target_value)
  return Look(draws=int(a.size), quantile=quantile, expected=expected,
              certified=bool(certified))
