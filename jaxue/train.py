"""Training and evaluation of surrogates and victims as pure jitted functions.

The recipe is the one shared by the three papers (docs/design.md, "Surrogate
and victim training"): SGD with momentum 0.9, weight decay 5e-4 (added to the
gradient, as in PyTorch), global-norm gradient clipping at 5, learning rate
0.1 (cosine to zero for victims, constant while crafting EM noise).

``train_step(state, batch, key)`` keeps the state first so that it composes
with `lax.scan`; a whole epoch runs inside one jitted `lax.scan`. Victims can
also be trained adversarially (Madry et al., ICLR 2018): pass an
`AdversarialConfig` to `fit` / `train_victim` / `train_epoch`, which then
run `adversarial_train_step`.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import time
from typing import Any, NamedTuple

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxue import data as data_lib
from jaxue import parallel
from jaxue import pgd as pgd_lib
from jaxue.models import Model, Variables

Augment = Callable[[jax.Array, jax.Array], jax.Array]
Mix = Callable[[jax.Array, jax.Array, jax.Array],
               tuple[jax.Array, jax.Array]]


class TrainState(struct.PyTreeNode):
  """Parameters, batch-norm statistics and optimizer state of one model."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @property
  def variables(self) -> Variables:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(learning_rate: float | optax.Schedule = 0.1, *,
                   momentum: float = 0.9, weight_decay: float = 5e-4,
                   clip_norm: float | None = 5.0
                   ) -> optax.GradientTransformation:
  """SGD as the reference code runs it: clip, then decay, then momentum.

  Args:
    learning_rate: a constant or an optax schedule.
    momentum: heavy-ball momentum (PyTorch convention, no dampening).
    weight_decay: L2 coefficient added to the gradient after clipping, as
      ``torch.optim.SGD(weight_decay=...)`` does.
    clip_norm: global-norm clipping threshold, or None for no clipping.

  Returns:
    An optax gradient transformation.
  """
  parts = []
  if clip_norm is not None:
    parts.append(optax.clip_by_global_norm(clip_norm))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.sgd(learning_rate, momentum=momentum or None))
  return optax.chain(*parts)


@functools.lru_cache(maxsize=64)
def cosine_optimizer(total_steps: int, learning_rate: float = 0.1,
                     **kwargs: Any) -> optax.GradientTransformation:
  """The victims' optimizer: `make_optimizer` with cosine decay to zero.

  Cached, so equal settings return the same object: `TrainState` keeps the
  optimizer as static data, and equal static data reuses the compiled epoch
  (one compilation for all seeds of a victim, or for a whole eta grid).
  """
  schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
  return make_optimizer(schedule, **kwargs)


def create_train_state(key: jax.Array, model: Model, input_shape,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises a model and its optimizer state."""
  variables = model.init(key, input_shape)
  return TrainState(step=jnp.zeros((), jnp.int32),
                    params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]),
                    apply_fn=model.apply, tx=tx)


def as_float(images: jax.Array) -> jax.Array:
  """uint8 images to float32 in [0, 1]; float images pass through."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def apply_gradients(state: TrainState, grads: Any,
                    batch_stats: Any) -> TrainState:
  """One optimizer update."""
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)


def train_step(state: TrainState, batch: tuple[jax.Array, jax.Array],
               key: jax.Array, *, augment: Augment | None = None,
               mix: Mix | None = None, repeats: int = 1
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step in train mode (batch-norm batch statistics).

  State first (not the key) so it composes with `lax.scan`.

  Args:
    state: the model's training state.
    batch: ``(images, labels)``; uint8 or float32 [0, 1] NHWC images.
    key: randomness for ``augment`` and ``mix`` (unused without them).
    augment: optional per-sample augmentation ``augment(key, images)``.
    mix: optional batch mixer ``mix(key, images, labels) -> (images,
      soft_targets)`` (mixup, cutmix: `jaxue.defences`), applied after
      ``augment``; the loss is then the cross-entropy to the soft targets.
    repeats: K > 1 trains on the largest of K per-example losses over K
      independently augmented copies of the batch, ``mean_i max_k
      CE(f(A_k(x_i)), y_i)`` (UEraser's adversarial augmentation, Qin et
      al. 2023, Sec. 3; `jaxue.ueraser`); each copy is a train-mode pass
      that updates the batch-norm statistics in turn, as the authors'
      script does. K = 1 is the plain step. Needs ``augment``; not
      combined with ``mix``.

  Returns:
    The new state and ``{"loss", "accuracy"}`` of the batch (accuracy
    against the soft targets' argmax when mixing; of the last copy with
    ``repeats``). Data-parallel over the mesh of `jax.set_mesh`
    (`jaxue.parallel`).
  """
  if int(repeats) != repeats or repeats < 1:
    raise ValueError(f"repeats must be an integer >= 1, got {repeats}")
  if repeats > 1:
    if augment is None:
      raise ValueError("repeats > 1 needs an augment (the copies would be "
                       "equal)")
    if mix is not None:
      raise ValueError("repeats > 1 does not combine with mix")
    return _max_over_repeats_step(state, batch, key, augment, int(repeats))
  images, labels = parallel.shard_batch(batch)
  images = as_float(images)
  if augment is not None:
    images = augment(key, images)
  targets = None
  if mix is not None:
    images, targets = mix(jax.random.fold_in(key, 1), images, labels)
    labels = targets.argmax(-1)

  def loss_fn(params):
    logits, batch_stats = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, True)
    loss = (cross_entropy(logits, labels) if targets is None else
            optax.softmax_cross_entropy(logits, targets).mean())
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  state = apply_gradients(state, grads, batch_stats)
  accuracy = (logits.argmax(-1) == labels).mean()
  return state, {"loss": loss, "accuracy": accuracy}


def _max_over_repeats_step(state: TrainState,
                           batch: tuple[jax.Array, jax.Array],
                           key: jax.Array, augment: Augment, repeats: int
                           ) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_step` with ``repeats`` > 1 (the max-over-K loss)."""
  images, labels = parallel.shard_batch(batch)
  images = as_float(images)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(repeats))
  # lax.map, not a Python loop: the augmentation compiles once, not K
  # times (UEraser's policy takes seconds to compile).
  copies = jax.lax.map(lambda k: augment(k, images), keys)

  def loss_fn(params):
    def forward(batch_stats, inputs):
      logits, batch_stats = state.apply_fn(
          {"params": params, "batch_stats": batch_stats}, inputs, True)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                               labels)
      return batch_stats, (losses, logits)

    batch_stats, (losses, logits) = jax.lax.scan(
        forward, state.batch_stats, copies)
    return losses.max(axis=0).mean(), (logits[-1], batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  state = apply_gradients(state, grads, batch_stats)
  accuracy = (logits.argmax(-1) == labels).mean()
  return state, {"loss": loss, "accuracy": accuracy}


def epoch_indices(key: jax.Array, num_examples: int,
                  batch_size: int) -> jax.Array:
  """A shuffled epoch as (num_batches, batch_size) indices; the tail that
  does not fill a batch is dropped (a different tail every epoch)."""
  if num_examples < batch_size:
    raise ValueError(
        f"batch_size {batch_size} exceeds the {num_examples} examples")
  num_batches = num_examples // batch_size
  perm = jax.random.permutation(key, num_examples)
  return perm[: num_batches * batch_size].reshape(num_batches, batch_size)


@functools.partial(jax.jit,
                   static_argnames=("batch_size", "augment", "mix",
                                    "adversarial", "repeats"),
                   donate_argnums=(0,))
def train_epoch(state: TrainState, images: jax.Array, labels: jax.Array,
                key: jax.Array, *, batch_size: int = 128,
                augment: Augment | None = None, mix: Mix | None = None,
                adversarial: AdversarialConfig | None = None,
                repeats: int = 1
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One shuffled epoch of `train_step` as a single `lax.scan` (a step over
  epochs: state first, like `train_step`).

  With ``adversarial``, every step is `adversarial_train_step` instead
  (Madry PGD adversarial training; not combined with ``mix`` or
  ``repeats``). ``repeats`` is `train_step`'s max-over-K loss.

  Returns:
    The new state and the epoch's mean ``{"loss", "accuracy"}`` (on the
    adversarial batches when ``adversarial`` is given).
  """
  perm_key, step_key = jax.random.split(key)
  batches = epoch_indices(perm_key, images.shape[0], batch_size)
  if adversarial is None:
    step = functools.partial(train_step, mix=mix, repeats=repeats)
  elif mix is not None:
    raise ValueError("adversarial training does not combine with mix")
  elif repeats != 1:
    raise ValueError("adversarial training does not combine with repeats")
  else:
    step = functools.partial(adversarial_train_step, cfg=adversarial)

  def body(state, index_and_batch):
    i, idx = index_and_batch
    return step(state, (images[idx], labels[idx]),
                jax.random.fold_in(step_key, i), augment=augment)

  state, metrics = jax.lax.scan(
      body, state, (jnp.arange(batches.shape[0]), batches))
  return state, jax.tree.map(jnp.mean, metrics)


def padded_batches(images: jax.Array, labels: jax.Array, batch_size: int
                   ) -> tuple[jax.Array, jax.Array]:
  """The whole set as (num_batches, batch, ...) for a `lax.map`.

  Traceable. The last batch is padded with zero images whose label is -1,
  so a sum over batches can mask the padding and no tail is dropped
  (unlike the reference's ``drop_last``).
  """
  n = images.shape[0]
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  images = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
  labels = jnp.pad(labels, (0, pad), constant_values=-1)
  return (images.reshape(num_batches, batch_size, *images.shape[1:]),
          labels.reshape(num_batches, batch_size))


def count_correct(apply_fn: Callable[..., Any], variables: Variables,
                  images: jax.Array, labels: jax.Array, *,
                  batch_size: int = 1000) -> jax.Array:
  """Exact number of correct eval-mode predictions over the whole set.

  Traceable: the set is streamed in batches with `lax.map`; the last batch is
  padded and masked (`padded_batches`).
  """
  images, labels = padded_batches(images, labels, batch_size)

  def batch_correct(batch):
    x, y = parallel.shard_batch(batch)
    logits, _ = apply_fn(variables, as_float(x), False)
    return jnp.sum((logits.argmax(-1) == y) & (y >= 0), dtype=jnp.int32)

  return jax.lax.map(batch_correct, (images, labels)).sum()


@functools.partial(jax.jit, static_argnames=("apply_fn", "batch_size"))
def _accuracy(apply_fn, variables, images, labels, batch_size):
  correct = count_correct(apply_fn, variables, images, labels,
                          batch_size=batch_size)
  return correct / images.shape[0]


def evaluate(apply_fn: Callable[..., Any], variables: Variables,
             images: np.ndarray | jax.Array, labels: np.ndarray | jax.Array,
             *, batch_size: int = 1000) -> float:
  """Eval-mode accuracy in [0, 1] over the whole set (uint8 images)."""
  data_lib.check_dataset(np.asarray(images), np.asarray(labels))
  return float(_accuracy(apply_fn, variables, jnp.asarray(images),
                         jnp.asarray(labels), batch_size))


def fit(key: jax.Array, state: TrainState, train_images: np.ndarray,
        train_labels: np.ndarray, *, epochs: int, batch_size: int = 128,
        augment: Augment | None = None, mix: Mix | None = None,
        test: tuple[np.ndarray, np.ndarray] | None = None,
        adversarial: AdversarialConfig | None = None,
        repeats: int | Callable[[int, int], int] = 1,
        allow_float: bool = False,
        progress: bool | str = True) -> tuple[TrainState, dict[str, Any]]:
  """Trains for ``epochs`` epochs and records the per-epoch test accuracy.

  Used for victims (on released uint8 data, with `cosine_optimizer`) and for
  clean surrogates. Each epoch is one compiled `train_epoch` call.

  Args:
    key: randomness for shuffling and augmentation.
    state: initial state (its optimizer fixes the learning-rate schedule).
    train_images: uint8 NHWC training images (float ones with
      ``allow_float``).
    train_labels: int labels.
    epochs: number of epochs (>= 1).
    batch_size: SGD batch size.
    augment: optional ``augment(key, images)`` on float batches.
    mix: optional batch mixer (mixup, cutmix; `jaxue.defences`) training
      on soft targets.
    test: optional clean ``(images, labels)`` evaluated after every epoch.
    adversarial: if given, Madry PGD adversarial training
      (`adversarial_train_step`) with these attack settings.
    repeats: `train_step`'s K (max loss over K augmented copies): an int,
      or ``repeats(epoch, epochs) -> K`` per epoch (a `jaxue.ueraser`
      schedule).
    allow_float: accept float training images and use them as they are, in
      any range (`jaxue.projection`'s projected images). Off by default:
      float images in [0, 255] are a common slip that would train silently.
    progress: show a tqdm bar; a string is used as its description.

  Returns:
    The final state and a history ``{"train_loss", "train_accuracy",
    "test_accuracy", "seconds"}`` with one entry per epoch; with ``test``
    also ``"peak_test_accuracy"`` and ``"peak_epoch"`` (the best epoch's
    accuracy and its number, from 1: what early stopping on the test set
    would keep, `peak_accuracy`).
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  if adversarial is not None:
    adversarial = adversarial.resolved()
    if mix is not None:
      raise ValueError("adversarial training does not combine with mix")
  _check_training_set(train_images, train_labels, allow_float)
  if test is not None:
    data_lib.check_dataset(np.asarray(test[0]), np.asarray(test[1]))
  images = jnp.asarray(train_images)
  labels = jnp.asarray(train_labels, jnp.int32)
  history = {"train_loss": [], "train_accuracy": [], "test_accuracy": [],
             "seconds": []}
  desc = progress if isinstance(progress, str) else "train"
  bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
  for epoch in bar:
    start = time.perf_counter()
    state, metrics = train_epoch(
        state, images, labels, jax.random.fold_in(key, epoch),
        batch_size=batch_size, augment=augment, mix=mix,
        adversarial=adversarial,
        repeats=repeats(epoch, epochs) if callable(repeats) else repeats)
    history["train_loss"].append(float(metrics["loss"]))
    history["train_accuracy"].append(float(metrics["accuracy"]))
    if test is not None:
      history["test_accuracy"].append(
          evaluate(state.apply_fn, state.variables, *test))
    history["seconds"].append(time.perf_counter() - start)
    postfix = {"loss": f"{history['train_loss'][-1]:.3f}"}
    if test is not None:
      postfix["test_acc"] = f"{history['test_accuracy'][-1]:.3f}"
    bar.set_postfix(postfix)
  if test is not None:
    peak, peak_epoch = peak_accuracy(history["test_accuracy"])
    history.update(peak_test_accuracy=peak, peak_epoch=peak_epoch)
  return state, history


def peak_accuracy(curve: list[float]) -> tuple[float, int]:
  """The best accuracy of a per-epoch curve and its epoch (from 1; the
  first on ties): the result of early stopping on that curve, which
  defenders report beside the last epoch's because the accuracy of
  victims trained on unlearnable data often peaks early and then falls as
  the shortcut is learned."""
  if not len(curve):
    raise ValueError("curve must hold at least one epoch's accuracy")
  best = int(np.argmax(curve))
  return float(curve[best]), best + 1


def _check_training_set(images: Any, labels: Any, allow_float: bool) -> None:
  """uint8 images as `jaxue.data.check_dataset` wants them, or (with
  ``allow_float``) finite float NHWC images, used as they are."""
  images = np.asarray(images)
  if not (allow_float and np.issubdtype(images.dtype, np.floating)):
    data_lib.check_dataset(images, np.asarray(labels))
    return
  if images.ndim != 4:
    raise ValueError(f"expected NHWC images (4-D), got a {images.ndim}-D "
                     f"array of shape {images.shape}")
  if not np.isfinite(images).all():
    raise ValueError("float training images hold NaN or inf values")
  # The label checks, on a stand-in of the images' length.
  data_lib.check_dataset(np.zeros((len(images), 1, 1, 1), np.uint8),
                         np.asarray(labels))


def train_victim(key: jax.Array, model: Model, images: np.ndarray,
                 labels: np.ndarray, *, test: tuple[np.ndarray, np.ndarray],
                 epochs: int, batch_size: int = 128,
                 learning_rate: float = 0.1, augment: Augment | None = None,
                 mix: Mix | None = None,
                 adversarial: AdversarialConfig | None = None,
                 repeats: int | Callable[[int, int], int] = 1,
                 allow_float: bool = False,
                 progress: bool | str = True
                 ) -> tuple[TrainState, dict[str, Any]]:
  """Trains a fresh victim as the adversary would (docs/design.md,
  "Surrogate and victim training"): new initialisation, SGD with cosine
  decay to zero, on the released uint8 images; records the clean test
  accuracy per epoch.
  With ``adversarial``, the victim is trained adversarially (Madry et al.
  2018; the defence REM is built to survive, Fu et al. 2022, Sec. 5);
  ``augment``, ``mix`` and ``repeats`` apply the other training-time
  defences (`jaxue.defences`); with ``allow_float``, float ``images`` (a
  projected release, `jaxue.projection`) are used as they are.

  The victim's result is ``history["test_accuracy"][-1]``, with the peak
  over epochs in ``history["peak_test_accuracy"]`` (epoch
  ``history["peak_epoch"]``).
  """
  init_key, fit_key = jax.random.split(key)
  steps = epochs * (np.asarray(images).shape[0] // batch_size)
  state = create_train_state(init_key, model, np.asarray(images).shape[1:],
                             cosine_optimizer(steps, learning_rate))
  return fit(fit_key, state, images, labels, epochs=epochs,
             batch_size=batch_size, augment=augment, mix=mix, test=test,
             adversarial=adversarial, repeats=repeats,
             allow_float=allow_float, progress=progress)


def train_victims(key: jax.Array, model: Model, images: np.ndarray,
                  labels: np.ndarray, *, seeds: int,
                  progress: bool | str = "victim", **kwargs: Any
                  ) -> tuple[TrainState, list[dict[str, list]]]:
  """`train_victim` for ``seeds`` victims, victim s with key
  ``fold_in(key, s)`` (and progress label ``f"{progress} {s}"``); the
  keyword arguments go to `train_victim`.

  Returns:
    The first victim's state (the one experiments save) and every victim's
    history, in seed order.
  """
  first, histories = None, []
  for s in range(seeds):
    state, history = train_victim(
        jax.random.fold_in(key, s), model, images, labels,
        progress=f"{progress} {s}" if isinstance(progress, str) else progress,
        **kwargs)
    if s == 0:
      first = state
    histories.append(history)
  return first, histories


# ---------------------------------------------------------------------------
# Adversarial training (Madry et al., "Towards Deep Learning Models Resistant
# to Adversarial Attacks", ICLR 2018).
# ---------------------------------------------------------------------------


class AdversarialConfig(NamedTuple):
  """Madry PGD adversarial training settings.

  The defaults are the evaluation of Fu et al. ("Robust Unlearnable
  Examples", ICLR 2022, Sec. 5): radius rho_a = 4/255 and 10 steps of
  rho_a / 5 from a uniform start in the ball.

  Attributes:
    epsilon: L-inf attack radius (> 0).
    steps: PGD ascent steps (>= 0).
    step_size: PGD step (epsilon / 5 when None).
  """

  epsilon: float = 4 / 255
  steps: int = 10
  step_size: float | None = None

  def resolved(self) -> AdversarialConfig:
    """The config with the default step size filled in, validated."""
    epsilon = float(self.epsilon)
    if not np.isfinite(epsilon) or not 0 < epsilon <= 1:
      raise ValueError(
          f"adversarial epsilon must be in (0, 1] (pixel units, e.g. 4/255),"
          f" got {self.epsilon}")
    if int(self.steps) != self.steps or self.steps < 0:
      raise ValueError(f"adversarial steps must be an integer >= 0, got "
                       f"{self.steps}")
    step_size = (float(self.step_size) if self.step_size is not None
                 else epsilon / 5)
    if not step_size > 0:
      raise ValueError(f"adversarial step_size must be > 0, got {step_size}")
    return AdversarialConfig(epsilon, int(self.steps), step_size)


def pgd_attack(key: jax.Array, state: TrainState, images: jax.Array,
               labels: jax.Array, *, epsilon: float, step_size: float,
               steps: int) -> jax.Array:
  """Untargeted L-inf PGD from a uniform start (Madry et al. 2018, Sec. 2).

  Not a step (it returns a perturbation, not a new state), so the key comes
  first, as in every sampling function. The model is in **eval mode**
  (batch-norm running statistics, no statistics update) during the attack,
  as in the REM reference code, which calls ``model.eval()`` before
  attacking and ``model.train()`` after.

  Args:
    key: randomness of the uniform start.
    state: the attacked model (frozen).
    images: float32 inputs in [0, 1].
    labels: int labels whose cross-entropy is maximised.
    epsilon: L-inf radius.
    step_size: signed-gradient step.
    steps: number of ascent steps (a Python int).

  Returns:
    The perturbation delta: ``|delta| <= epsilon``, ``images + delta`` in
    [0, 1].
  """

  def loss(inputs):
    logits, _ = state.apply_fn(state.variables, inputs, False)
    return cross_entropy(logits, labels) * inputs.shape[0]

  return pgd_lib.pgd(loss, images, epsilon=epsilon, step_size=step_size,
                     steps=steps, descent=False, key=key)


def adversarial_train_step(state: TrainState,
                           batch: tuple[jax.Array, jax.Array],
                           key: jax.Array, *,
                           cfg: AdversarialConfig = AdversarialConfig(),
                           augment: Augment | None = None
                           ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step of Madry PGD adversarial training (state first so it composes
  with `lax.scan`).

  ``min_theta E max_{||delta|| <= eps} CE(f_theta(x + delta), y)``
  (Madry et al. 2018, Eq. 2.1): the batch is augmented (if ``augment``),
  attacked by `pgd_attack` with the model in eval mode, then one `train_step`
  (train mode) is taken on the adversarial batch.

  Args:
    state: the model's training state.
    batch: ``(images, labels)``; uint8 or float32 [0, 1] NHWC images.
    key: randomness (augmentation, the attack's uniform start).
    cfg: the attack settings.
    augment: optional per-sample augmentation ``augment(key, images)``,
      applied before the attack.

  Returns:
    The new state and ``{"loss", "accuracy"}`` on the adversarial batch.
  """
  cfg = cfg.resolved()
  images, labels = parallel.shard_batch(batch)
  images = as_float(images)
  augment_key, attack_key, step_key = jax.random.split(key, 3)
  if augment is not None:
    images = augment(augment_key, images)
  delta = pgd_attack(attack_key, state, images, labels, epsilon=cfg.epsilon,
                     step_size=cfg.step_size, steps=cfg.steps)
  adversarial = images + jax.lax.stop_gradient(delta)
  return train_step(state, (adversarial, labels), step_key)
