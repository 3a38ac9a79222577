"""UEraser: adversarial augmentations that erase unlearnable shortcuts.

Qin, Gao, Zhao, Ye and Xu, "Learning the Unlearnable: Adversarial
Augmentations Suppress Unlearnable Example Attacks" (ICCV-W AROW 2023,
arXiv 2303.15127). A victim trains on heavily augmented copies of each batch
and minimises the *largest* of K per-example losses,

    loss_K = mean_i max_{k <= K} CE(f(A_k(x_i)), y_i),    (Sec. 3)

so that a shortcut which survives one augmentation but not another stops
paying off. `augment` is the policy A (in order): plasma brightness and
plasma contrast (fractal noise from the diamond-square algorithm), a channel
shuffle, then one TrivialAugment operation (Mueller & Hutter, ICCV 2021) per
call, with its magnitude drawn per image. The max-over-K loss lives in
`jaxue.train.train_step` (``repeats=K``); `schedule` gives the authors'
three schedules of K: Lite (K = 1), standard (K = 5 for the first quarter
of the epochs, then 1) and Max (K = 5 throughout).

Status of this port: the policy, its probabilities and ranges and the
schedules follow the authors' training scripts and APBench's defence, which
build the policy from kornia. kornia's diamond-square and TrivialAugment
are reimplemented here in `jax.numpy`; where kornia's semantics are
version-dependent (rotation, shear and translation drawn without a random
sign in newer releases), the signs are fixed explicitly: symmetric ranges,
as in TrivialAugment's paper. The plasma probabilities default to 1.0 (the
authors' EM notebook and APBench; their root ``ueraser.py`` uses 0.5). The
paper's tables were not checked against this port.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# TrivialAugment's operations, in kornia's order, with their magnitude
# ranges (the symmetric ones get a random sign per image).
OPERATIONS = ("auto_contrast", "equalize", "rotate", "posterize", "solarize",
              "contrast", "brightness", "sharpness", "shear_x", "shear_y",
              "translate_x", "translate_y")
RANGES = {
    "rotate": (-30.0, 30.0),       # degrees
    "posterize": (0, 4),           # bits kept, an integer
    "solarize": (0.0, 1.0),        # threshold
    "contrast": (0.1, 1.9),        # factor
    "brightness": (0.1, 1.9),      # factor (kornia adds factor - 1)
    "sharpness": (0.1, 1.9),       # factor
    "shear_x": (-0.3, 0.3),        # shear coefficient
    "shear_y": (-0.3, 0.3),
    "translate_x": (-0.5, 0.5),    # fraction of the image side
    "translate_y": (-0.5, 0.5),
}
# The authors' K and the share of the epochs that the standard schedule
# trains with K repeats (50 of 200 epochs in their LSP script).
REPEATS = 5
STANDARD_FRACTION = 0.25


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(f"images must be NHWC (4-D), got shape {images.shape}")


def _uniform(key: jax.Array, n: int, low: float, high: float) -> jax.Array:
  return jax.random.uniform(key, (n,), minval=low, maxval=high)


# ------------------------------------------------------------ plasma noise
def _interleave(a: jax.Array, b: jax.Array, axis: int) -> jax.Array:
  """``a0 b0 a1 b1 ... a_m`` along ``axis`` (``b`` one entry shorter)."""
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, 1)
  both = jnp.stack([a, jnp.pad(b, pad)], axis=axis + 1)
  shape = list(a.shape)
  shape[axis] *= 2
  return jax.lax.slice_in_dim(both.reshape(shape), 0, shape[axis] - 1,
                              axis=axis)


def plasma(key: jax.Array, shape: Sequence[int],
           roughness: jax.Array | float) -> jax.Array:
  """Plasma fractals in [0, 1] by the diamond-square algorithm.

  As kornia's ``diamond_square`` (which UEraser's plasma augmentations
  call): a 3x3 grid of uniform values is refined to ``2^n + 1`` points a
  side; every new point is ``(1 - s) * mean(neighbours) + s * u``,
  ``u ~ U(0, 1)``, with ``s = roughness^level`` (diamond step: the centre
  of each square from its 4 corners; square step: each edge midpoint from
  its 3 or 4 corner and centre neighbours), so every value stays in [0, 1].
  The grid is cut to ``shape``'s top-left corner.

  Args:
    key: randomness of the fractal.
    shape: ``(N, H, W, C)``: one independent map per image and channel.
    roughness: a scalar or one value per image (N,) in (0, 1]; smaller is
      smoother.

  Returns:
    float32 maps of ``shape`` in [0, 1].
  """
  n, h, w, c = shape
  levels = max(math.ceil(math.log2(max(h, w, 3) - 1)) - 1, 0)
  sides = [2 ** (level + 2) + 1 for level in range(levels)]
  roughness = jnp.broadcast_to(jnp.asarray(roughness, jnp.float32), (n,))
  roughness = roughness[:, None, None, None]
  # One draw for every level: separate draws of different shapes make XLA
  # compile one threefry kernel each, which dominates the compile time.
  u = jax.random.uniform(key, (n, 9 + sum(s * s for s in sides), c))
  grid, offset = u[:, :9].reshape(n, 3, 3, c), 9
  scale = jnp.ones_like(roughness)
  for side in sides:
    scale = scale * roughness
    fresh = u[:, offset:offset + side * side].reshape(n, side, side, c)
    offset += side * side
    m = grid.shape[1]

    def mix(mean, noise):
      return (1 - scale) * mean + scale * noise

    centres = mix((grid[:, :-1, :-1] + grid[:, :-1, 1:] + grid[:, 1:, :-1]
                   + grid[:, 1:, 1:]) / 4, fresh[:, 1::2, 1::2])
    count = 2.0 + (jnp.arange(m) > 0) + (jnp.arange(m) < m - 1)
    row = jnp.zeros((n, 1, m - 1, c))
    above = jnp.concatenate([row, centres], 1)
    below = jnp.concatenate([centres, row], 1)
    across = mix((grid[:, :, :-1] + grid[:, :, 1:] + above + below)
                 / count[None, :, None, None], fresh[:, ::2, 1::2])
    column = jnp.zeros((n, m - 1, 1, c))
    left = jnp.concatenate([column, centres], 2)
    right = jnp.concatenate([centres, column], 2)
    down = mix((grid[:, :-1] + grid[:, 1:] + left + right)
               / count[None, None, :, None], fresh[:, 1::2, ::2])
    grid = _interleave(_interleave(grid, across, 2),
                       _interleave(down, centres, 2), 1)
  return grid[:, :h, :w]


def plasma_brightness(key: jax.Array, images: jax.Array, *,
                      roughness: tuple[float, float] = (0.3, 0.7),
                      intensity: tuple[float, float] = (0.5, 1.0)
                      ) -> jax.Array:
  """kornia's RandomPlasmaBrightness: ``clip(x + a (2P - 1), 0, 1)``,
  ``a ~ U(intensity)``, P a `plasma` map of roughness ``~ U(roughness)``
  (both per image)."""
  n = images.shape[0]
  r_key, a_key, p_key = jax.random.split(key, 3)
  rough = _uniform(r_key, n, *roughness)
  amount = _uniform(a_key, n, *intensity)[:, None, None, None]
  noise = plasma(p_key, images.shape, rough)
  return jnp.clip(images + amount * (2 * noise - 1), 0, 1)


def plasma_contrast(key: jax.Array, images: jax.Array, *,
                    roughness: tuple[float, float] = (0.3, 0.7)
                    ) -> jax.Array:
  """kornia's RandomPlasmaContrast: ``clip((x - 0.5) 4P + 0.5, 0, 1)``."""
  r_key, p_key = jax.random.split(key)
  rough = _uniform(r_key, images.shape[0], *roughness)
  noise = plasma(p_key, images.shape, rough)
  return jnp.clip((images - 0.5) * 4 * noise + 0.5, 0, 1)


def channel_shuffle(key: jax.Array, images: jax.Array) -> jax.Array:
  """A random permutation of the channels per image (no-op on grayscale)."""
  n, _, _, c = images.shape
  if c == 1:
    return images
  order = jax.vmap(lambda k: jax.random.permutation(k, c))(
      jax.random.split(key, n))
  return jnp.take_along_axis(images, order[:, None, None, :], axis=-1)


# ---------------------------------------------------- TrivialAugment's ops
def _warp(images: jax.Array, inverse: jax.Array) -> jax.Array:
  """Bilinear resampling with zero fill: output pixel p reads the input at
  ``inverse[i] @ (p - centre, 1) + centre`` (pixel units, x then y)."""
  n, h, w, c = images.shape
  cy, cx = (h - 1) / 2, (w - 1) / 2
  ys, xs = jnp.meshgrid(jnp.arange(h) - cy, jnp.arange(w) - cx,
                        indexing="ij")
  points = jnp.stack([xs.ravel(), ys.ravel(), jnp.ones(h * w)])   # (3, HW)
  source = jnp.einsum("nij,jp->nip", inverse, points)            # (N, 2, HW)
  sx, sy = source[:, 0] + cx, source[:, 1] + cy
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  flat = images.reshape(n, h * w, c)
  out = jnp.zeros((n, h * w, c), images.dtype)
  for dx in (0, 1):
    for dy in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      weight = (1 - jnp.abs(sx - xi)) * (1 - jnp.abs(sy - yi))
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      index = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1))
      values = jnp.take_along_axis(flat, index.astype(jnp.int32)[..., None],
                                   axis=1)
      out = out + jnp.where(inside, weight, 0.0)[..., None] * values
  return out.reshape(n, h, w, c)


def _affine(images: jax.Array, a: jax.Array, b: jax.Array, tx: jax.Array,
            d: jax.Array, e: jax.Array, ty: jax.Array) -> jax.Array:
  inverse = jnp.stack([jnp.stack([a, b, tx], -1), jnp.stack([d, e, ty], -1)],
                      axis=1)
  return _warp(images, inverse)


def _per_image(values: jax.Array) -> jax.Array:
  return values[:, None, None, None]


def auto_contrast(key: jax.Array, images: jax.Array) -> jax.Array:
  """Stretches each image's channels to the full [0, 1] range (constant
  channels are kept)."""
  del key
  lo = images.min(axis=(1, 2), keepdims=True)
  hi = images.max(axis=(1, 2), keepdims=True)
  span = hi - lo
  stretched = (images - lo) / jnp.where(span > 0, span, 1.0)
  return jnp.where(span > 0, stretched, images)


def equalize(key: jax.Array, images: jax.Array) -> jax.Array:
  """Histogram equalisation per image and channel on 256 levels, with
  PIL's and torchvision's lookup table (a channel whose histogram has one
  dominant level is kept)."""
  del key
  n, h, w, c = images.shape
  levels = jnp.round(jnp.clip(images, 0, 1) * 255).astype(jnp.int32)
  levels = levels.transpose(0, 3, 1, 2).reshape(n, c, h * w)
  hist = jax.nn.one_hot(levels, 256, dtype=jnp.int32).sum(axis=2)
  last = 255 - jnp.argmax(hist[..., ::-1] > 0, axis=-1)
  last_count = jnp.take_along_axis(hist, last[..., None], axis=-1)[..., 0]
  step = (h * w - last_count) // 255
  safe = jnp.maximum(step, 1)[..., None]
  lut = (jnp.cumsum(hist, axis=-1) + safe // 2) // safe
  lut = jnp.clip(jnp.concatenate([jnp.zeros_like(lut[..., :1]),
                                  lut[..., :-1]], axis=-1), 0, 255)
  mapped = jnp.take_along_axis(lut, levels, axis=-1)
  out = jnp.where((step > 0)[..., None], mapped, levels) / 255.0
  return out.reshape(n, c, h, w).transpose(0, 2, 3, 1).astype(images.dtype)


def rotate(key: jax.Array, images: jax.Array) -> jax.Array:
  """Rotation about the centre by U(-30, 30) degrees per image."""
  theta = jnp.deg2rad(_uniform(key, images.shape[0], *RANGES["rotate"]))
  cos, sin, zero = jnp.cos(theta), jnp.sin(theta), jnp.zeros_like(theta)
  return _affine(images, cos, sin, zero, -sin, cos, zero)


def posterize(key: jax.Array, images: jax.Array) -> jax.Array:
  """Keeps the top ``bits ~ U{0..4}`` bits of each 8-bit value (0 bits is
  a black image, as in kornia)."""
  low, high = RANGES["posterize"]
  bits = jax.random.randint(key, (images.shape[0],), low, high + 1)
  levels = jnp.floor(jnp.clip(images, 0, 1) * 255).astype(jnp.int32)
  mask = (255 >> (8 - bits)) << (8 - bits)
  return ((levels & _per_image(mask)) / 255.0).astype(images.dtype)


def solarize(key: jax.Array, images: jax.Array) -> jax.Array:
  """Inverts every value above a threshold ``~ U(0, 1)`` per image."""
  threshold = _per_image(_uniform(key, images.shape[0], *RANGES["solarize"]))
  return jnp.where(images < threshold, images, 1 - images)


def contrast(key: jax.Array, images: jax.Array) -> jax.Array:
  """kornia's contrast: ``clip(x * f, 0, 1)``, ``f ~ U(0.1, 1.9)``."""
  factor = _per_image(_uniform(key, images.shape[0], *RANGES["contrast"]))
  return jnp.clip(images * factor, 0, 1)


def brightness(key: jax.Array, images: jax.Array) -> jax.Array:
  """kornia's brightness: ``clip(x + f - 1, 0, 1)``, ``f ~ U(0.1, 1.9)``."""
  factor = _per_image(_uniform(key, images.shape[0], *RANGES["brightness"]))
  return jnp.clip(images + factor - 1, 0, 1)


def sharpness(key: jax.Array, images: jax.Array) -> jax.Array:
  """PIL's sharpness: blend with a 3x3 smoothed image (weights 1, centre 5,
  over 13; border pixels kept), ``d + f (x - d)``, ``f ~ U(0.1, 1.9)``."""
  factor = _per_image(_uniform(key, images.shape[0], *RANGES["sharpness"]))
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = images.shape[1:3]
  smooth = sum(padded[:, i:i + h, j:j + w] for i in range(3)
               for j in range(3))
  smooth = (smooth + 4 * images) / 13
  border = jnp.zeros((h, w), bool).at[1:-1, 1:-1].set(True)
  smooth = jnp.where(border[None, :, :, None], smooth, images)
  return jnp.clip(smooth + factor * (images - smooth), 0, 1)


def _shear(key: jax.Array, images: jax.Array, axis: str) -> jax.Array:
  s = _uniform(key, images.shape[0], *RANGES[f"shear_{axis}"])
  one, zero = jnp.ones_like(s), jnp.zeros_like(s)
  if axis == "x":
    return _affine(images, one, s, zero, zero, one, zero)
  return _affine(images, one, zero, zero, s, one, zero)


def shear_x(key: jax.Array, images: jax.Array) -> jax.Array:
  """Horizontal shear about the centre, coefficient ``~ U(-0.3, 0.3)``."""
  return _shear(key, images, "x")


def shear_y(key: jax.Array, images: jax.Array) -> jax.Array:
  """Vertical shear about the centre, coefficient ``~ U(-0.3, 0.3)``."""
  return _shear(key, images, "y")


def _translate(key: jax.Array, images: jax.Array, axis: str) -> jax.Array:
  side = images.shape[2] if axis == "x" else images.shape[1]
  shift = _uniform(key, images.shape[0], *RANGES[f"translate_{axis}"]) * side
  one, zero = jnp.ones_like(shift), jnp.zeros_like(shift)
  if axis == "x":
    return _affine(images, one, zero, -shift, zero, one, zero)
  return _affine(images, one, zero, zero, zero, one, -shift)


def translate_x(key: jax.Array, images: jax.Array) -> jax.Array:
  """Horizontal shift by ``U(-0.5, 0.5)`` of the width (zero fill)."""
  return _translate(key, images, "x")


def translate_y(key: jax.Array, images: jax.Array) -> jax.Array:
  """Vertical shift by ``U(-0.5, 0.5)`` of the height (zero fill)."""
  return _translate(key, images, "y")


_OPS = {name: globals()[name] for name in OPERATIONS}


def trivial_augment(key: jax.Array, images: jax.Array) -> jax.Array:
  """TrivialAugment (Mueller & Hutter, ICCV 2021, Sec. 3): ONE operation per
  call, drawn uniformly from `OPERATIONS` and shared by the batch (as kornia
  draws it); its magnitude is drawn per image from `RANGES`.

  Args:
    key: randomness of the operation and the magnitudes.
    images: float NHWC batch in [0, 1].

  Returns:
    The augmented batch in [0, 1].
  """
  _check_images(images)
  op_key, magnitude_key = jax.random.split(key)
  index = jax.random.randint(op_key, (), 0, len(OPERATIONS))
  branches = [functools.partial(_OPS[name], magnitude_key)
              for name in OPERATIONS]
  return jax.lax.switch(index, branches, images).astype(images.dtype)


# ------------------------------------------------------------- the policy
def augment(key: jax.Array, images: jax.Array, *, p_brightness: float = 1.0,
            p_contrast: float = 1.0, p_shuffle: float = 0.5) -> jax.Array:
  """The UEraser policy A (Qin et al. 2023, Sec. 3) on a float batch.

  In order, each with its probability per image: plasma brightness,
  plasma contrast, channel shuffle (no-op on grayscale), then one
  `trivial_augment` operation for the whole batch. Jit-able.

  Args:
    key: randomness of every step.
    images: float NHWC batch in [0, 1].
    p_brightness: probability of the plasma brightness (1.0 in APBench and
      the authors' EM notebook; 0.5 in their ``ueraser.py``).
    p_contrast: probability of the plasma contrast (likewise).
    p_shuffle: probability of the channel shuffle.

  Returns:
    The augmented batch, same shape, in [0, 1].
  """
  _check_images(images)
  for name, p in (("p_brightness", p_brightness), ("p_contrast", p_contrast),
                  ("p_shuffle", p_shuffle)):
    if not 0 <= p <= 1:
      raise ValueError(f"{name} must be in [0, 1], got {p}")
  images = jnp.clip(images.astype(jnp.float32), 0, 1)
  keys = jax.random.split(key, 7)
  n = images.shape[0]

  def maybe(op_key, coin_key, p, op):
    applied = jax.random.bernoulli(coin_key, p, (n,))
    return jnp.where(_per_image(applied), op(op_key, images), images)

  images = maybe(keys[0], keys[1], p_brightness, plasma_brightness)
  images = maybe(keys[2], keys[3], p_contrast, plasma_contrast)
  images = maybe(keys[4], keys[5], p_shuffle, channel_shuffle)
  return jnp.clip(trivial_augment(keys[6], images), 0, 1)


# ----------------------------------------------------------- the schedules
class Schedule(NamedTuple):
  """How many augmented repeats K each epoch trains on (the max-over-K
  loss of `jaxue.train.train_step`).

  Attributes:
    repeats: K during the first ``fraction`` of the epochs.
    fraction: share of the epochs (rounded up) with K repeats; the rest use
      K = 1.
  """

  repeats: int = REPEATS
  fraction: float = 1.0

  def __call__(self, epoch: int, epochs: int) -> int:
    """K for epoch ``epoch`` (from 0) of ``epochs``."""
    return self.repeats if epoch < math.ceil(self.fraction * epochs) else 1


SCHEDULES = {
    # UEraser-Lite: one augmented copy, the plain augmented loss.
    "lite": Schedule(1, 1.0),
    # The authors' LSP script: K = 5 for epochs 0-49 of 200, then K = 1.
    "standard": Schedule(REPEATS, STANDARD_FRACTION),
    # UEraser-Max (APBench): K = 5 every epoch.
    "max": Schedule(REPEATS, 1.0),
}


def schedule(name: str) -> Schedule:
  """The schedule ``"lite"``, ``"standard"`` or ``"max"``."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown UEraser schedule {name!r}; choose one of "
                     f"{', '.join(SCHEDULES)}")
  return SCHEDULES[name]

