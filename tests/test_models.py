"""Tests of jaxue.models: shapes, functional form, conv implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import models


@pytest.mark.parametrize("name,shape,classes", [
    ("small_cnn", (28, 28, 1), 10),
    ("small_cnn", (32, 32, 3), 100),
    ("small_cnn_flat", (28, 28, 1), 10),
    ("small_cnn_nobias", (28, 28, 1), 10),
    ("small_cnn_flat_nobias", (28, 28, 1), 10),
    ("resnet18", (32, 32, 3), 10),
    ("resnet18", (28, 28, 1), 10),
])
def test_output_shapes_both_modes(name, shape, classes):
  model = models.make_model(name, num_classes=classes,
                            widths=(4, 8, 8) if name.startswith("small_cnn")
                            else (4, 4, 8, 8))
  variables = model.init(jax.random.key(0), shape)
  x = jnp.full((3, *shape), 0.5, jnp.float32)
  logits, stats = model.apply(variables, x, False)
  assert logits.shape == (3, classes)
  chex_equal = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), stats,
                            variables["batch_stats"])
  assert all(jax.tree.leaves(chex_equal)), "eval mode changed statistics"
  logits, new_stats = model.apply(variables, x + 0.1, True)
  assert logits.shape == (3, classes)
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(jnp.any(a != b)), new_stats, variables["batch_stats"]))
  assert any(changed), "train mode must update batch statistics"


def test_published_widths_and_param_count():
  model = models.make_model("small_cnn")
  variables = jax.eval_shape(lambda k: model.init(k, (28, 28, 1)),
                             jax.random.key(0))
  kernels = [leaf.shape for leaf in jax.tree.leaves(variables["params"])
             if len(leaf.shape) == 4]
  assert [k[-1] for k in kernels] == [64, 128, 256]
  resnet = jax.eval_shape(
      lambda k: models.make_model("resnet18").init(k, (32, 32, 3)),
      jax.random.key(0))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(resnet["params"]))
  assert 11.1e6 < n < 11.2e6  # The CIFAR ResNet-18 has 11.17M parameters.


def test_small_cnn_param_count_is_the_authors():
  """The PUE authors' ToyModel at widths 16/32/64 on 28x28x1 inputs and
  10 classes: 3x3 convolutions with biases (9*1*16+16, 9*16*32+32,
  9*32*64+64), batch-norm scale and bias (2*(16+32+64)), the classifier
  (64*10+10): 24,170 parameters; without the convolution biases 24,058."""
  counts = {}
  for name in ("small_cnn", "small_cnn_nobias"):
    model = models.make_model(name, widths=(16, 32, 64))
    variables = jax.eval_shape(lambda k, m=model: m.init(k, (28, 28, 1)),
                               jax.random.key(0))
    counts[name] = models.count_params(variables)
    biases = [p["bias"].shape for layer, p in variables["params"].items()
              if layer.startswith("Conv_") and "bias" in p]
    assert biases == ([(16,), (32,), (64,)] if name == "small_cnn" else [])
  assert counts == {"small_cnn": 24_170, "small_cnn_nobias": 24_058}
  assert models.make_model().name == "small_cnn(64,128,256)"


def test_small_cnn_bias_is_added_after_the_conv():
  """conv -> +bias -> BN -> ReLU -> pool: with its biases zeroed the model
  is the bias-free one, and a bias shifts the pre-BN activations of its
  channel, which eval-mode batch norm does not absorb."""
  biased = models.make_model("small_cnn", widths=(4, 8, 8))
  plain = models.make_model("small_cnn_nobias", widths=(4, 8, 8))
  variables = biased.init(jax.random.key(0), (12, 12, 1))
  stripped = {"params": {k: {n: a for n, a in p.items()
                             if not (k.startswith("Conv_") and n == "bias")}
                         for k, p in variables["params"].items()},
              "batch_stats": variables["batch_stats"]}
  assert jax.tree.map(jnp.shape, stripped) == jax.tree.map(
      jnp.shape, plain.init(jax.random.key(0), (12, 12, 1)))
  x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 1))
  for train in (False, True):
    np.testing.assert_allclose(biased.apply(variables, x, train)[0],
                               plain.apply(stripped, x, train)[0],
                               rtol=1e-6, atol=1e-6)
  shifted = jax.tree.map(lambda a: a, variables)
  shifted["params"]["Conv_0"]["bias"] = jnp.full((4,), 0.5)
  assert not np.allclose(biased.apply(shifted, x, False)[0],
                         biased.apply(variables, x, False)[0])
  # Train mode: batch norm subtracts the batch mean, bias included.
  np.testing.assert_allclose(biased.apply(shifted, x, True)[0],
                             biased.apply(variables, x, True)[0],
                             rtol=1e-4, atol=1e-4)


def test_flat_head_differs_from_small_cnn_only_in_its_classifier():
  """small_cnn_flat: the same blocks, the last map (3x3 for 28x28 inputs)
  flattened into the classifier instead of averaged."""
  shapes = {name: jax.eval_shape(
      lambda k, name=name: models.make_model(name, widths=(4, 8, 6)).init(
          k, (28, 28, 1)), jax.random.key(0))["params"]
            for name in ("small_cnn", "small_cnn_flat")}
  dense = {name: p.pop("Dense_0")["kernel"].shape
           for name, p in shapes.items()}
  assert dense == {"small_cnn": (6, 10), "small_cnn_flat": (3 * 3 * 6, 10)}
  assert jax.tree.map(lambda a: a.shape, shapes["small_cnn"]) == jax.tree.map(
      lambda a: a.shape, shapes["small_cnn_flat"])
  flat = models.make_model("small_cnn_flat", widths=(4, 8, 6))
  assert flat.name == "small_cnn_flat(4,8,6)"


@pytest.mark.parametrize("impl", ["im2col", "hybrid"])
@pytest.mark.parametrize("strides,padding,kernel", [(1, 1, 3), (2, 1, 3),
                                                   (2, 0, 1)])
# "hybrid" takes the im2col form for inputs of few (1) channels.
@pytest.mark.parametrize("channels", [1, 5])
def test_conv_impls_match_lax(impl, strides, padding, kernel, channels):
  kx, kk, kg = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (4, 9, 9, channels))
  w = jax.random.normal(kk, (kernel, kernel, channels, 7))

  def f(x, w, impl):
    return models.conv2d(x, w, strides=strides, padding=padding, impl=impl)

  ref = f(x, w, "lax")
  out = f(x, w, impl)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, ref.shape)
  # Both, the input alone (PGD) and the weights alone (training's first
  # layer): "hybrid" takes a different path for each.
  for argnums in ((0, 1), (0,), (1,)):
    ref_grads = jax.grad(lambda x, w: jnp.vdot(f(x, w, "lax"), g),
                         argnums=argnums)(x, w)
    grads = jax.jit(jax.grad(lambda x, w: jnp.vdot(f(x, w, impl), g),
                             argnums=argnums))(x, w)
    for a, b in zip(grads, ref_grads):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["lax", "im2col", "hybrid"])
@pytest.mark.parametrize("channels", [1, 5])
def test_conv_with_bias_matches_flax_conv(impl, channels):
  """`Conv(use_bias=True)` is `nn.Conv` (same variables and function) in
  every impl, with the gradients of the input, kernel and bias, also
  vmapped over per-draw parameters (certification, PUE)."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, channels))
  ours = models.Conv(6, use_bias=True, impl=impl)
  theirs = nn.Conv(6, (3, 3), padding=1)
  variables = ours.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, theirs.init(jax.random.key(1), x))
  variables = jax.tree.map(  # A non-zero bias.
      lambda a: a + jax.random.normal(jax.random.key(2), a.shape), variables)
  g = jax.random.normal(jax.random.key(3), (2, 7, 7, 6))

  def loss(module, variables, x):
    return jnp.vdot(module.apply(variables, x), g)

  np.testing.assert_allclose(ours.apply(variables, x),
                             theirs.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  for argnums in ((0, 1), (0,), (1,)):
    got = jax.jit(jax.grad(lambda v, x: loss(ours, v, x),
                           argnums=argnums))(variables, x)
    want = jax.grad(lambda v, x: loss(theirs, v, x),
                    argnums=argnums)(variables, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  draws = jax.tree.map(lambda a: jnp.stack([a, -a, 2 * a]), variables)
  got = jax.jit(jax.vmap(jax.grad(lambda v: loss(ours, v, x))))(draws)
  want = jax.vmap(jax.grad(lambda v: loss(theirs, v, x)))(draws)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,kernel,padding", [
    ((2, 28, 28, 1), 3, 1),   # The small CNN's first layer (even output).
    ((2, 7, 9, 3), 3, 1),     # Odd output height: the last block is cut.
    ((3, 8, 8, 2), 1, 0),
    ((2, 9, 6, 1), 5, 2),
    ((2, 10, 11, 4), 3, 0),
    ((1, 5, 5, 3), 4, 1),     # An even kernel.
])
def test_blocked_conv_matches_lax(shape, kernel, padding):
  """The 2x2-output-block form that the hybrid impl's forward pass takes
  for few input channels, at stride 1 (forward only: its gradients are
  im2col's, tested above)."""
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1),
                        (kernel, kernel, shape[-1], 6))
  want = models.conv2d(x, w, padding=padding, impl="lax")
  blocked = models._conv_blocked  # pylint: disable=protected-access
  got = jax.jit(blocked, static_argnums=2)(x, w, padding)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Per-draw kernels (certification chunks, PUE): a vmap over kernels.
  ws = jnp.stack([w, -w, 2 * w])
  got = jax.vmap(lambda w: models.conv2d(x, w, padding=padding))(ws)
  want = jax.vmap(lambda w: models.conv2d(x, w, padding=padding,
                                          impl="lax"))(ws)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_impls_inside_scan_and_vmap():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  ws = jax.random.normal(jax.random.key(1), (4, 3, 3, 3, 2))

  def loss(w, impl):
    return jnp.sum(models.conv2d(x, w, padding=1, impl=impl) ** 2)

  for impl in ("hybrid", "im2col"):
    got = jax.vmap(jax.grad(lambda w: loss(w, impl)))(ws)
    want = jax.vmap(jax.grad(lambda w: loss(w, "lax")))(ws)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axes", [(0, 0, 0), (0, None, 0), (None, 0, 0)])
def test_hybrid_input_gradient_under_vmap(axes):
  # Batched kernels (per-draw weights, PUE) and batched inputs take
  # different paths of the hybrid input gradient's vmap rule.
  x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 5))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5, 4))
  g = jax.random.normal(jax.random.key(2), (3, 2, 6, 6, 4))
  x = x if axes[0] == 0 else x[0]
  w = w if axes[1] == 0 else w[0]

  def input_grad(x, w, g, impl):
    _, vjp = jax.vjp(lambda x: models.conv2d(x, w, padding=1, impl=impl), x)
    return vjp(g)[0]

  got = jax.jit(jax.vmap(lambda *a: input_grad(*a, "hybrid"),
                         in_axes=axes))(x, w, g)
  want = jax.vmap(lambda *a: input_grad(*a, "lax"), in_axes=axes)(x, w, g)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batch_norm_is_flax_batch_norm_with_one_multiply_add():
  """Eval mode is x * a + c (flax's map up to rounding); train mode and
  the variables are flax's own."""
  import flax.linen as nn
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 5, 5, 8)), jnp.float32)
  ours = models.BatchNorm(momentum=0.9, epsilon=1e-5)
  theirs = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = theirs.init(jax.random.key(0), x, use_running_average=True)
  assert jax.tree.map(jnp.shape, ours.init(
      jax.random.key(0), x, use_running_average=True)) == jax.tree.map(
          jnp.shape, variables)
  variables = {  # Non-trivial statistics and affine parameters.
      "params": jax.tree.map(
          lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32),
          variables["params"]),
      "batch_stats": jax.tree.map(
          lambda s: jnp.asarray(rng.uniform(0.5, 2, s.shape), jnp.float32),
          variables["batch_stats"])}
  got = ours.apply(variables, x, use_running_average=True)
  want = theirs.apply(variables, x, use_running_average=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  got, got_stats = ours.apply(variables, x, use_running_average=False,
                              mutable=["batch_stats"])
  want, want_stats = theirs.apply(variables, x, use_running_average=False,
                                  mutable=["batch_stats"])
  np.testing.assert_array_equal(got, want)
  for a, b in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [6, 7])
def test_max_pool_matches_flax(size):
  import flax.linen as nn
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  np.testing.assert_array_equal(models.max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), (2, 2)))


@pytest.mark.parametrize("size", [6, 7])
def test_max_pool_gradient_is_the_reshape_max_gradient(size):
  # Odd maps pool forward with a window reduction, but every gradient is
  # that of the reshape-max (ties share it), also under vmap.
  x = jax.random.normal(jax.random.key(0), (3, 2, size, size, 4))
  x = x.at[:, :, :2, :2].set(0.5)  # A tie in each first window.
  g = jax.random.normal(jax.random.key(1), (3, 2, size // 2, size // 2, 4))

  def reshape_max(x):
    n, h, w, c = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(
        n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

  def grad(pool):
    return jax.vmap(lambda x, g: jax.vjp(pool, x)[1](g)[0])(x, g)

  want = grad(reshape_max)
  got = jax.jit(lambda: grad(models.max_pool_2x2))()
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(want[:, :, :2, :2],
                             np.broadcast_to(g[:, :, :1, :1] / 4,
                                             want[:, :, :2, :2].shape))


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown model"):
    models.make_model("vgg")
  with pytest.raises(ValueError, match="conv impl"):
    models.make_model("small_cnn", conv_impl="fft")
  with pytest.raises(ValueError, match="num_classes"):
    models.make_model("small_cnn", num_classes=1)
  with pytest.raises(ValueError, match="input_shape"):
    models.make_model("small_cnn", widths=(2, 2, 2)).init(
        jax.random.key(0), (28, 28))
