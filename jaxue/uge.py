"""Ungeneralizable examples (UGE; Ye & Wang, CVPR 2024, arXiv 2404.14016).

**A reconstruction from the paper's abstract, not the authors' method.** No
public code exists and the method section could not be read; what the
abstract establishes is only this: the data owner fixes an *authorised*
architecture; a *generator* maps each image x to its ungeneralizable version
x_u; it is trained with three losses, gradient matching (the authorised
network's gradients on x_u match those on x, so the authorised network
still learns from x_u), a feature distance maximised in a common feature
space (a CLIP image encoder in the paper, with a "misalignment" strategy)
and an undistillation term (a hacker cannot distil the authorised model).
Every formula below, every hyperparameter and the loop are our choices:

* generator: ``delta = eps * tanh(G_phi(x))``, G three 3x3 convolutions
  (``generator_widths`` hidden channels, ReLU);
  ``x_u = clip(x + delta, 0, 1)``.
* gradient matching (dataset-condensation style): for every weight tensor
  of the authorised network (biases and batch-norm excluded), the mean over
  its output channels of ``1 - cos(g(x_u), g(x))``, summed over tensors; g is
  the train-mode cross-entropy gradient.
* feature distance: CLIP is replaced by a frozen encoder h of *another*
  architecture trained on a disjoint clean split (its penultimate features,
  `penultimate`); features are L2-normalised as CLIP's are. The generator
  maximises ``||h(x_u) - h(x)||`` and, for the "misalignment", pulls
  ``h(x_u)`` towards the centroid of class ``(y + target_shift) mod C``
  (class centroids of h replace CLIP's text embeddings).
* undistillation (Nasty-Teacher style): ``-T^2 KL(softmax(f_theta(x_u)/T) ||
  softmax(r(x_u)/T))`` with T = 4 and the reference r the encoder's own
  classifier (a clean-trained model).
* loop: every round re-initialises the authorised network theta; each of
  ``steps`` steps takes an Adam step on the generator's loss
  ``lam_gm L_gm - lam_fd L_fd + lam_align L_align + lam_ud L_ud`` and then
  an SGD step of theta on ``CE(f_theta(x_u), y)``.

Caveat (why the evaluation reports a gap): an encoder trained on the same
distribution makes the feature term close to error-maximising noise against
a surrogate, so an unauthorised network failing may be adversarial-poison
transfer rather than anything authorisation-specific; compare the
authorised network's accuracy with the unauthorised ones'.

Second-order differentiation: gradient matching differentiates the
authorised network's parameter gradient with respect to its input, which
jaxue's default CPU convolution (``"hybrid"``, a custom VJP) does not
support; build the authorised model with ``make_model(...,
conv_impl="im2col")`` (plain matrix products: on XLA:CPU the fastest
second-order form measured, 0.33 s against lax's 0.47 s a step of
small_cnn(16,32,64) at batch 64) or ``"lax"``. All impls compute the same
function, so a network trained on the release may use any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import time
from typing import Any, NamedTuple

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue import noise as noise_lib
from jaxue import train as train_lib
from jaxue.models import Model, Variables
from jaxue.train import TrainState



@struct.dataclass
class Encoder:
  """A frozen feature encoder: ``encoder(x) -> (features (B, D), logits
  (B, C))`` on float images.

  A pytree whose ``variables`` are traced and whose ``apply(variables, x)``
  is static, so jitted steps compile once per architecture, not once per
  trained encoder (`penultimate` returns the same ``apply`` for a model).
  """

  apply: Callable[[Variables, jax.Array], tuple[jax.Array, jax.Array]] = (
      struct.field(pytree_node=False))
  variables: Any

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.apply(self.variables, x)


class UGEConfig(NamedTuple):
  """Hyperparameters of UGE crafting (all ours: the paper's are unknown).

  Attributes:
    epsilon: L-inf budget of the generator's perturbation.
    generator_widths: hidden channels of the generator's convolutions (one
      more convolution maps to the image's channels).
    rounds: R, re-initialisations of the authorised network.
    steps: T, generator/network steps per round.
    batch_size: images per step.
    generator_lr: Adam learning rate of the generator.
    network_lr: SGD learning rate of the authorised network (momentum 0.9,
      weight decay 5e-4, as jaxue's surrogates).
    lam_gm: weight of gradient matching (0 turns it off: an ablation).
    lam_fd: weight of the feature distance (maximised).
    lam_align: weight of the misalignment pull towards another class's
      centroid (0 turns it off).
    lam_ud: weight of the undistillation term (0 turns it off). Its raw
      value (``T^2`` times a KL) was about -6.5 in Fashion-MNIST runs
      against gradient matching's 0.1 and the feature terms' 0.4-0.9, so
      0.1 keeps it from dominating the generator's loss.
    temperature: T of the undistillation KL.
    target_shift: the misalignment target class is ``(y + shift) mod C``.
  """

  epsilon: float = 8 / 255
  generator_widths: tuple[int, ...] = (16, 32)
  rounds: int = 10
  steps: int = 50
  batch_size: int = 64
  generator_lr: float = 1e-3
  network_lr: float = 0.01
  lam_gm: float = 1.0
  lam_fd: float = 1.0
  lam_align: float = 1.0
  lam_ud: float = 0.1
  temperature: float = 4.0
  target_shift: int = 1

  def resolved(self) -> UGEConfig:
    """The config with its values checked (one-line ValueErrors)."""
    cfg = self._replace(
        epsilon=noise_lib.check_epsilon(self.epsilon),
        generator_widths=tuple(int(w) for w in self.generator_widths))
    if not cfg.generator_widths or min(cfg.generator_widths) < 1:
      raise ValueError("generator_widths must be positive integers, got "
                       f"{self.generator_widths}")
    for name in ("rounds", "steps", "batch_size"):
      if int(getattr(cfg, name)) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("generator_lr", "network_lr", "temperature"):
      if not getattr(cfg, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in ("lam_gm", "lam_fd", "lam_align", "lam_ud"):
      if not getattr(cfg, name) >= 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    return cfg


class Generator(nn.Module):
  """G_phi: 3x3 convolutions with ReLU, then ``eps * tanh`` (our design)."""

  widths: Sequence[int]
  channels: int
  epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x
    for width in self.widths:
      h = nn.relu(nn.Conv(width, (3, 3))(h))
    # A small last layer: the generator starts near the identity map, so the
    # first steps see gradients of the clean network, not of saturated noise.
    h = nn.Conv(self.channels, (3, 3),
                kernel_init=nn.initializers.normal(1e-2))(h)
    return self.epsilon * jnp.tanh(h)


def make_generator(cfg: UGEConfig, channels: int) -> Generator:
  """The generator module of a (resolved) config for ``channels``-channel
  images."""
  return Generator(tuple(cfg.generator_widths), int(channels),
                   float(cfg.epsilon))


def generate(generator: Generator, params: Any, images: np.ndarray, *,
             batch_size: int = 1000) -> np.ndarray:
  """The perturbations ``delta = eps * tanh(G(x))`` of uint8 images (what a
  data owner releases with `jaxue.noise.release`)."""
  images = np.asarray(images)
  data_lib.check_dataset(images, np.zeros(len(images), np.int32))
  x, _ = train_lib.padded_batches(jnp.asarray(images),
                                  jnp.zeros(len(images), jnp.int32),
                                  batch_size)
  out = _generate(generator, params, x)
  return np.asarray(out.reshape((-1,) + images.shape[1:])[:len(images)],
                    np.float32)


@functools.partial(jax.jit, static_argnums=(0,))
def _generate(generator, params, batches):
  return jax.lax.map(
      lambda b: generator.apply({"params": params}, train_lib.as_float(b)),
      batches)


def penultimate(model: Model, variables: Variables) -> Encoder:
  """A frozen encoder from a trained jaxue model: its eval-mode penultimate
  features (the input of its last Dense layer) and its logits.

  Works for any flax module wrapped by `jaxue.models.functional` whose last
  Dense layer is the classifier (the small CNNs, ResNet-18).
  """
  return Encoder(_penultimate_apply(model), variables)


@functools.lru_cache(maxsize=16)
def _penultimate_apply(model: Model) -> Callable[..., Any]:

  def encode(variables: Variables, x: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    captured = []

    def intercept(next_fun, args, kwargs, context):
      if (isinstance(context.module, nn.Dense)
          and context.method_name == "__call__"):
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
      logits, _ = model.apply(variables, x, False)
    if not captured:
      raise ValueError(f"encoder model {model.name} has no Dense layer to "
                       "take penultimate features from")
    features = captured[-1]
    return features.reshape(features.shape[0], -1), logits

  return encode


def _weight_leaves(tree: Any) -> list[jax.Array]:
  """The weight tensors (ndim >= 2: conv and dense kernels) of a params
  tree, in tree order; biases and batch-norm scales are left out."""
  return [leaf for leaf in jax.tree.leaves(tree) if leaf.ndim >= 2]


def _channel_cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean over output channels (last axis) of ``1 - cos(a_c, b_c)``.

  A channel whose two gradients are both zero counts as distance 0 (so
  identical inputs give exactly 0), with the double-`where` so its
  gradient stays finite.
  """
  a = a.reshape(-1, a.shape[-1])
  b = b.reshape(-1, b.shape[-1])
  dot = jnp.sum(a * b, axis=0)
  norms = jnp.sum(a * a, axis=0) * jnp.sum(b * b, axis=0)
  ok = norms > 1e-30
  safe = jnp.where(ok, norms, 1.0)
  return jnp.mean(jnp.where(ok, 1.0 - dot * jax.lax.rsqrt(safe), 0.0))


def parameter_gradient(apply_fn: Callable[..., Any], variables: Variables,
                       x: jax.Array, y: jax.Array) -> Any:
  """``grad_theta CE(f_theta(x), y)`` in train mode (batch statistics),
  the running statistics left unchanged."""

  def loss(params):
    logits, _ = apply_fn({"params": params,
                          "batch_stats": variables["batch_stats"]}, x, True)
    return train_lib.cross_entropy(logits, y)

  return jax.grad(loss)(variables["params"])


def gradient_matching_loss(apply_fn: Callable[..., Any],
                           variables: Variables, x_u: jax.Array,
                           x: jax.Array, y: jax.Array) -> jax.Array:
  """L_gm: sum over weight tensors of the mean over output channels of
  ``1 - cos`` between the parameter gradients on ``x_u`` and on ``x``
  (the clean gradient is a constant).

  Args:
    apply_fn: the authorised network's ``apply``.
    variables: its ``{"params", "batch_stats"}``.
    x_u: float images in [0, 1], the protected batch.
    x: the clean batch (same shape).
    y: int labels.

  Returns:
    A scalar in ``[0, 2 * num_weight_tensors]``; 0 when ``x_u == x``.
  """
  target = jax.lax.stop_gradient(parameter_gradient(apply_fn, variables, x,
                                                    y))
  mine = parameter_gradient(apply_fn, variables, x_u, y)
  return sum(_channel_cosine_distance(a, b)
             for a, b in zip(_weight_leaves(mine), _weight_leaves(target)))


def _normalise(v: jax.Array) -> jax.Array:
  return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)


def _mean_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  # The epsilon keeps the gradient finite where the two rows coincide.
  return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(a - b), -1) + 1e-12))


def feature_distance(encoder: Encoder, x_u: jax.Array,
                     x: jax.Array) -> jax.Array:
  """L_fd: the mean distance of the normalised encoder features of ``x_u``
  and ``x`` (in [0, 2]; the generator maximises it)."""
  f_x = jax.lax.stop_gradient(_normalise(encoder(x)[0]))
  return _mean_distance(_normalise(encoder(x_u)[0]), f_x)


def undistillation_loss(student_logits: jax.Array,
                        reference_logits: jax.Array, *,
                        temperature: float = 4.0) -> jax.Array:
  """L_ud = ``-T^2 KL(softmax(s / T) || softmax(r / T))``, batch mean.

  Minimising it pushes the authorised network's tempered outputs away from
  a clean reference's (Ma et al., Nasty Teacher, ICLR 2021, Sec. 3; the
  direction of the KL is our choice).
  """
  log_p = jax.nn.log_softmax(student_logits / temperature)
  log_q = jax.nn.log_softmax(reference_logits / temperature)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return -temperature ** 2 * jnp.mean(kl)


def class_centroids(encoder: Encoder, images: np.ndarray, labels: np.ndarray,
                    *, num_classes: int, batch_size: int = 1000
                    ) -> jax.Array:
  """The normalised mean of each class's normalised encoder features (our
  stand-in for CLIP's class text embeddings)."""
  x, y = train_lib.padded_batches(jnp.asarray(images),
                                  jnp.asarray(labels, jnp.int32), batch_size)
  return _centroids(encoder, x, y, num_classes)


@functools.partial(jax.jit, static_argnums=(3,))
def _centroids(encoder, x, y, num_classes):

  def batch_sums(batch):
    xb, yb = batch
    f = _normalise(encoder(train_lib.as_float(xb))[0])
    onehot = jax.nn.one_hot(yb, num_classes)  # Padding (-1) is all zeros.
    return onehot.T @ f

  sums = jax.lax.map(batch_sums, (x, y)).sum(0)
  return _normalise(sums)


def _generator_loss(gen_params, net_variables, x, y, *, generator, apply_fn,
                    encoder, centroids, cfg):
  delta = generator.apply({"params": gen_params}, x)
  x_u = jnp.clip(x + delta, 0.0, 1.0)
  gm = gradient_matching_loss(apply_fn, net_variables, x_u, x, y)
  features_u, reference_logits = encoder(x_u)
  features_u = _normalise(features_u)
  f_x = jax.lax.stop_gradient(_normalise(encoder(x)[0]))
  fd = _mean_distance(features_u, f_x)
  target = centroids[(y + cfg.target_shift) % centroids.shape[0]]
  align = _mean_distance(features_u, target)
  logits, _ = apply_fn(net_variables, x_u, False)
  ud = undistillation_loss(logits, jax.lax.stop_gradient(reference_logits),
                           temperature=cfg.temperature)
  loss = (cfg.lam_gm * gm - cfg.lam_fd * fd + cfg.lam_align * align
          + cfg.lam_ud * ud)
  return loss, ({"loss": loss, "gm": gm, "fd": fd, "align": align,
                 "ud": ud}, x_u)


@functools.partial(
    jax.jit, static_argnames=("generator", "gen_tx", "cfg"),
    donate_argnums=(0, 1, 2))
def uge_step(gen_params, gen_opt, net, key, images, labels, centroids, *,
             generator, gen_tx, encoder, cfg):
  """One UGE step: an Adam step of the generator on its loss, then one SGD
  step of the authorised network on the protected batch (state first).

  One jitted call per step, driven from Python: inside a `lax.scan` the
  second-order gradient through lax convolutions ran ~9x slower on XLA:CPU
  (6 s against 0.66 s a step for small_cnn(16,32,64), batch 64), and the
  per-call overhead is negligible next to a step.
  """
  n = images.shape[0]
  idx = jax.random.choice(jax.random.fold_in(key, 0), n, (cfg.batch_size,),
                          replace=False)
  x = train_lib.as_float(images[idx])
  y = labels[idx]
  grads, (metrics, x_u) = jax.grad(_generator_loss, has_aux=True)(
      gen_params, net.variables, x, y, generator=generator,
      apply_fn=net.apply_fn, encoder=encoder, centroids=centroids, cfg=cfg)
  updates, gen_opt = gen_tx.update(grads, gen_opt, gen_params)
  gen_params = optax.apply_updates(gen_params, updates)
  net, net_metrics = train_lib.train_step(
      net, (jax.lax.stop_gradient(x_u), y), jax.random.fold_in(key, 1))
  metrics["net_accuracy"] = net_metrics["accuracy"]
  return gen_params, gen_opt, net, metrics


# Cached: optimizers are static arguments of `uge_step`, so equal settings
# must give the same object for a second call to reuse the compiled step.
@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
  return optax.adam(learning_rate)


@functools.lru_cache(maxsize=16)
def _network_optimizer(learning_rate: float) -> optax.GradientTransformation:
  return train_lib.make_optimizer(learning_rate)


def ungeneralizable_examples(key: jax.Array, model: Model,
                             images: np.ndarray, labels: np.ndarray, *,
                             num_classes: int, encoder: Encoder,
                             config: UGEConfig | None = None,
                             start_round: int = 0,
                             generator_state: tuple[Any, Any] | None = None,
                             network: TrainState | None = None,
                             history: dict[str, list] | None = None,
                             on_round: Callable[..., None] | None = None,
                             progress: bool | str = True,
                             **overrides: Any) -> noise_lib.CraftResult:
  """Crafts ungeneralizable examples (a reconstruction of Ye & Wang, CVPR
  2024, Sec. 3, from its abstract; see the module docstring).

  Args:
    key: randomness (generator and network initialisations, batches).
    model: the authorised architecture, twice differentiable (build it with
      ``make_model(..., conv_impl="im2col")`` or ``"lax"``).
    images: uint8 NHWC clean training images.
    labels: int labels.
    num_classes: number of classes.
    encoder: the frozen common feature space, an `Encoder` (``encoder(x)
      -> (features, logits)`` on float images), e.g. `penultimate` of a
      model of another architecture trained on a disjoint clean split; its
      logits are the undistillation reference.
    config: a `UGEConfig` (defaults when None).
    start_round: resume after this many finished rounds (keys are folded
      in by round and step, so a resumed run equals an uninterrupted one).
    generator_state: resume from ``(generator params, Adam state)``.
    network: resume the authorised network's state (the last round's).
    history: resume this history.
    on_round: called after every round with ``(round, generator params,
      Adam state, network state, history)``; pipelines checkpoint there.
    progress: show a tqdm bar over rounds; a string is its description.
    **overrides: `UGEConfig` fields replacing ``config``'s.

  Returns:
    A `jaxue.noise.CraftResult`: sample-wise noise ``eps * tanh(G(x))``;
    ``surrogate`` the authorised network's state at the end of the last
    round; ``history`` per-round means of ``loss``, ``gm``, ``fd``,
    ``align``, ``ud``, ``net_accuracy`` and ``seconds``; ``info`` with
    ``method="uge"``, ``mode="samplewise"``, ``epsilon``, the resolved
    ``config`` and the trained ``generator`` parameters (`generate`
    applies them to new images with `make_generator`).
  """
  unknown = set(overrides) - set(UGEConfig._fields)
  if unknown:
    raise ValueError(f"unknown UGE option(s) {sorted(unknown)}; choose from "
                     f"{UGEConfig._fields}")
  cfg = (config or UGEConfig())._replace(**overrides).resolved()
  images = np.asarray(images)
  labels = np.asarray(labels)
  data_lib.check_dataset(images, labels, num_classes=num_classes)
  if len(images) < cfg.batch_size:
    raise ValueError(f"batch_size {cfg.batch_size} exceeds the "
                     f"{len(images)} images")
  generator = make_generator(cfg, images.shape[-1])
  gen_key, net_key, step_key = jax.random.split(key, 3)
  gen_params = generator.init(gen_key, jnp.zeros((1,) + images.shape[1:]))[
      "params"]
  gen_tx = _adam(cfg.generator_lr)
  gen_opt = gen_tx.init(gen_params)
  if generator_state is not None:
    gen_params, gen_opt = generator_state
  net_tx = _network_optimizer(cfg.network_lr)
  centroids = class_centroids(encoder, images, labels,
                              num_classes=num_classes)
  x = jnp.asarray(images)
  y = jnp.asarray(labels, jnp.int32)
  names = ("loss", "gm", "fd", "align", "ud", "net_accuracy")
  history = history or {name: [] for name in names + ("seconds",)}
  net = network
  desc = progress if isinstance(progress, str) else "UGE"
  bar = tqdm(range(start_round, cfg.rounds), desc=desc,
             disable=not progress, leave=False)
  for r in bar:
    start = time.perf_counter()
    # Every round starts a fresh authorised network, so the generator
    # matches gradients along whole early trajectories, not one network's.
    net = train_lib.create_train_state(jax.random.fold_in(net_key, r),
                                       model, images.shape[1:], net_tx)
    round_key = jax.random.fold_in(step_key, r)
    sums = {name: 0.0 for name in names}
    for t in range(cfg.steps):
      try:
        gen_params, gen_opt, net, metrics = uge_step(
            gen_params, gen_opt, net, jax.random.fold_in(round_key, t), x,
            y, centroids, generator=generator, gen_tx=gen_tx,
            encoder=encoder, cfg=cfg)
      except ValueError as e:
        if "Linearization failed" in str(e):
          raise ValueError(
              "model must be twice differentiable for gradient matching: "
              "build it with make_model(..., conv_impl='im2col')") from None
        raise
      for name in names:
        sums[name] += metrics[name]
    for name in names:
      history[name].append(float(sums[name]) / cfg.steps)
    history["seconds"].append(time.perf_counter() - start)
    bar.set_postfix(gm=f"{history['gm'][-1]:.3f}",
                    fd=f"{history['fd'][-1]:.3f}")
    if on_round is not None:
      on_round(r, gen_params, gen_opt, net, history)
  bar.close()
  if net is None:
    raise ValueError(f"start_round {start_round} leaves no round to run and "
                     "no network was given")
  noise = generate(generator, gen_params, images)
  info = {"method": "uge", "mode": "samplewise", "epsilon": cfg.epsilon,
          "rounds": cfg.rounds, "config": cfg._asdict(),
          "generator": jax.tree.map(np.asarray, gen_params)}
  return noise_lib.CraftResult(noise, net, history, True, info)


def _kd_step(state, batch, key, *, teacher_apply, teacher_variables,
             temperature, label_weight, augment):
  x, y = batch
  x = train_lib.as_float(x)
  if augment is not None:
    x = augment(key, x)
  teacher_logits, _ = teacher_apply(teacher_variables, x, False)
  soft = jax.nn.softmax(teacher_logits / temperature)

  def loss_fn(params):
    logits, batch_stats = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, x, True)
    kd = optax.softmax_cross_entropy(logits / temperature, soft).mean()
    loss = ((1 - label_weight) * temperature ** 2 * kd
            + label_weight * train_lib.cross_entropy(logits, y))
    return loss, batch_stats

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  return train_lib.apply_gradients(state, grads, batch_stats), loss


@functools.partial(
    jax.jit, static_argnames=("teacher_apply", "batch_size", "temperature",
                              "label_weight", "augment"))
def _kd_epoch(state, teacher_variables, images, labels, key, *,
              teacher_apply, batch_size, temperature, label_weight, augment):
  perm_key, step_key = jax.random.split(key)
  batches = train_lib.epoch_indices(perm_key, images.shape[0], batch_size)

  def body(state, i_idx):
    i, idx = i_idx
    return _kd_step(state, (images[idx], labels[idx]),
                    jax.random.fold_in(step_key, i),
                    teacher_apply=teacher_apply,
                    teacher_variables=teacher_variables,
                    temperature=temperature, label_weight=label_weight,
                    augment=augment)

  state, losses = jax.lax.scan(body, state,
                               (jnp.arange(batches.shape[0]), batches))
  return state, losses.mean()


def distill(key: jax.Array, teacher_apply: Callable[..., Any],
            teacher_variables: Variables, student: Model,
            images: np.ndarray, labels: np.ndarray, *,
            test: tuple[np.ndarray, np.ndarray], epochs: int,
            batch_size: int = 128, learning_rate: float = 0.1,
            temperature: float = 4.0, label_weight: float = 0.0,
            augment: train_lib.Augment | None = None,
            progress: bool | str = True
            ) -> tuple[TrainState, dict[str, list]]:
  """The distillation attack on UGE: a hacker's student trained on the
  released images to match the authorised teacher's tempered outputs
  (Hinton et al. 2015: ``T^2 KL`` to the teacher, plus ``label_weight`` of
  cross-entropy to the labels), with the victims' recipe (SGD, cosine).

  ``teacher_apply`` and ``teacher_variables`` are the teacher's
  ``Model.apply`` (or ``TrainState.apply_fn``) and variables, evaluated in
  eval mode.

  Returns:
    The student's state and ``{"train_loss", "test_accuracy"}`` per epoch.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  if not 0 <= label_weight <= 1:
    raise ValueError(f"label_weight must be in [0, 1], got {label_weight}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  images = np.asarray(images)
  data_lib.check_dataset(images, np.asarray(labels))
  init_key, fit_key = jax.random.split(key)
  steps = epochs * (len(images) // batch_size)
  state = train_lib.create_train_state(
      init_key, student, images.shape[1:],
      train_lib.cosine_optimizer(steps, learning_rate))
  x = jnp.asarray(images)
  y = jnp.asarray(labels, jnp.int32)
  history = {"train_loss": [], "test_accuracy": []}
  desc = progress if isinstance(progress, str) else "distill"
  for epoch in tqdm(range(epochs), desc=desc, disable=not progress,
                    leave=False):
    state, loss = _kd_epoch(
        state, teacher_variables, x, y, jax.random.fold_in(fit_key, epoch),
        teacher_apply=teacher_apply, batch_size=batch_size,
        temperature=float(temperature), label_weight=float(label_weight),
        augment=augment)
    history["train_loss"].append(float(loss))
    history["test_accuracy"].append(
        train_lib.evaluate(state.apply_fn, state.variables, *test))
  return state, history
