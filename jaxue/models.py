"""Classifiers as pure functions: the PUE small CNN and the CIFAR ResNet-18.

Each model is a flax (linen) module wrapped into a functional `Model` with

* ``init(key, input_shape) -> variables`` where ``variables`` is
  ``{"params": ..., "batch_stats": ...}``, and
* ``apply(variables, images, train) -> (logits, batch_stats)``: ``images`` are
  float32 NHWC in [0, 1]; in train mode batch norm uses batch statistics and
  the updated running statistics are returned, in eval mode the running
  statistics are used and returned unchanged.

Keeping parameters, statistics and optimizer state as explicit pytrees is what
lets the certifier `jax.vmap`/`lax.map` over perturbed parameters and the
noise crafters differentiate with respect to inputs with frozen weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Variables = dict[str, Any]


class BatchNorm(nn.BatchNorm):
  """`flax.linen.BatchNorm` whose eval mode is one multiply-add per element.

  Eval mode computes ``x * a + c`` with the per-channel ``a = scale *
  rsqrt(var + eps)`` and ``c = bias - mean * a``, instead of flax's
  ``(x - mean) * a + bias``: the same map up to float rounding, one
  operation fewer per element, and on XLA:CPU a certification draw of the
  small CNN ran 1.12-1.25x faster (8 paired runs). Train mode, the
  variables and their names are flax's.
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    running = nn.merge_param("use_running_average", self.use_running_average,
                             use_running_average)
    if (not running or self.is_initializing()
        or self.axis not in (-1, x.ndim - 1)):
      return super().__call__(x, use_running_average=use_running_average)
    mean = self.get_variable("batch_stats", "mean")
    var = self.get_variable("batch_stats", "var")
    scale = (self.get_variable("params", "scale") if self.use_scale
             else jnp.ones_like(var))
    bias = (self.get_variable("params", "bias") if self.use_bias
            else jnp.zeros_like(mean))
    a = scale * jax.lax.rsqrt(var + self.epsilon)
    # Per-channel vectors against the last (feature) axis, explicitly.
    shape = (1,) * (x.ndim - 1) + (-1,)
    return x * a.reshape(shape) + (bias - mean * a).reshape(shape)


# PyTorch's BatchNorm2d defaults (momentum 0.1 of the new value, eps 1e-5),
# which the reference implementations use.
_BN = functools.partial(BatchNorm, momentum=0.9, epsilon=1e-5)


class Model(NamedTuple):
  """A classifier in functional form.

  Attributes:
    init: ``init(key, input_shape) -> variables`` with ``input_shape`` one
      image's (H, W, C) or a batch's (B, H, W, C).
    apply: ``apply(variables, images, train) -> (logits, batch_stats)``.
    num_classes: number of output logits.
    name: a short human-readable description, e.g. ``"small_cnn(16,32,64)"``.
  """

  init: Callable[[jax.Array, Sequence[int]], Variables]
  apply: Callable[[Variables, jax.Array, bool], tuple[jax.Array, Any]]
  num_classes: int
  name: str


CONV_IMPLS = ("auto", "hybrid", "im2col", "lax")

# Inputs with at most this many channels (a grayscale or RGB first layer)
# take matrix-product forms in the hybrid impl: on XLA:CPU the convolution
# of a 1-channel 28x28 batch ran at under 10 GFLOP/s, 1.3-1.7x slower than
# its im2col matrix product (and 3x for the input gradient), while from 8
# channels up XLA's convolution is as fast. A forward pass at stride 1 takes
# the 2x2-block form (`_conv_blocked`), faster again than im2col.
_FEW_CHANNELS = 4


def _conv_lax(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), ((padding, padding),) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches(x, kernel_shape, strides, padding):
  """The kh*kw shifted (strided) windows of the padded input, stacked along
  the channel axis: (N, out_h, out_w, kh*kw*cin)."""
  kh, kw, cin, _ = kernel_shape
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  n, h, w, _ = x.shape
  out_h = (h - kh) // strides + 1
  out_w = (w - kw) // strides + 1
  windows = [
      jax.lax.slice(x, (0, i, j, 0),
                    (n, i + strides * (out_h - 1) + 1,
                     j + strides * (out_w - 1) + 1, cin),
                    (1, strides, strides, 1))
      for i in range(kh) for j in range(kw)]
  return windows[0] if len(windows) == 1 else jnp.concatenate(windows, -1)


def _matmul_patches(patches, kernel):
  kh, kw, cin, cout = kernel.shape
  out = patches.reshape(-1, kh * kw * cin) @ kernel.reshape(-1, cout)
  return out.reshape(patches.shape[:3] + (cout,))


def _conv_im2col(x, kernel, strides, padding):
  return _matmul_patches(_patches(x, kernel.shape, strides, padding), kernel)


def _conv_blocked(x, kernel, padding):
  """A stride-1 convolution computed for 2x2 blocks of outputs at a time.

  The padded input is rearranged space-to-depth (every 2x2 pixel block
  becomes one position with 4x the channels); each 2x2 output block then
  depends on a (k+1)x(k+1) input window, i.e. on ceil((k+1)/2)^2 adjacent
  positions of that rearranged input, whose stacked channels (the patches)
  multiply one matrix holding the kernel at the four offsets of the block.
  For a 3x3 kernel that is 16*cin patch values per four outputs instead of
  im2col's 36*cin, and a product with 4*cout columns instead of cout:
  on XLA:CPU a 1-channel 28x28 first layer of the small CNN ran 2-3x faster
  than im2col (a certification draw 8-20% faster overall, paired runs).
  Training keeps im2col, whose patches give the weight gradient: the
  blocked form with its weight gradient by `jax.vjp` made an SGD step no
  faster (15.6 against 14.7 ms, batch 128).
  """
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  out_h, out_w = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
  blocks_h, blocks_w = -(-out_h // 2), -(-out_w // 2)
  # Rearranged positions that one output block's input window spans.
  span_h, span_w = -(-(kh + 1) // 2), -(-(kw + 1) // 2)
  rows, cols = 2 * (blocks_h + span_h - 1), 2 * (blocks_w + span_w - 1)
  x = jnp.pad(x, ((0, 0), (padding, rows - h - padding),
                  (padding, cols - w - padding), (0, 0)))
  x = x.reshape(n, rows // 2, 2, cols // 2, 2, cin).transpose(
      0, 1, 3, 2, 4, 5).reshape(n, rows // 2, cols // 2, 4 * cin)
  windows = [x[:, i:i + blocks_h, j:j + blocks_w]
             for i in range(span_h) for j in range(span_w)]
  patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, -1)
  # The kernel placed at each output offset (a, b) of a block within the
  # block's (2 span_h) x (2 span_w) input window, in the patches' order.
  placed = jnp.stack([
      jnp.stack([jnp.pad(kernel, ((a, 2 * span_h - kh - a),
                                  (b, 2 * span_w - kw - b), (0, 0), (0, 0)))
                 for b in range(2)], -2)
      for a in range(2)], -3)
  matrix = placed.reshape(span_h, 2, span_w, 2, cin, 2, 2, cout).transpose(
      0, 2, 1, 3, 4, 5, 6, 7).reshape(span_h * span_w * 4 * cin, 4 * cout)
  out = patches.reshape(-1, matrix.shape[0]) @ matrix
  out = out.reshape(n, blocks_h, blocks_w, 2, 2, cout).transpose(
      0, 1, 3, 2, 4, 5).reshape(n, 2 * blocks_h, 2 * blocks_w, cout)
  return out[:, :out_h, :out_w]


def _transposed_conv_lax(grad, kernel, padding):
  """XLA's *forward* convolution of ``grad`` with the flipped, transposed
  kernel: d(stride-1 conv)/dx applied to ``grad``."""
  kh, kw, _, _ = kernel.shape
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return jax.lax.conv_general_dilated(
      grad, flipped, (1, 1),
      ((kh - 1 - padding,) * 2, (kw - 1 - padding,) * 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _transposed_conv_im2col(grad, kernel, strides, padding, input_shape):
  """d(conv)/dx applied to ``grad`` as im2col's transpose (matrix products,
  pads and adds), for an input of ``input_shape``."""
  _, vjp = jax.vjp(lambda x: _conv_im2col(x, kernel, strides, padding),
                   jnp.zeros(input_shape, grad.dtype))
  return vjp(grad)[0]


def _stride1_input_shape(grad_shape, kernel_shape, padding):
  n, h, w, _ = grad_shape
  kh, kw, cin, _ = kernel_shape
  return (n, h + kh - 1 - 2 * padding, w + kw - 1 - 2 * padding, cin)


@functools.lru_cache(maxsize=None)
def _input_grad_stride1(padding: int):
  """``f(grad, kernel)``: `_transposed_conv_lax`, with a vmap rule."""

  @jax.custom_batching.custom_vmap
  def input_grad(grad, kernel):
    return _transposed_conv_lax(grad, kernel, padding)

  @input_grad.def_vmap
  def input_grad_vmap(axis_size, in_batched, grad, kernel):
    # XLA:CPU runs a convolution whose kernel differs per vmapped element (a
    # per-draw weight perturbation: PUE) as a slow grouped convolution, so
    # batched kernels take the matrix-product form. Batched gradients with a
    # shared kernel fold into the convolution's batch dimension.
    grad_batched, kernel_batched = in_batched
    if axis_size == 1:  # E.g. lax.map(batch_size=1): no real batch.
      out = input_grad(grad[0] if grad_batched else grad,
                       kernel[0] if kernel_batched else kernel)
      return out[None], True
    if kernel_batched:
      def one(g, k):
        return _transposed_conv_im2col(
            g, k, 1, padding, _stride1_input_shape(g.shape, k.shape, padding))

      out = jax.vmap(one, in_axes=(0 if grad_batched else None, 0))(grad,
                                                                     kernel)
    else:
      b, n = grad.shape[:2]
      out = input_grad(grad.reshape((b * n,) + grad.shape[2:]), kernel)
      out = out.reshape((b, n) + out.shape[1:])
    return out, True

  return input_grad


def _conv_input_grad(grad, x, kernel, strides, padding):
  """d(conv)/dx applied to ``grad``.

  At stride 1 this is XLA's *forward* convolution of the gradient with the
  flipped, transposed kernel (fast on XLA:CPU, also inside loops; under a
  vmap over kernels, im2col's transpose); strided convolutions and inputs
  of at most `_FEW_CHANNELS` channels transpose the im2col form.
  """
  kh, kw, cin, _ = kernel.shape
  if strides == 1 and padding <= min(kh, kw) - 1 and cin > _FEW_CHANNELS:
    return _input_grad_stride1(padding)(grad, kernel)
  return _transposed_conv_im2col(grad, kernel, strides, padding, x.shape)


def _conv_forward(x, kernel, strides, padding):
  if x.shape[-1] > _FEW_CHANNELS:
    return _conv_lax(x, kernel, strides, padding)
  if strides == 1:
    return _conv_blocked(x, kernel, padding)
  return _conv_im2col(x, kernel, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_hybrid(x, kernel, strides, padding):
  return _conv_forward(x, kernel, strides, padding)


def _conv_hybrid_fwd(x, kernel, strides, padding):
  # With symbolic zeros, `perturbed` tells which inputs are differentiated.
  # Weights differentiated (training): the forward pass is the im2col matrix
  # product, and the weight gradient reuses its patches. Inputs only (PGD on
  # images): XLA's forward convolution, unless the input has few channels.
  x_perturbed, kernel_perturbed = x.perturbed, kernel.perturbed
  x, kernel = x.value, kernel.value
  if kernel_perturbed:
    patches = _patches(x, kernel.shape, strides, padding)
    out = _matmul_patches(patches, kernel)
  else:
    patches, out = None, _conv_forward(x, kernel, strides, padding)
  return out, (x if x_perturbed else None, kernel, patches)


def _conv_hybrid_bwd(strides, padding, residuals, grad):
  x, kernel, patches = residuals
  if isinstance(grad, jax.custom_derivatives.SymbolicZero):
    return None, None
  grad_kernel = None
  if patches is not None:
    kh, kw, cin, cout = kernel.shape
    grad_kernel = (patches.reshape(-1, kh * kw * cin).T
                   @ grad.reshape(-1, cout)).reshape(kernel.shape)
  grad_x = (None if x is None else
            _conv_input_grad(grad, x, kernel, strides, padding))
  return grad_x, grad_kernel


_conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd, symbolic_zeros=True)


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: int = 1,
           padding: int = 0, impl: str = "auto") -> jax.Array:
  """NHWC x HWIO convolution with a choice of how it is computed.

  * ``"lax"``: XLA's convolution, forward and gradients.
  * ``"im2col"``: the kh*kw shifted (strided) windows of the padded input are
    stacked along the channel axis and multiplied by the reshaped kernel, so
    the forward pass and both gradients are plain matrix products.
  * ``"hybrid"`` (a `jax.custom_vjp`): XLA's convolution when nothing is
    differentiated or only the input is; when the weights are differentiated
    (training), an im2col forward pass whose patches give the weight gradient
    as one matrix product. The input gradient is XLA's forward convolution of
    the output gradient with the flipped kernel (stride 1) or im2col's
    transpose (strided). Inputs of at most 4 channels (grayscale or RGB
    images entering the first layer) always take matrix-product forms:
    im2col, or at stride 1 and weights not differentiated a product over
    2x2 blocks of outputs (space-to-depth patches; `_conv_blocked`).
  * ``"auto"``: ``"hybrid"`` on the CPU, ``"lax"`` (cuDNN) elsewhere.

  Why: on XLA:CPU the convolution's gradients run 10-60x slower inside
  `lax.scan`/`fori_loop` bodies -- where jaxue runs all training -- than
  outside them, while matrix products do not slow down; XLA's forward
  convolution stays the fastest forward pass except on few input channels,
  where it ran at under 10 GFLOP/s (a 1-channel 28x28 batch) and the
  im2col product is 1.3-1.7x faster (the 2x2-block product faster again).
  All impls compute the same function and gradients to float32 rounding
  (tested).
  """
  if impl == "auto":
    impl = "hybrid" if jax.default_backend() == "cpu" else "lax"
  if impl == "lax":
    return _conv_lax(x, kernel, strides, padding)
  if impl == "im2col":
    return _conv_im2col(x, kernel, strides, padding)
  if impl == "hybrid":
    return _conv_hybrid(x, kernel, strides, padding)
  raise ValueError(f"unknown conv impl {impl!r}; choose one of {CONV_IMPLS}")


class Conv(nn.Module):
  """A square convolution with `nn.Conv`'s parameter layout.

  ``kernel`` (HWIO, LeCun-normal) and, with ``use_bias``, a per-channel
  ``bias`` (zeros, as `nn.Conv`) added after `conv2d` as a broadcast add,
  which XLA fuses into the next elementwise operation, so every conv impl
  and its custom gradients stay as they are. Bias-free by default (the
  ResNet-18); the PUE small CNN has biases (`SmallCNN`).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 1
  use_bias: bool = False
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(),
        (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
    y = conv2d(x, kernel, strides=self.strides, padding=self.padding,
               impl=self.impl)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros_init(),
                        (self.features,))
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y


def _reshape_max_pool(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2, :]
  x = x.reshape(n, h // 2, 2, w // 2, 2, c)
  return x.max(axis=(2, 4))


def _window_max_pool(x: jax.Array) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                               (1, 2, 2, 1), "VALID")


@jax.custom_jvp
def _odd_max_pool(x: jax.Array) -> jax.Array:
  return _window_max_pool(x)


@_odd_max_pool.defjvp
def _odd_max_pool_jvp(primals, tangents):
  # Differentiated, it is the reshape-max, forward pass and gradient alike.
  return jax.jvp(_reshape_max_pool, primals, tangents)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 (floor mode).

  Numerically identical to ``nn.max_pool(x, (2, 2), (2, 2))``; the gradient
  is always that of a reshape and a max (a cheap select, where ties share
  the gradient) instead of XLA's generic select-and-scatter, which made
  SGD steps faster on XLA:CPU (docs/design.md, "CPU kernels"). The forward
  pass is the reshape when the height and width are even or when the
  pooling is differentiated; a forward-only pass of an odd map (7x7 maps of
  28x28 inputs: evaluation, certification) is XLA's window reduction,
  because on XLA:CPU the reshape of the cropped map cost 1-2.4x as much as
  the convolution before it, and the window reduction next to nothing.
  """
  if x.shape[1] % 2 or x.shape[2] % 2:
    return _odd_max_pool(x)
  return _reshape_max_pool(x)


class SmallCNN(nn.Module):
  """The PUE authors' small CNN (Wang et al., NDSS 2025, Sec. 6.1).

  Three blocks of conv3x3 (with bias) - BN - ReLU - 2x2 max-pool, global
  average pooling and a linear classifier, as the authors' ``ToyModel``
  (PyTorch ``Conv2d`` keeps its default bias). ``widths=(64, 128, 256)`` is
  the published model; CPU experiments use narrower ones, e.g. ``(16, 32,
  64)``: 24,170 parameters for 28x28x1 inputs and 10 classes.

  ``use_bias=False`` (`make_model("small_cnn_nobias")`) drops the
  convolution biases (24,058 parameters at 16/32/64). In train mode batch
  norm cancels a bias, but in eval mode it does not, so noise on the biases
  shifts every activation of a channel: at the same sigma, parameter
  smoothing (`jaxue.certify`) perturbs the model with biases harder.

  ``global_pool=False`` (`make_model("small_cnn_flat")`, not in the paper)
  flattens the last feature map into the classifier instead of averaging
  it, so the classifier sees where a feature is, not only that it is there:
  a victim architecture for position-coded shortcuts such as OPS on
  grayscale data, whose classes differ only in where their one pixel is.
  """

  num_classes: int = 10
  widths: Sequence[int] = (64, 128, 256)
  conv_impl: str = "auto"
  global_pool: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for width in self.widths:
      x = Conv(width, use_bias=self.use_bias, impl=self.conv_impl)(x)
      x = _BN(use_running_average=not train)(x)
      x = nn.relu(x)
      x = max_pool_2x2(x)
    x = x.mean(axis=(1, 2)) if self.global_pool else x.reshape(len(x), -1)
    return nn.Dense(self.num_classes)(x)


class BasicBlock(nn.Module):
  """ResNet basic block (He et al., 2016) with a 1x1 projection shortcut."""

  features: int
  strides: int = 1
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = functools.partial(_BN, use_running_average=not train)
    conv = functools.partial(Conv, impl=self.conv_impl)
    y = conv(self.features, strides=self.strides)(x)
    y = nn.relu(bn()(y))
    y = conv(self.features)(y)
    y = bn()(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.strides, padding=0)(x)
      x = bn()(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, blocks [2, 2, 2, 2]."""

  num_classes: int = 10
  widths: Sequence[int] = (64, 128, 256, 512)
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Conv(self.widths[0], impl=self.conv_impl)(x)
    x = nn.relu(_BN(use_running_average=not train)(x))
    for stage, width in enumerate(self.widths):
      for block in range(2):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, strides, self.conv_impl)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jitted_init(module: nn.Module, key: jax.Array, shape: tuple[int, ...]
                 ) -> Variables:
  # One compiled program: eager init compiles every random draw separately,
  # which costs seconds on XLA:CPU.
  return module.init(key, jnp.zeros(shape, jnp.float32), train=False)


def functional(module: nn.Module, name: str) -> Model:
  """Wraps a linen module taking ``(x, train)`` into a `Model`."""

  def init(key: jax.Array, input_shape: Sequence[int]) -> Variables:
    shape = tuple(input_shape)
    if len(shape) == 3:
      shape = (1, *shape)
    if len(shape) != 4:
      raise ValueError(
          f"input_shape must be (H, W, C) or (B, H, W, C), got {input_shape}")
    variables = _jitted_init(module, key, shape)
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {})}

  def apply(variables: Variables, images: jax.Array,
            train: bool = False) -> tuple[jax.Array, Any]:
    if train:
      logits, updates = module.apply(variables, images, train=True,
                                     mutable=["batch_stats"])
      return logits, updates["batch_stats"]
    return module.apply(variables, images, train=False), variables[
        "batch_stats"]

  return Model(init=init, apply=apply,
               num_classes=module.num_classes, name=name)


MODELS = ("small_cnn", "small_cnn_flat", "small_cnn_nobias",
          "small_cnn_flat_nobias", "resnet18")

# The small CNN's names: (global average pooling, convolution biases).
_SMALL_CNNS = {"small_cnn": (True, True),
               "small_cnn_flat": (False, True),
               "small_cnn_nobias": (True, False),
               "small_cnn_flat_nobias": (False, False)}


def make_model(name: str = "small_cnn", *, num_classes: int = 10,
               widths: Sequence[int] | None = None,
               conv_impl: str = "auto") -> Model:
  """Builds a functional model by name.

  Args:
    name: ``"small_cnn"`` (the PUE authors' model, convolution biases
      included), ``"small_cnn_flat"`` (the small CNN with its last feature
      map flattened instead of averaged), ``"small_cnn_nobias"`` and
      ``"small_cnn_flat_nobias"`` (the same without convolution biases,
      jaxue 0.1.0's small CNNs; see `SmallCNN`) or ``"resnet18"``.
    num_classes: number of classes.
    widths: channel widths per block/stage; ``None`` for the published ones
      (64/128/256 for the small CNN, 64-512 for ResNet-18).
    conv_impl: how convolutions are computed (see `conv2d`).

  Returns:
    A `Model`.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(
        f"unknown conv impl {conv_impl!r}; choose one of {CONV_IMPLS}")
  widths = None if widths is None else tuple(widths)
  # One Model per architecture: its functions are jit cache keys, so a
  # second call (e.g. loading a checkpoint again) reuses compiled code.
  return _make_model(name, num_classes, widths, conv_impl)


@functools.lru_cache(maxsize=64)
def _make_model(name: str, num_classes: int,
                widths: tuple[int, ...] | None, conv_impl: str) -> Model:
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  if widths is not None and not all(
      int(w) == w and w >= 1 for w in widths):
    raise ValueError(f"widths must be integers >= 1, got {tuple(widths)}")
  if name in _SMALL_CNNS:
    global_pool, use_bias = _SMALL_CNNS[name]
    widths = tuple(widths or (64, 128, 256))
    module = SmallCNN(num_classes=num_classes, widths=widths,
                      conv_impl=conv_impl, global_pool=global_pool,
                      use_bias=use_bias)
  elif name == "resnet18":
    widths = tuple(widths or (64, 128, 256, 512))
    if len(widths) != 4:
      raise ValueError(f"resnet18 needs 4 stage widths, got {widths}")
    module = ResNet18(num_classes=num_classes, widths=widths,
                      conv_impl=conv_impl)
  else:
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
  return functional(module, f"{name}({','.join(map(str, widths))})")


def count_params(variables: Variables) -> int:
  """Number of trainable parameters."""
  return sum(x.size for x in jax.tree.leaves(variables["params"]))
