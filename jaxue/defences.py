"""Training-time defences against unlearnable examples.

The defences that APBench (Qin et al., 2023) and the image-shortcut-squeezing
study (Liu et al., ICML 2023) run against every protection method, in three
shapes that plug into `jaxue.train`:

* per-image augmentations ``augment(key, images) -> images`` on float [0, 1]
  NHWC batches: `cutout`, `grayscale` (and `jaxue.data.augment`, the
  standard crop/flip); pass as ``train.fit(..., augment=...)``;
* batch mixers ``mix(key, images, labels) -> (images, soft_targets)``:
  `mixup`, `cutmix`; pass as ``train.fit(..., mix=...)``, which then trains
  on the soft targets;
* host-side re-encodings of the released uint8 data before training: `jpeg`;
* UEraser (Qin et al., 2023; `jaxue.ueraser`): its augmentation policy with
  the max loss over K augmented copies (``train.fit(..., augment=...,
  repeats=schedule)``), as Lite, standard and Max;
* orthogonal projection (Sandoval-Segura et al., NeurIPS 2023;
  `jaxue.projection`): the release's linearly learnable class directions
  removed before training, which then runs on float images.

Madry adversarial training, the defence REM is built to survive, lives in
`jaxue.train` (`AdversarialConfig`). `make_defence` builds any of them by
name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxue import data as data_lib
from jaxue import projection as projection_lib
from jaxue import ueraser as ueraser_lib

Augment = Callable[[jax.Array, jax.Array], jax.Array]
Mix = Callable[[jax.Array, jax.Array, jax.Array],
               tuple[jax.Array, jax.Array]]

# Defences applied while training a victim. "adversarial" (Madry PGD
# training) is configured through `jaxue.train.AdversarialConfig` instead.
DEFENCES = ("none", "augmentation", "cutout", "mixup", "cutmix", "grayscale",
            "jpeg", "ueraser-lite", "ueraser", "ueraser-max",
            "orthogonal-projection")
# UEraser's defences and their schedules of K (`jaxue.ueraser.SCHEDULES`).
UERASER = {"ueraser-lite": "lite", "ueraser": "standard",
           "ueraser-max": "max"}

# ITU-R BT.601 luma weights, as PIL's ``convert("L")`` and torchvision's
# ``Grayscale`` use.
_LUMA = (0.299, 0.587, 0.114)


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(f"expected NHWC images, got shape {images.shape}")


def cutout(key: jax.Array, images: jax.Array, *, size: int) -> jax.Array:
  """Cutout (DeVries & Taylor, 2017, Sec. 3): zeroes one square per image.

  The square of side ``size`` is centred on a uniformly drawn pixel and
  clipped at the image border (so it may be smaller near the edges), as in
  the reference implementation.

  Args:
    key: randomness of the centres.
    images: float NHWC batch.
    size: side of the square in pixels (>= 1; DeVries & Taylor use 16 on
      32x32 CIFAR-10, half the side).

  Returns:
    The batch with each image's square set to 0.
  """
  _check_images(images)
  if int(size) != size or size < 1:
    raise ValueError(f"cutout size must be an integer >= 1, got {size}")
  n, h, w, _ = images.shape
  if size > max(h, w):
    raise ValueError(f"cutout size {size} exceeds the {h}x{w} images")
  row_key, col_key = jax.random.split(key)
  top = jax.random.randint(row_key, (n,), 0, h) - size // 2
  left = jax.random.randint(col_key, (n,), 0, w) - size // 2
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
  in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
  inside = in_rows[:, :, None] & in_cols[:, None, :]
  return jnp.where(inside[..., None], 0.0, images).astype(images.dtype)


def _one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
  if labels.ndim == 1:
    return jax.nn.one_hot(labels, num_classes)
  return labels.astype(jnp.float32)


def mixup(key: jax.Array, images: jax.Array, labels: jax.Array, *,
          num_classes: int, alpha: float = 1.0
          ) -> tuple[jax.Array, jax.Array]:
  """Mixup (Zhang et al., ICLR 2018, Sec. 2): convex pairs of examples.

  One ``lam ~ Beta(alpha, alpha)`` per batch; every example is mixed with a
  random partner of the same batch: ``lam x_i + (1 - lam) x_j`` with the
  targets mixed alike.

  Args:
    key: randomness of lam and of the pairing.
    images: float NHWC batch.
    labels: int labels (N,) or soft targets (N, num_classes).
    num_classes: number of classes.
    alpha: the Beta distribution's parameter (> 0; 1.0 is uniform lam).

  Returns:
    ``(mixed images, soft targets)``; each target row sums to 1.
  """
  _check_images(images)
  if not alpha > 0:
    raise ValueError(f"mixup alpha must be > 0, got {alpha}")
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha)
  partner = jax.random.permutation(perm_key, images.shape[0])
  targets = _one_hot(labels, num_classes)
  mixed = lam * images + (1 - lam) * images[partner]
  return (mixed.astype(images.dtype),
          lam * targets + (1 - lam) * targets[partner])


def cutmix(key: jax.Array, images: jax.Array, labels: jax.Array, *,
           num_classes: int, alpha: float = 1.0
           ) -> tuple[jax.Array, jax.Array]:
  """CutMix (Yun et al., ICCV 2019, Sec. 3.1): pasted boxes, mixed targets.

  One ``lam ~ Beta(alpha, alpha)`` per batch gives a box of area
  ``(1 - lam) H W`` at a uniform centre (clipped at the border); each image
  receives its partner's box, and the targets are mixed by the box's actual
  area, as in the reference implementation.

  Args:
    key: randomness of lam, the box and the pairing.
    images: float NHWC batch.
    labels: int labels (N,) or soft targets (N, num_classes).
    num_classes: number of classes.
    alpha: the Beta distribution's parameter (> 0).

  Returns:
    ``(images with pasted boxes, soft targets)``; each target row sums to 1.
  """
  _check_images(images)
  if not alpha > 0:
    raise ValueError(f"cutmix alpha must be > 0, got {alpha}")
  lam_key, box_key, perm_key = jax.random.split(key, 3)
  _, h, w, _ = images.shape
  lam = jax.random.beta(lam_key, alpha, alpha)
  cut = jnp.sqrt(1.0 - lam)
  cut_h = (h * cut).astype(jnp.int32)
  cut_w = (w * cut).astype(jnp.int32)
  row_key, col_key = jax.random.split(box_key)
  centre_row = jax.random.randint(row_key, (), 0, h)
  centre_col = jax.random.randint(col_key, (), 0, w)
  top = jnp.clip(centre_row - cut_h // 2, 0, h)
  bottom = jnp.clip(centre_row + cut_h // 2, 0, h)
  left = jnp.clip(centre_col - cut_w // 2, 0, w)
  right = jnp.clip(centre_col + cut_w // 2, 0, w)
  rows = jnp.arange(h)
  cols = jnp.arange(w)
  box = (((rows >= top) & (rows < bottom))[:, None]
         & ((cols >= left) & (cols < right))[None, :])
  partner = jax.random.permutation(perm_key, images.shape[0])
  pasted = jnp.where(box[None, :, :, None], images[partner], images)
  kept = 1.0 - box.mean()
  targets = _one_hot(labels, num_classes)
  return pasted, kept * targets + (1.0 - kept) * targets[partner]


def grayscale(key: jax.Array | None, images: jax.Array) -> jax.Array:
  """Grayscale: the BT.601 luma, repeated over the colour channels.

  A no-op on 1-channel data (Fashion-MNIST is already grayscale), where this
  defence cannot change anything. The key is unused; it keeps the
  ``augment(key, images)`` signature.
  """
  del key
  _check_images(images)
  if images.shape[-1] == 1:
    return images
  if images.shape[-1] != 3:
    raise ValueError(
        f"grayscale expects 1 or 3 channels, got {images.shape[-1]}")
  luma = images @ jnp.asarray(_LUMA, images.dtype)
  return jnp.repeat(luma[..., None], 3, axis=-1)


def jpeg(images: np.ndarray, *, quality: int = 10) -> np.ndarray:
  """JPEG re-encoding of uint8 images on the host (Pillow).

  The image-shortcut-squeezing defence (Liu et al., ICML 2023, Sec. 4):
  compressing the released data at quality 10 destroys much of the
  high-frequency structure that error-minimizing noise relies on.

  Args:
    images: uint8 NHWC images with 1 or 3 channels.
    quality: JPEG quality in [1, 95] (10 in the study).

  Returns:
    The decoded uint8 images, same shape.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"jpeg expects uint8 images, got {images.dtype}")
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
        f"jpeg expects NHWC images with 1 or 3 channels, got {images.shape}")
  if int(quality) != quality or not 1 <= quality <= 95:
    raise ValueError(f"jpeg quality must be an integer in [1, 95], got "
                     f"{quality}")
  out = np.empty_like(images)
  mode = "L" if images.shape[-1] == 1 else "RGB"
  for i, image in enumerate(images):
    buffer = io.BytesIO()
    pixels = image[..., 0] if mode == "L" else image
    Image.fromarray(pixels).save(buffer, format="JPEG",
                                            quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert(mode))
    out[i] = decoded[..., None] if mode == "L" else decoded
  return out


class Defence(NamedTuple):
  """A training-time defence in the three shapes `jaxue.train` accepts.

  Attributes:
    name: one of `DEFENCES`.
    augment: per-image ``augment(key, images)`` or None.
    mix: ``mix(key, images, labels) -> (images, soft targets)`` or None.
    preprocess: host-side ``preprocess(uint8 images) -> uint8 images`` run
      once on the training set, or None.
    repeats: `jaxue.train.fit`'s K (max loss over K augmented copies): an
      int or a schedule ``repeats(epoch, epochs) -> K``.
    project: ``project(key, images, labels) -> jaxue.projection.Projection``
      run once on the training set, whose float ``.images`` the victim then
      trains on, or None.
  """

  name: str
  augment: Augment | None = None
  mix: Mix | None = None
  preprocess: Callable[[np.ndarray], np.ndarray] | None = None
  repeats: int | Callable[[int, int], int] = 1
  project: Callable[..., projection_lib.Projection] | None = None


class _Chain(NamedTuple):
  """Two augmentations in a row (hashable: a static jit argument)."""

  first: Augment
  second: Augment

  def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
    first_key, second_key = jax.random.split(key)
    return self.second(second_key, self.first(first_key, images))


def make_defence(name: str, image_shape: Sequence[int], num_classes: int, *,
                 cutout_size: int | None = None, mix_alpha: float = 1.0,
                 jpeg_quality: int = 10) -> Defence:
  """The defence ``name`` for images of ``image_shape`` (H, W, C).

  Each defence is applied alone (on top of plain training without
  augmentation), so a table column differs from "none" in one thing only;
  the exception is UEraser, whose policy follows the standard crop (and
  flip) as in the authors' and APBench's training scripts. Equal arguments
  give the same `Defence` object: its functions are static arguments of the
  jitted epoch, so every victim of a table reuses one compilation.

  Args:
    name: one of `DEFENCES`.
    image_shape: (H, W, C) of the training images.
    num_classes: number of classes (for the mixers' soft targets).
    cutout_size: cutout square side (default half the image side: 16 on
      CIFAR, 14 on Fashion-MNIST).
    mix_alpha: Beta parameter of mixup and cutmix (default 1.0).
    jpeg_quality: JPEG quality (default 10).

  Returns:
    The `Defence`.
  """
  if name not in DEFENCES:
    raise ValueError(f"unknown defence {name!r}; choose one of "
                     f"{', '.join(DEFENCES)} (adversarial training is "
                     "train.AdversarialConfig)")
  if len(image_shape) != 3:
    raise ValueError(f"expected an image shape (H, W, C), got {image_shape}")
  return _make_defence(name, tuple(int(d) for d in image_shape),
                       int(num_classes), cutout_size, float(mix_alpha),
                       jpeg_quality)


@functools.lru_cache(maxsize=None)
def _make_defence(name: str, image_shape: tuple[int, ...], num_classes: int,
                  cutout_size: int | None, mix_alpha: float,
                  jpeg_quality: int) -> Defence:
  if name == "augmentation":
    return Defence(name, augment=data_lib.default_augmentation(image_shape))
  if name == "cutout":
    size = cutout_size or max(1, min(image_shape[:2]) // 2)
    if size > max(image_shape[:2]):
      raise ValueError(f"cutout size {size} exceeds the "
                       f"{image_shape[0]}x{image_shape[1]} images")
    return Defence(name, augment=functools.partial(cutout, size=size))
  if name in ("mixup", "cutmix"):
    mixer = mixup if name == "mixup" else cutmix
    return Defence(name, mix=functools.partial(
        mixer, num_classes=num_classes, alpha=mix_alpha))
  if name == "grayscale":
    return Defence(name, augment=grayscale)
  if name == "jpeg":
    return Defence(name, preprocess=functools.partial(jpeg,
                                                      quality=jpeg_quality))
  if name in UERASER:
    policy = _Chain(data_lib.default_augmentation(image_shape),
                    ueraser_lib.augment)
    return Defence(name, augment=policy,
                   repeats=ueraser_lib.schedule(UERASER[name]))
  if name == "orthogonal-projection":
    return Defence(name, project=functools.partial(
        projection_lib.orthogonal_projection, num_classes=num_classes))
  return Defence(name)
