"""Model-free availability attacks: OPS, AR and LSP perturbations.

Three baselines that need no surrogate network, each with its own budget:

* `one_pixel_shortcut_noise` (search: `one_pixel_shortcut`, array:
  `ops_noise`): One-Pixel Shortcut (Wu et al., "One-Pixel Shortcut: On the
  Learning Preference of Deep Neural Networks", ICLR 2023, Sec. 3): every
  image of class k gets one pixel, at a class-wise position, set to a
  class-wise corner of the colour cube (an L0 budget of one pixel).
* `autoregressive_noise` (processes: `ar_coefficients`, array: `ar_noise`):
  autoregressive perturbations (Sandoval-Segura et al., "Autoregressive
  Perturbations for Data Poisoning", NeurIPS 2022, Sec. 3): every image
  gets its own sample of its class's causal AR process, scaled to an L2
  norm of epsilon (1.0 on CIFAR-10).
* `linear_separable_noise` (array: `linear_separable_patches`): the
  synthetic, linearly separable patch noise of Yu et al. ("Availability
  Attacks Create Shortcuts", KDD 2022, Sec. 4), class-wise, scaled to an
  L2 norm of epsilon.

The method-level functions (``*_noise`` above, except the array-level
`ops_noise` and `ar_noise`) return a `jaxue.noise.CraftResult` with
``surrogate=None`` and the method's arrays in ``info``, like every other
crafting method. All perturbations are float32 in [-1, 1] that
`jaxue.noise.release` accepts; call it without ``epsilon`` (that argument
checks an L-inf budget, which these attacks do not have).
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue.noise import CraftResult

# ---------------------------------------------------------------------------
# Shared validation.
# ---------------------------------------------------------------------------


def _check_l2_epsilon(epsilon: float) -> float:
  epsilon = float(epsilon)
  if not np.isfinite(epsilon) or epsilon <= 0:
    raise ValueError(
        f"epsilon (an L2 norm in [0, 1] pixel units) must be a finite number "
        f"> 0, got {epsilon}")
  return epsilon


def _check_labels(labels, num_classes: int) -> np.ndarray:
  """1-D integer labels in [0, num_classes)."""
  if int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got "
                     f"{num_classes}")
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"expected 1-D integer labels, got {labels.dtype} of "
                     f"shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"labels must lie in [0, {num_classes}) (num_classes = "
        f"{num_classes}), got min {labels.min()}, max {labels.max()}")
  return labels


def _check_image_shape(image_shape) -> tuple[int, int, int]:
  shape = tuple(int(s) for s in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C) with positive sizes, "
                     f"got {tuple(image_shape)}")
  return shape


# ---------------------------------------------------------------------------
# OPS: One-Pixel Shortcut.
# ---------------------------------------------------------------------------

# The searching criterion's "tiny" guard, in [0, 1] pixel units: a pixel
# that every image of the class shares scores mean / 1e-8.
_OPS_TINY = 1e-8
# Images summed at once for the class moments (bounds the int64 buffers).
_OPS_CHUNK = 512


class OPSPattern(NamedTuple):
  """The class-wise one-pixel shortcut.

  Attributes:
    positions: int32 (num_classes, 2): the (row, column) of each class's
      pixel.
    values: float32 (num_classes, channels): each class's target colour, a
      corner of the colour cube ({0, 1}^C).
    scores: float64 (num_classes,): the searching criterion
      ``mean / (std + tiny)`` of the chosen pair on the class's images.
  """

  positions: np.ndarray
  values: np.ndarray
  scores: np.ndarray


def _corners(channels: int) -> np.ndarray:
  """The 2^C corners of the colour cube, (2^C, C) int64, as binary numbers
  with channel 0 the most significant bit (the reference's order)."""
  return np.asarray(list(itertools.product((0, 1), repeat=channels)),
                    np.int64).reshape(2**channels, channels)


def _ops_scores(images: np.ndarray) -> np.ndarray:
  """The OPS criterion of every (position, corner) for one class.

  With D(x) = mean_c |v_c - x_c| and corner values v_c in {0, 1}, each term
  is linear in the pixel: |v_c - x_c| = v_c + (1 - 2 v_c) x_c. So the mean
  and the variance of D over the class's images follow from the per-pixel
  first and second moments, which are exact integer sums of the uint8
  values (no loop over pixels, no cancellation: a pixel constant over the
  class has variance exactly 0).

  Args:
    images: uint8 (n, H, W, C) images of one class, n >= 1.

  Returns:
    float64 (H, W, 2^C) scores ``mean_x D / (std_x D + tiny)``.
  """
  n, _, _, channels = images.shape
  s1 = np.zeros(images.shape[1:], np.int64)
  s2 = np.zeros(images.shape[1:] + (channels,), np.int64)
  for start in range(0, n, _OPS_CHUNK):
    x = images[start:start + _OPS_CHUNK].astype(np.int64)
    s1 += x.sum(0)
    s2 += np.einsum("nhwc,nhwd->hwcd", x, x)
  corners = _corners(channels)
  w = 1 - 2 * corners  # (V, C) in {-1, 1}.
  # n * 255 * C * mean(D), exactly.
  total = n * 255 * corners.sum(1) + np.einsum("hwc,vc->hwv", s1, w)
  # (n * 255 * C)^2 * var(D) = w^T (n S2 - S1 S1^T) w, exactly.
  scatter = n * s2 - s1[..., :, None] * s1[..., None, :]
  spread = np.einsum("vc,hwcd,vd->hwv", w, scatter, w)
  scale = float(n * 255 * channels)
  mean = total / scale
  std = np.sqrt(np.maximum(spread, 0).astype(np.float64)) / scale
  return mean / (std + _OPS_TINY)


def one_pixel_shortcut(images: np.ndarray, labels: np.ndarray, *,
                       num_classes: int) -> OPSPattern:
  """Searches the One-Pixel Shortcut (Wu et al., ICLR 2023, Sec. 3,
  Algorithm 1).

  For each class k, every pixel position p and every target colour v among
  the corners of the colour cube ({0, 1}^C: 8 colours for RGB, black and
  white for grayscale) is scored by how much, and how consistently,
  setting pixel p to v changes the class's images:

      score_k(p, v) = mean_x D(x) / (std_x D(x) + tiny),
      D(x) = mean_c |v_c - x_{p,c}|,

  over the images x of class k (in [0, 1] units; population std,
  tiny = 1e-8). D is averaged over channels first, so the std measures
  the spread across images only; APBench's ``ops_poisons_generate.py``
  instead takes the mean and std of |v_c - x_{p,c}| over images *and*
  channels (same mean, and without the tiny guard).

  Classes choose greedily **in class-index order** so that no two classes
  share a (position, colour) pair: a class whose best pair was taken by a
  lower class takes its best free pair (as the reference's scan over
  classes does). Within a class, ties go to the lowest (row, column,
  colour index), colours numbered as binary numbers with channel 0 the
  most significant bit. Classes with no images choose last and take the
  first free pairs (their pixel is never used).

  Args:
    images: uint8 NHWC images.
    labels: integer labels, one per image.
    num_classes: number of classes.

  Returns:
    An `OPSPattern`.

  Raises:
    ValueError: bad images or labels (see `jaxue.data.check_dataset`), or
      more classes than (position, colour) pairs.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  labels = _check_labels(labels, num_classes)
  _, height, width, channels = images.shape
  corners = _corners(channels)
  num_pairs = height * width * corners.shape[0]
  if num_classes > num_pairs:
    raise ValueError(
        f"{num_classes} classes need distinct (pixel, colour) pairs but "
        f"{height}x{width}x{channels} images have only {num_pairs}")
  counts = np.bincount(labels, minlength=num_classes)
  # Non-empty classes first, each in index order; empty classes last.
  order = sorted(range(num_classes), key=lambda k: (counts[k] == 0, k))
  taken = np.zeros(num_pairs, bool)
  chosen = np.zeros(num_classes, np.int64)
  scores = np.zeros(num_classes, np.float64)
  for k in order:
    if counts[k]:
      flat = _ops_scores(images[labels == k]).reshape(-1)
    else:
      flat = np.zeros(num_pairs)
    ranking = np.argsort(-flat, kind="stable")
    best = ranking[np.flatnonzero(~taken[ranking])[0]]
    taken[best] = True
    chosen[k], scores[k] = best, flat[best]
  pixel, corner = np.divmod(chosen, corners.shape[0])
  row, col = np.divmod(pixel, width)
  return OPSPattern(np.stack([row, col], 1).astype(np.int32),
                    corners[corner].astype(np.float32), scores)


def ops_noise(images: np.ndarray, labels: np.ndarray, *, num_classes: int,
              pattern: OPSPattern | None = None) -> np.ndarray:
  """One-Pixel Shortcut perturbations (Wu et al., ICLR 2023, Sec. 3).

  ``noise[i] = v_k - x_i`` at class k's pixel p_k (k = labels[i]) and 0
  elsewhere, so ``jaxue.noise.release(images, labels, noise)`` (no
  epsilon: the budget is one pixel, not an L-inf ball) sets exactly that
  pixel to v_k and leaves every other pixel unchanged.

  Args:
    images: uint8 NHWC images.
    labels: integer labels.
    num_classes: number of classes.
    pattern: the shortcut to apply (e.g. searched on another split);
      `one_pixel_shortcut` of these images when None.

  Returns:
    float32 (N, H, W, C) noise in [-1, 1].
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  if pattern is None:
    pattern = one_pixel_shortcut(images, labels, num_classes=num_classes)
  positions = np.asarray(pattern.positions)
  values = np.asarray(pattern.values, np.float32)
  n, height, width, channels = images.shape
  if positions.shape != (num_classes, 2) or values.shape != (num_classes,
                                                             channels):
    raise ValueError(
        f"pattern must hold positions ({num_classes}, 2) and values "
        f"({num_classes}, {channels}), got {positions.shape} and "
        f"{values.shape}")
  if (positions.min(initial=0) < 0 or positions[:, 0].max() >= height
      or positions[:, 1].max() >= width):
    raise ValueError(f"pattern positions fall outside the {height}x{width} "
                     "images")
  if not np.all((values >= 0) & (values <= 1)):
    raise ValueError("pattern values must be colours in [0, 1]")
  rows, cols = positions[labels, 0], positions[labels, 1]
  index = np.arange(n)
  # The same float32 arithmetic as `release`, so x + noise lands on v.
  pixels = images[index, rows, cols].astype(np.float32) / 255.0
  noise = np.zeros(images.shape, np.float32)
  noise[index, rows, cols] = values[labels] - pixels
  return noise


def one_pixel_shortcut_noise(images: np.ndarray, labels: np.ndarray, *,
                             num_classes: int,
                             pattern: OPSPattern | None = None
                             ) -> CraftResult:
  """One-Pixel Shortcut as a crafting method (Wu et al., ICLR 2023, Sec.
  3): `one_pixel_shortcut` (unless ``pattern`` is given), then `ops_noise`.

  Deterministic: no key. The noise is sample-wise (each image's pixel moves
  to its class's colour).

  Args:
    images: uint8 NHWC images.
    labels: integer labels.
    num_classes: number of classes.
    pattern: the shortcut to apply; searched on these images when None.

  Returns:
    A `jaxue.noise.CraftResult` with ``surrogate=None``; ``info`` holds the
    pattern's ``positions``, ``values`` and ``scores`` (arrays) and
    ``pixels_changed=1``.
  """
  if pattern is None:
    pattern = one_pixel_shortcut(images, labels, num_classes=num_classes)
  noise = ops_noise(images, labels, num_classes=num_classes, pattern=pattern)
  return CraftResult(noise, info={
      "method": "ops", "mode": "samplewise", "pixels_changed": 1,
      "positions": np.asarray(pattern.positions),
      "values": np.asarray(pattern.values),
      "scores": np.asarray(pattern.scores)})


# ---------------------------------------------------------------------------
# AR: autoregressive perturbations.
# ---------------------------------------------------------------------------

# Candidate processes are screened as in the reference's parameter finder
# (``autoregressive_param_finder.py``): a 36x36 canvas cropped by 4.
_AR_TEST_SIZE = 36
_AR_TEST_CROP = 4
_AR_BLOCK = 128  # Candidates screened per jitted call.


def _ar_fields(coefs: jax.Array, start: jax.Array, window: int
               ) -> jax.Array:
  """Runs causal AR recursions in raster order.

  ``x[i, j] = sum_{a, b} coefs[a, b] * x[i - w + 1 + a, j - w + 1 + b]``
  over the w x w window whose bottom-right entry is the current pixel
  (its coefficient is 0), for i, j >= w - 1; the first w - 1 rows and
  columns keep their start values.

  Args:
    coefs: (B, w, w) coefficients, one process per field.
    start: (B, H, W) start values (only the first w - 1 rows and columns
      are read).
    window: w.

  Returns:
    (B, H, W) fields.
  """
  w = window
  width = start.shape[2]
  span = width - w + 1  # Columns updated per row.

  def row_step(prev, start_row):
    # prev: the last w - 1 rows, (B, w - 1, W). The part of every updated
    # pixel's sum that comes from the rows above, for the whole row at once.
    above = jnp.zeros((start.shape[0], span), start.dtype)
    for a in range(w - 1):
      for b in range(w):
        above = above + coefs[:, a, b, None] * prev[:, a, b:b + span]

    def col_step(last, above_j):
      # last: the w - 1 pixels left of the current one, (B, w - 1).
      x = above_j + jnp.sum(coefs[:, w - 1, :w - 1] * last, axis=1)
      return jnp.concatenate([last[:, 1:], x[:, None]], axis=1), x

    _, xs = jax.lax.scan(col_step, start_row[:, :w - 1], above.T)
    row = jnp.concatenate([start_row[:, :w - 1], xs.T], axis=1)
    return jnp.concatenate([prev[:, 1:], row[:, None]], axis=1), row

  _, rows = jax.lax.scan(row_step, start[:, :w - 1],
                         jnp.swapaxes(start[:, w - 1:], 0, 1))
  return jnp.concatenate([start[:, :w - 1], jnp.swapaxes(rows, 0, 1)],
                         axis=1)


def _l2_normalise(fields: jax.Array, epsilon: float | jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """Scales each entry of the leading axis to L2 norm epsilon.

  Returns the scaled fields and the norms (keepdims). A field whose norm
  overflows (a diverged process) comes back as NaN, never as silent zeros.
  """
  axes = tuple(range(1, fields.ndim))
  norm = jnp.sqrt(jnp.sum(jnp.square(fields), axis=axes, keepdims=True))
  usable = jnp.isfinite(norm) & (norm > 0)
  scale = jnp.where(usable, epsilon / jnp.where(usable, norm, 1.0),
                    jnp.where(norm == 0, 0.0, jnp.nan))
  return fields * scale, norm


def _normalised_gaussian(key: jax.Array, lead: tuple[int, ...],
                         window: int) -> jax.Array:
  """Gaussian coefficients, current pixel 0, each window summing to 1."""
  coefs = jax.random.normal(key, lead + (window, window))
  coefs = coefs.at[..., -1, -1].set(0.0)
  return coefs / jnp.sum(coefs, axis=(-2, -1), keepdims=True)


@functools.partial(jax.jit, static_argnames=("channels", "window", "trials"))
def _screen(key: jax.Array, first: jax.Array, *, channels: int, window: int,
            trials: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws candidates ``first .. first + _AR_BLOCK - 1`` (candidate i from
  ``fold_in(key, i)``, so the stream does not depend on the block size) and
  runs each ``trials`` times on the reference's test canvas.

  Returns:
    ``(coefs, norms, signal)``: (block, C, w, w) coefficients, (block,
    trials) un-normalised L2 norms, and the last trial's field scaled to
    unit L2 norm, (block, C, 32, 32).
  """
  index = first + jnp.arange(_AR_BLOCK)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)

  def one(k):
    coef_key, start_key = jax.random.split(k)
    coefs = _normalised_gaussian(coef_key, (channels,), window)
    start = jax.random.normal(
        start_key, (trials, channels, _AR_TEST_SIZE, _AR_TEST_SIZE))
    tiled = jnp.broadcast_to(coefs, (trials,) + coefs.shape)
    fields = _ar_fields(tiled.reshape(-1, window, window),
                        start.reshape((-1,) + start.shape[2:]), window)
    fields = fields.reshape(start.shape)[..., _AR_TEST_CROP:, _AR_TEST_CROP:]
    unit, norms = _l2_normalise(fields, 1.0)
    # A diverged run has an infinite or NaN norm: it fails the check.
    return coefs, norms.reshape(trials), unit[-1]

  return jax.vmap(one)(keys)


def ar_filters(coefficients: np.ndarray) -> np.ndarray:
  """The matching filters: the coefficients with -1 at the current pixel.

  Correlating a class's filter with a field of that class's process gives
  exactly 0 at every pixel the recursion produced (Sandoval-Segura et al.,
  Sec. 3); the filter of another class does not.
  """
  filters = np.array(coefficients, np.float32, copy=True)
  filters[..., -1, -1] = -1.0
  return filters


def ar_residual(noise: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
  """The recursion's residual of HWC fields under one process.

  Args:
    noise: (..., H, W, C) fields.
    coefficients: (C, w, w) one process.

  Returns:
    (..., H - w + 1, W - w + 1, C): ``x[i, j] - sum coefs * window``,
    zero where the field follows the process.
  """
  noise = np.asarray(noise, np.float64)
  filters = ar_filters(coefficients).astype(np.float64)
  w = filters.shape[-1]
  windows = np.lib.stride_tricks.sliding_window_view(noise, (w, w),
                                                     axis=(-3, -2))
  # windows: (..., H - w + 1, W - w + 1, C, w, w).
  return -np.einsum("...cab,cab->...c", windows, filters)


def ar_default_min_response(num_classes: int) -> float:
  """The distinctness bound of the published process set for this many
  classes: 10 for the CIFAR-10 set (up to 10 classes), 3 for the CIFAR-100
  set (more classes).

  The bound matters. On the whole Fashion-MNIST training set (L2 1.0,
  small CNN 16/32/64, 8-epoch victims, clean 0.92), releases screened at
  3 left victims at 0.52-0.73 over four craft seeds, those screened at 10
  at 0.35-0.47 (``experiments/baselines/ar_distinctness.json``).
  """
  return 10.0 if num_classes <= 10 else 3.0


def ar_coefficients(key: jax.Array, num_classes: int, channels: int,
                    window: int = 3, *, max_norm: float = 50.0,
                    min_response: float | None = None, trials: int = 3,
                    max_candidates: int = 2_000_000,
                    progress: bool = True) -> np.ndarray:
  """Per-class AR coefficients (Sandoval-Segura et al., NeurIPS 2022,
  Sec. 3, and the reference's ``autoregressive_param_finder.py``).

  Normalisation (that of the authors' ``ARProcessPerturb3Channel``,
  ``autoregressive.py``): per class and channel, draw the
  ``window * window - 1`` coefficients i.i.d. N(0, 1), set the current
  pixel's (bottom-right) to 0 and divide by their sum, so the coefficients
  sum to 1 (a constant field is a fixed point of the recursion). That
  alone does not keep every process from blowing up, so candidates are
  screened as in the reference finder, in draw order:

  1. stability: each of ``trials`` runs from Gaussian starts on a 36x36
     canvas, cropped by 4, must stay finite with an (un-normalised) L2
     norm <= ``max_norm`` (50, the finder's bound; about 1.5% of
     3-channel candidates pass, most of the rest diverge);
  2. distinctness: the last run, scaled to unit L2 norm, must excite every
     previously accepted class's matching filter (`ar_filters`):
     ``sum relu(filter * signal) >= min_response`` (the correlation summed
     over the 30x30 valid positions). By default the bound of the
     published set for the class count (`ar_default_min_response`): 10 as
     for CIFAR-10 up to 10 classes, 3 as for CIFAR-100 above. Measured on
     2 CPU cores: ten 1-channel processes at 10 take 1-33 s (key
     dependent), ten 3-channel ones 73-77 s (two keys; just over 200,000
     draws), hence the 2,000,000-draw budget and the progress bar; a
     hundred at 3 take about 20 s. A stricter bound gives more distinct
     classes and a stronger shortcut (see `ar_default_min_response`).

  Candidate i is drawn from ``fold_in(key, i)``, so the result depends
  only on the key and the arguments.

  Args:
    key: randomness.
    num_classes: processes to find.
    channels: image channels (one process per channel and class).
    window: w; the process reads a w x w window (w * w - 1 coefficients).
    max_norm: the stability bound.
    min_response: the distinctness bound (see above); None for
      `ar_default_min_response` (num_classes).
    trials: runs per candidate in the stability check.
    max_candidates: give up after this many draws.
    progress: show a tqdm bar (drawn only once the search has taken 2 s).

  Returns:
    float32 (num_classes, channels, window, window), ``[..., -1, -1] = 0``,
    each (class, channel) window summing to 1.

  Raises:
    ValueError: bad arguments, or too few candidates passed.
  """
  if int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got "
                     f"{num_classes}")
  if int(channels) != channels or channels < 1:
    raise ValueError(f"channels must be a positive integer, got {channels}")
  largest = _AR_TEST_SIZE - _AR_TEST_CROP
  if int(window) != window or not 2 <= window <= largest:
    raise ValueError(f"window must be an integer in [2, {largest}], got "
                     f"{window}")
  if trials < 1 or max_candidates < 1 or not max_norm > 0:
    raise ValueError("trials, max_candidates and max_norm must be positive")
  if min_response is None:
    min_response = ar_default_min_response(num_classes)
  if not (np.isfinite(min_response) and min_response >= 0):
    raise ValueError(f"min_response must be a finite number >= 0, got "
                     f"{min_response}")
  accepted: list[np.ndarray] = []
  filters = np.zeros((0, channels, window, window), np.float64)
  with tqdm(total=int(num_classes), desc="AR processes", unit="process",
            delay=2.0, disable=not progress, leave=False) as bar:
    for first in range(0, max_candidates, _AR_BLOCK):
      coefs, norms, signal = jax.device_get(_screen(
          key, jnp.asarray(first, jnp.int32), channels=int(channels),
          window=int(window), trials=int(trials)))
      stable = np.all(np.isfinite(norms) & (norms <= max_norm), axis=1)
      stable &= np.all(np.isfinite(coefs), axis=(1, 2, 3))
      for i in np.flatnonzero(stable[:max_candidates - first]):
        if accepted:
          windows = np.lib.stride_tricks.sliding_window_view(
              signal[i].astype(np.float64), (window, window), axis=(1, 2))
          out = np.einsum("cijab,kcab->kij", windows, filters)
          if np.maximum(out, 0).sum((1, 2)).min() < min_response:
            continue
        accepted.append(coefs[i])
        filters = ar_filters(np.stack(accepted)).astype(np.float64)
        bar.update(1)
        if len(accepted) == num_classes:
          return np.stack(accepted).astype(np.float32)
      bar.set_postfix(draws=min(first + _AR_BLOCK, max_candidates))
  raise ValueError(
      f"found only {len(accepted)} of {num_classes} AR processes among "
      f"{max_candidates} candidates; lower min_response (now "
      f"{min_response}) or raise max_candidates")


@functools.partial(jax.jit, static_argnames=("image_shape", "window", "crop",
                                             "batch_size"))
def _ar_generate(key, coefs, epsilon, *, image_shape, window, crop,
                 batch_size):
  """One AR field per image: coefs (N, C, w, w) -> (N, H, W, C)."""
  height, width, channels = image_shape
  canvas = (height + crop, width + crop)

  def one(args):
    k, c = args
    start = jax.random.normal(k, (channels,) + canvas)
    field = _ar_fields(c, start, window)[:, crop:, crop:]
    noise, _ = _l2_normalise(field[None], epsilon)
    return jnp.transpose(noise[0], (1, 2, 0))

  keys = jax.random.split(key, coefs.shape[0])
  return jax.lax.map(one, (keys, coefs), batch_size=batch_size)


def ar_noise(key: jax.Array, labels: np.ndarray,
             image_shape: tuple[int, int, int], *, num_classes: int,
             epsilon: float = 1.0, window: int = 3, crop: int = 4,
             coefficients: np.ndarray | None = None,
             batch_size: int = 1024) -> np.ndarray:
  """Autoregressive (AR) perturbations as an array (Sandoval-Segura et al.,
  NeurIPS 2022, Sec. 3); the method-level form is `autoregressive_noise`.

  Each class k has one causal AR process per channel (`ar_coefficients`):
  ``x[i, j] = sum_{a, b} beta_k[a, b] * x[i - w + 1 + a, j - w + 1 + b]``
  over the w x w window whose bottom-right entry is the current pixel.
  Each image gets its own sample of its class's process: Gaussian start
  values fill the first w - 1 rows and columns of an (H + crop) x
  (W + crop) canvas, the recursion fills the rest in raster order (a
  `lax.scan` over rows with a `lax.scan` over columns, vectorised over
  images and channels, jitted), the first ``crop`` rows and columns are
  cut off so no start value survives (the authors' code draws 36x36 and
  crops to 32x32 on CIFAR), and the (C, H, W) field is scaled to an L2
  norm of exactly ``epsilon`` (1.0 on CIFAR-10 in the paper). The
  recursion is linear, so the scaled noise still follows it exactly (see
  `ar_residual`).

  Values can only leave [-1, 1] when epsilon > 1; they are then clipped
  (which only lowers the norm).

  Args:
    key: randomness (coefficients and start values).
    labels: integer labels, one per image.
    image_shape: (H, W, C).
    num_classes: number of classes.
    epsilon: the L2 norm of every image's perturbation ([0, 1] units).
    window: w, the AR window (3 in the paper: 8 coefficients).
    crop: rows/columns cut from the top-left of the canvas (>= w - 1).
    coefficients: (num_classes, C, w, w) processes to use (e.g. the
      published ones); drawn with `ar_coefficients` when None.
    batch_size: images generated at once (a memory knob; the output does
      not depend on it).

  Returns:
    float32 (N, H, W, C) noise.

  Raises:
    ValueError: bad arguments, or a process that diverges on this canvas
      (possible with given ``coefficients``, or on images much larger than
      the 32x32 screening size).
  """
  labels = _check_labels(labels, num_classes)
  image_shape = _check_image_shape(image_shape)
  epsilon = _check_l2_epsilon(epsilon)
  if int(window) != window or window < 2:
    raise ValueError(f"window must be an integer >= 2, got {window}")
  if int(crop) != crop or crop < window - 1:
    raise ValueError(f"crop must be an integer >= window - 1 = {window - 1} "
                     f"so that no start value survives, got {crop}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  channels = image_shape[2]
  coef_key, start_key = jax.random.split(key)
  if coefficients is None:
    coefficients = ar_coefficients(coef_key, num_classes, channels, window)
  coefficients = np.asarray(coefficients, np.float32)
  expected = (num_classes, channels, window, window)
  if coefficients.shape != expected:
    raise ValueError(f"coefficients must have shape {expected}, got "
                     f"{coefficients.shape}")
  if labels.size == 0:
    return np.zeros((0,) + image_shape, np.float32)
  noise = _ar_generate(
      start_key, jnp.asarray(coefficients[labels]), jnp.float32(epsilon),
      image_shape=image_shape, window=int(window), crop=int(crop),
      batch_size=int(min(batch_size, labels.size)))
  noise = np.asarray(noise)
  if not np.all(np.isfinite(noise)):
    raise ValueError(
        f"an AR process diverged on the {image_shape[0] + crop}x"
        f"{image_shape[1] + crop} canvas; use another key or pass stabler "
        "coefficients")
  return np.clip(noise, -1.0, 1.0)


def autoregressive_noise(key: jax.Array, images: np.ndarray,
                         labels: np.ndarray, *, num_classes: int,
                         epsilon: float = 1.0, window: int = 3,
                         crop: int = 4,
                         coefficients: np.ndarray | None = None,
                         min_response: float | None = None,
                         batch_size: int = 1024,
                         progress: bool = True) -> CraftResult:
  """Autoregressive perturbations as a crafting method (Sandoval-Segura et
  al., NeurIPS 2022, Sec. 3): `ar_coefficients` (unless ``coefficients``
  are given), then one sample per image (`ar_noise`).

  Args:
    key: randomness: ``coef_key, noise_key = split(key)`` draw the
      processes and the samples.
    images: uint8 NHWC images (their shape sets the noise's).
    labels: integer labels.
    num_classes: number of classes.
    epsilon: the L2 norm of every image's perturbation ([0, 1] units).
    window: w, the AR window.
    crop: rows/columns cut from the top-left of the canvas (>= w - 1).
    coefficients: (num_classes, C, w, w) processes to use; searched when
      None.
    min_response: the search's distinctness bound (None:
      `ar_default_min_response`).
    batch_size: images generated at once (a memory knob).
    progress: the search's progress bar.

  Returns:
    A `jaxue.noise.CraftResult` with ``surrogate=None``, sample-wise noise,
    and ``info`` with ``coefficients`` (array), ``window``,
    ``min_response`` and ``l2_epsilon``.
  """
  images = np.asarray(images)
  data_lib.check_dataset(images, np.asarray(labels), num_classes=num_classes)
  shape = tuple(images.shape[1:])
  coef_key, noise_key = jax.random.split(key)
  if coefficients is None:
    if min_response is None:
      min_response = ar_default_min_response(num_classes)
    coefficients = ar_coefficients(coef_key, num_classes, shape[2], window,
                                   min_response=min_response,
                                   progress=progress)
  noise = ar_noise(noise_key, labels, shape, num_classes=num_classes,
                   epsilon=epsilon, window=window, crop=crop,
                   coefficients=coefficients, batch_size=batch_size)
  return CraftResult(noise, info={
      "method": "ar", "mode": "samplewise",
      "coefficients": np.asarray(coefficients, np.float32),
      "window": int(window), "min_response": min_response,
      "l2_epsilon": float(epsilon)})


# ---------------------------------------------------------------------------
# LSP: linearly separable synthetic patches.
# ---------------------------------------------------------------------------


def lsp_default_epsilon(image_shape: tuple[int, int, int]) -> float:
  """sqrt(H * W * C) * 6/255, the L2 norm of a 6/255 change of every pixel
  (1.30 on CIFAR-10, 0.66 on 28x28 grayscale)."""
  height, width, channels = _check_image_shape(image_shape)
  return float(np.sqrt(height * width * channels) * 6 / 255)


def lsp_default_patch_size(image_shape: tuple[int, int, int]) -> int:
  """min(H, W) // 4: 8 on 32x32 (the paper's and APBench's), 7 on 28x28."""
  height, width, _ = _check_image_shape(image_shape)
  return max(1, min(height, width) // 4)


def linear_separable_patches(key: jax.Array, labels: np.ndarray,
                             image_shape: tuple[int, int, int], *,
                             num_classes: int, epsilon: float | None = None,
                             patch_size: int | None = None) -> np.ndarray:
  """Linearly separable synthetic patch noise, LSP (Yu et al., KDD 2022,
  Sec. 4).

  Per class, one pattern constant on patch_size x patch_size patches, its
  values drawn i.i.d. U(-1, 1) per patch and channel, upsampled to the
  image and scaled to an L2 norm of exactly ``epsilon``. The classes'
  patterns are then linearly separable (and easy to learn): a shortcut.

  This is the class-wise form. Yu et al.'s code (and APBench's
  ``lsp_poisons_generate.py``, adapted from it) draws one point per
  *image* from well-separated Gaussian class clusters
  (``make_classification`` with class_sep = 10) in the patch space; the
  class centres dominate, and this function keeps only them.

  Defaults, both those of the authors' code
  (``synthetic_perturbations/cifar_train.py``: ``--patchsize 8``,
  ``--eps 6``) and of APBench: ``patch_size`` = min(H, W) // 4
  (`lsp_default_patch_size`: 8 on 32x32, 7 on 28x28) and ``epsilon`` =
  sqrt(H * W * C) * 6/255 (`lsp_default_epsilon`: 1.30 on CIFAR-10), the
  L2 norm of a 6/255 change of every pixel, which the code computes from
  an "L-inf" 6/255 and uses as the L2 radius.

  Values can only leave [-1, 1] when epsilon > patch_size; they are then
  clipped (which only lowers the norm).

  Args:
    key: randomness.
    labels: integer labels (checked against num_classes).
    image_shape: (H, W, C).
    num_classes: number of classes.
    epsilon: the L2 norm of every class's pattern ([0, 1] units).
    patch_size: side of the constant patches; must divide H and W.

  Returns:
    float32 (num_classes, H, W, C) class-wise noise (`jaxue.noise.release`
    picks ``noise[label]``).
  """
  _check_labels(labels, num_classes)
  height, width, channels = _check_image_shape(image_shape)
  if epsilon is None:
    epsilon = lsp_default_epsilon(image_shape)
  epsilon = _check_l2_epsilon(epsilon)
  if patch_size is None:
    patch_size = lsp_default_patch_size(image_shape)
  if int(patch_size) != patch_size or patch_size < 1:
    raise ValueError(f"patch_size must be a positive integer, got "
                     f"{patch_size}")
  patch_size = int(patch_size)
  if height % patch_size or width % patch_size:
    raise ValueError(
        f"patch_size {patch_size} does not divide the {height}x{width} "
        "images; pick a divisor of both sides")
  grid = jax.random.uniform(
      key, (num_classes, height // patch_size, width // patch_size,
            channels), jnp.float32, -1.0, 1.0)
  patterns = jnp.repeat(jnp.repeat(grid, patch_size, axis=1), patch_size,
                        axis=2)
  # _l2_normalise works on channel-first fields; the norm is layout-free.
  noise, _ = _l2_normalise(patterns, epsilon)
  return np.clip(np.asarray(noise, np.float32), -1.0, 1.0)


def linear_separable_noise(key: jax.Array, images: np.ndarray,
                           labels: np.ndarray, *, num_classes: int,
                           epsilon: float | None = None,
                           patch_size: int | None = None) -> CraftResult:
  """Linearly separable patch noise as a crafting method (Yu et al., KDD
  2022, Sec. 4): `linear_separable_patches` for the images' shape.

  Args:
    key: randomness.
    images: uint8 NHWC images (their shape sets the noise's).
    labels: integer labels.
    num_classes: number of classes.
    epsilon: L2 norm of each class's pattern (`lsp_default_epsilon` when
      None).
    patch_size: side of the constant patches (`lsp_default_patch_size`
      when None).

  Returns:
    A `jaxue.noise.CraftResult` with ``surrogate=None``, class-wise noise
    (num_classes, H, W, C), and ``info`` with ``patch_size`` and
    ``l2_epsilon``.
  """
  images = np.asarray(images)
  data_lib.check_dataset(images, np.asarray(labels), num_classes=num_classes)
  shape = tuple(images.shape[1:])
  epsilon = lsp_default_epsilon(shape) if epsilon is None else epsilon
  patch_size = (lsp_default_patch_size(shape) if patch_size is None
                else patch_size)
  noise = linear_separable_patches(key, labels, shape,
                                   num_classes=num_classes, epsilon=epsilon,
                                   patch_size=patch_size)
  return CraftResult(noise, info={
      "method": "lsp", "mode": "classwise", "patch_size": int(patch_size),
      "l2_epsilon": float(epsilon)})
