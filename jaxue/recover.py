"""The weight-recovery attack on unlearnable examples.

Wang et al., "Provably Unlearnable Data Examples", NDSS 2025 (arXiv
2405.03316), recovery attack section: an adversary holding θ0 -- a model
trained on the protected (released) data -- and a small clean set (20% of
the clean training data) searches the parameter ball ‖θ − θ0‖₂ ≤ η for a
classifier with high clean accuracy. This measures empirically what the
certified (q, η)-learnability (`jaxue.certify`) bounds: how much accuracy
lies within distance η of θ0.

Two attacks:

* `recover`: projected SGD -- lr 0.01, momentum 0.9, cosine decay over the
  run, global-norm clipping 5, weight decay 5e-4 -- on the clean set, with
  the trainable parameters projected onto the ball after every step;
  batch-norm statistics are not projected and are updated in train mode as
  usual. `recovery_curve` runs it for a grid of η.
* `random_direction_recovery`: Gaussian directions over the trainable
  parameters scaled to norm exactly η; the best θ0 + d on a selection set
  (the clean recovery set) is kept and tested.

The reference code projects onto the sphere ‖θ − θ0‖ = η rather than the
ball (docs/design.md, "Deviations from the reference code");
``project="sphere"`` reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import math
import numbers
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxue import certify
from jaxue import data as data_lib
from jaxue import train
from jaxue.models import Model, Variables

ApplyFn = Callable[..., Any]
Dataset = tuple[np.ndarray, np.ndarray]

PROJECTIONS = ("ball", "sphere")
DEFAULT_EPOCHS = 10


# ----------------------------------------------------------------- geometry


def tree_distance(params: Any, params0: Any) -> jax.Array:
  """Global L2 norm ‖θ − θ0‖₂ over all leaves, in float32 (jittable)."""
  return optax.tree.norm(
      jax.tree.map(lambda p, p0: (p - p0).astype(jnp.float32), params,
                   params0))


def project_to_ball(params: Any, params0: Any, eta: float | jax.Array, *,
                    sphere: bool | jax.Array = False) -> Any:
  """Projects θ onto the L2 ball ‖θ − θ0‖₂ ≤ η (or its sphere).

  The projection of the recovery attack (Wang et al., NDSS 2025, recovery
  attack section), with the norm taken globally over every leaf of the
  trainable parameters. Pure and jittable; ``eta`` may be traced.

  * Ball (default): inside the ball θ is returned unchanged (bit for bit);
    outside, θ0 + η (θ − θ0) / ‖θ − θ0‖. ``eta = 0`` returns θ0.
  * Sphere (``sphere=True``, the reference code's behaviour): every θ ≠ θ0
    is rescaled to ‖θ − θ0‖ = η, moving points inside the ball outwards. At
    θ = θ0 the direction is undefined and θ0 is returned (no division by
    zero).

  Args:
    params: the pytree θ of floating-point arrays.
    params0: the centre θ0, same structure, shapes and dtypes.
    eta: the radius η >= 0.
    sphere: project onto the sphere instead of the ball (a Python bool or
      a traced boolean scalar).

  Returns:
    A pytree like ``params``.

  Raises:
    ValueError: for a concrete ``eta`` < 0 or NaN, or mismatched trees.
  """
  if isinstance(eta, numbers.Real) and not eta >= 0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  if jax.tree.structure(params) != jax.tree.structure(params0):
    raise ValueError("params and params0 have different tree structures")
  norm = tree_distance(params, params0)
  eta = jnp.asarray(eta, jnp.float32)
  move = jnp.where(sphere, norm > 0, norm > eta)
  # Guard the division: where no move happens the scale is never used.
  scale = eta / jnp.where(norm > 0, norm, 1.0)

  def leaf(p, p0):
    projected = p0 + (scale * (p - p0)).astype(p.dtype)
    return jnp.where(move, projected, p)

  return jax.tree.map(leaf, params, params0)


def random_direction(key: jax.Array, params: Any,
                     eta: float | jax.Array) -> Any:
  """A Gaussian direction over ``params`` scaled to global norm exactly η.

  The draw is `jaxue.certify.perturb_params`'s (one flat N(0, I) draw split
  over the leaves), normalised and multiplied by η, i.e. a uniformly random
  point on the sphere ‖d‖₂ = η.

  Args:
    key: a typed PRNG key.
    params: the pytree whose shapes and dtypes the direction takes.
    eta: the norm η >= 0 (may be traced).

  Returns:
    A pytree ``d`` like ``params`` with ‖d‖₂ = η (to float rounding).
  """
  if isinstance(eta, numbers.Real) and not eta >= 0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  zeros = jax.tree.map(jnp.zeros_like, params)
  xi = certify.perturb_params(key, zeros, 1.0)
  norm = optax.tree.norm(xi)
  scale = jnp.asarray(eta, jnp.float32) / jnp.where(norm > 0, norm, 1.0)
  return jax.tree.map(lambda x: (scale * x).astype(x.dtype), xi)


# ------------------------------------------------------------ validation


def _apply_fn(model_apply_or_model: Model | ApplyFn) -> ApplyFn:
  if isinstance(model_apply_or_model, Model):
    return model_apply_or_model.apply
  if callable(model_apply_or_model):
    return model_apply_or_model
  raise ValueError("expected a jaxue.models.Model or an apply function "
                   "apply(variables, images, train) -> (logits, stats), got "
                   f"{type(model_apply_or_model).__name__}")


def _check_eta(eta: Any, project: str = "ball") -> float:
  if project not in PROJECTIONS:
    raise ValueError(
        f"unknown projection {project!r}; choose one of {PROJECTIONS}")
  if (isinstance(eta, bool) or not isinstance(eta, numbers.Real)
      or not eta >= 0):
    raise ValueError(f"eta must be a number >= 0, got {eta!r}")
  if math.isinf(eta) and project == "sphere":
    raise ValueError("eta = inf needs project='ball' (no sphere at infinity)")
  return float(eta)


def _check_variables(variables: Any) -> None:
  if (not isinstance(variables, dict) or "params" not in variables
      or "batch_stats" not in variables):
    raise ValueError("variables must be a dict with 'params' and "
                     "'batch_stats' entries (jaxue.models convention)")


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_set(name: str, dataset: Any) -> Dataset:
  try:
    images, labels = dataset
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be an (images, labels) pair") from e
  images, labels = np.asarray(images), np.asarray(labels)
  data_lib.check_dataset(images, labels)
  if images.shape[0] < 1:
    raise ValueError(f"{name} is empty")
  return images, labels.astype(np.int32)


# -------------------------------------------------------- projected SGD


@functools.partial(jax.jit, static_argnames=("batch_size",),
                   donate_argnums=(0,))
def _recover_epoch(state: train.TrainState, params0: Any, eta: jax.Array,
                   sphere: jax.Array, images: jax.Array, labels: jax.Array,
                   key: jax.Array, *, batch_size: int
                   ) -> tuple[train.TrainState, dict[str, jax.Array]]:
  """One shuffled epoch of `train.train_step` + projection, as a scan.

  η and the ball/sphere switch are traced: one compilation serves every
  radius and both projections.
  """
  perm_key, step_key = jax.random.split(key)
  batches = train.epoch_indices(perm_key, images.shape[0], batch_size)

  def body(state, index_and_batch):
    i, idx = index_and_batch
    state, metrics = train.train_step(state, (images[idx], labels[idx]),
                                      jax.random.fold_in(step_key, i))
    params = project_to_ball(state.params, params0, eta, sphere=sphere)
    metrics["distance"] = tree_distance(params, params0)
    return state.replace(params=params), metrics

  state, metrics = jax.lax.scan(
      body, state, (jnp.arange(batches.shape[0]), batches))
  return state, {"loss": metrics["loss"].mean(),
                 "accuracy": metrics["accuracy"].mean(),
                 "distance": metrics["distance"][-1],
                 "max_distance": metrics["distance"].max()}


def recover(key: jax.Array, model_apply_or_model: Model | ApplyFn,
            variables0: Variables, images: np.ndarray, labels: np.ndarray, *,
            eta: float, epochs: int = DEFAULT_EPOCHS, batch_size: int = 128,
            learning_rate: float = 0.01, momentum: float = 0.9,
            weight_decay: float = 5e-4, clip_norm: float | None = 5.0,
            project: str = "ball",
            test: Dataset | None = None,
            progress: bool | str = False
            ) -> tuple[Variables, dict[str, list[float]]]:
  """Projected-SGD weight recovery from θ0 within ‖θ − θ0‖₂ ≤ η.

  Wang et al., NDSS 2025, recovery attack section: fine-tune θ0 (trained on
  the protected data) on a small clean set with SGD (momentum, cosine decay
  of the learning rate to zero over the run, global-norm gradient clipping,
  weight decay added to the gradient as in PyTorch), projecting the
  trainable parameters onto the ball after every step. Batch-norm statistics
  are updated in train mode and not projected. Each epoch is one jitted
  `lax.scan` of `train.train_step` followed by `project_to_ball`; η is traced,
  so a grid of η compiles once.

  Args:
    key: randomness for shuffling (one key per epoch via ``fold_in``).
    model_apply_or_model: a `jaxue.models.Model` or its ``apply`` function.
    variables0: θ0 as ``{"params", "batch_stats"}``; not modified.
    images: uint8 NHWC clean images (the recovery set).
    labels: integer labels.
    eta: the radius η >= 0 (``math.inf`` in ball mode: unconstrained
      fine-tuning).
    epochs: passes over the recovery set (default 10); the tail that does
      not fill a batch is dropped, a different one each epoch.
    batch_size: SGD batch size (default 128, as for victims).
    learning_rate: initial learning rate (0.01), cosine-decayed to zero.
    momentum: heavy-ball momentum (0.9).
    weight_decay: L2 coefficient (5e-4, as in the rest of jaxue; it pulls
      towards 0, not θ0, and the projection still bounds the distance).
    clip_norm: global-norm gradient clipping (5.0), or None.
    project: ``"ball"`` (‖θ − θ0‖ ≤ η) or ``"sphere"`` (‖θ − θ0‖ = η, the
      reference code's quirk).
    test: optional clean ``(images, labels)`` evaluated after every epoch.
    progress: show a tqdm bar over epochs; a string is its description.

  Returns:
    ``(variables, history)``: the recovered ``{"params", "batch_stats"}``
    and per-epoch lists ``"train_loss"``, ``"train_accuracy"``,
    ``"distance"`` (‖θ − θ0‖ at the end of the epoch), ``"max_distance"``
    (largest over the epoch's steps), ``"test_accuracy"`` (with ``test``)
    and ``"seconds"``.

  Raises:
    ValueError: eta < 0, unknown ``project``, non-uint8 images, labels not
      matching the images, fewer images than ``batch_size``, bad variables.
  """
  eta = _check_eta(eta, project)
  epochs = _check_int("epochs", epochs)
  batch_size = _check_int("batch_size", batch_size)
  apply_fn = _apply_fn(model_apply_or_model)
  _check_variables(variables0)
  images, labels = _check_set("the recovery set", (images, labels))
  if isinstance(model_apply_or_model, Model):
    data_lib.check_dataset(images, labels,
                           num_classes=model_apply_or_model.num_classes)
  if test is not None:
    test = _check_set("the test set", test)
  n = images.shape[0]
  if n < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} recovery "
                     "examples")
  total_steps = epochs * (n // batch_size)
  tx = train.cosine_optimizer(
      total_steps, float(learning_rate), momentum=float(momentum),
      weight_decay=float(weight_decay),
      clip_norm=None if clip_norm is None else float(clip_norm))
  # Copies: the state is donated to each epoch, θ0 must survive.
  params0 = jax.tree.map(jnp.asarray, variables0["params"])
  start = jax.tree.map(jnp.array, variables0)
  state = train.TrainState(step=jnp.zeros((), jnp.int32),
                           params=start["params"],
                           batch_stats=start["batch_stats"],
                           opt_state=tx.init(start["params"]),
                           apply_fn=apply_fn, tx=tx)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  eta_arr = jnp.float32(eta)
  sphere = jnp.bool_(project == "sphere")
  history = {"train_loss": [], "train_accuracy": [], "distance": [],
             "max_distance": [], "test_accuracy": [], "seconds": []}
  desc = progress if isinstance(progress, str) else f"recover eta={eta:g}"
  bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
  for epoch in bar:
    t0 = time.perf_counter()
    state, metrics = _recover_epoch(
        state, params0, eta_arr, sphere, x, y,
        jax.random.fold_in(key, epoch), batch_size=batch_size)
    history["train_loss"].append(float(metrics["loss"]))
    history["train_accuracy"].append(float(metrics["accuracy"]))
    history["distance"].append(float(metrics["distance"]))
    history["max_distance"].append(float(metrics["max_distance"]))
    if test is not None:
      history["test_accuracy"].append(
          train.evaluate(apply_fn, state.variables, *test))
    history["seconds"].append(time.perf_counter() - t0)
    bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}",
                    dist=f"{history['distance'][-1]:.3g}")
  if test is None:
    del history["test_accuracy"]
  return state.variables, history


def recovery_curve(key: jax.Array, model: Model | ApplyFn,
                   variables0: Variables, recovery_set: Dataset,
                   test_set: Dataset, *, etas: Sequence[float],
                   progress: bool = True, **kwargs: Any
                   ) -> list[tuple[float, float]]:
  """Clean test accuracy of `recover` against the radius η.

  Wang et al., NDSS 2025, recovery attack section (accuracy against η). All
  η share ``key`` on purpose (common random numbers: the same shuffles), so
  differences along the curve come from η alone.

  Args:
    key: randomness passed to every `recover` run.
    model: a `jaxue.models.Model` or its ``apply`` function.
    variables0: θ0 as ``{"params", "batch_stats"}``.
    recovery_set: clean uint8 ``(images, labels)`` to fine-tune on.
    test_set: clean uint8 ``(images, labels)`` for the accuracy.
    etas: the radii (each >= 0).
    progress: show a tqdm bar over η.
    **kwargs: passed to `recover` (epochs, batch_size, project, ...).

  Returns:
    ``[(eta, test_accuracy), ...]`` in the order of ``etas``.
  """
  etas = list(etas)
  if not etas:
    raise ValueError("etas is empty")
  project = kwargs.get("project", "ball")
  for eta in etas:
    _check_eta(eta, project)
  recovery_set = _check_set("the recovery set", recovery_set)
  test_set = _check_set("the test set", test_set)
  apply_fn = _apply_fn(model)
  curve = []
  bar = tqdm(etas, desc="recovery curve", disable=not progress, leave=False)
  for eta in bar:
    variables, _ = recover(key, model, variables0, *recovery_set, eta=eta,
                           **kwargs)
    accuracy = train.evaluate(apply_fn, variables, *test_set)
    curve.append((float(eta), accuracy))
    bar.set_postfix(eta=f"{eta:g}", acc=f"{accuracy:.3f}")
  return curve


# ------------------------------------------------------ random directions


@functools.partial(jax.jit,
                   static_argnames=("apply_fn", "num_directions", "chunk",
                                    "batch_size"))
def _direction_scores(key: jax.Array, eta: jax.Array, variables: Variables,
                      images: jax.Array, labels: jax.Array, *,
                      apply_fn: ApplyFn, num_directions: int, chunk: int,
                      batch_size: int
                      ) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
  """Scores every θ0 + d_i with `lax.map`; returns the correct counts, the
  norms ‖d_i‖, the best index (first on ties) and its parameters."""
  params0 = variables["params"]

  def shifted(i):
    d = random_direction(jax.random.fold_in(key, i), params0, eta)
    return jax.tree.map(jnp.add, params0, d), optax.tree.norm(d)

  def one(i):
    params, norm = shifted(i)
    correct = train.count_correct(
        apply_fn, {**variables, "params": params}, images, labels,
        batch_size=batch_size)
    return correct, norm

  correct, norms = jax.lax.map(one, jnp.arange(num_directions),
                               batch_size=chunk)
  best = jnp.argmax(correct)
  return correct, norms, best, shifted(best)[0]


def random_direction_recovery(key: jax.Array, model: Model | ApplyFn,
                              variables0: Variables, selection_set: Dataset,
                              test_set: Dataset, *, eta: float,
                              num_directions: int = 64,
                              chunk_size: int | None = None,
                              batch_size: int = 1000) -> dict[str, Any]:
  """The random variant of the recovery attack: best of many directions.

  Wang et al., NDSS 2025, recovery attack section: draw Gaussian directions
  d_i over the trainable parameters, each scaled to ‖d_i‖₂ = η exactly
  (`random_direction`, direction i from ``jax.random.fold_in(key, i)``),
  score θ0 + d_i in eval mode (batch-norm running statistics of θ0, not
  perturbed) by its exact accuracy on the selection set (the clean recovery
  set), keep the best (lowest index on ties) and report its clean test
  accuracy. Directions are evaluated with `lax.map` in chunks.

  Args:
    key: randomness of the directions.
    model: a `jaxue.models.Model` or its ``apply`` function.
    variables0: θ0 as ``{"params", "batch_stats"}``.
    selection_set: clean uint8 ``(images, labels)`` used to pick the best.
    test_set: clean uint8 ``(images, labels)`` for the reported accuracy.
    eta: the norm η >= 0 of every direction.
    num_directions: how many directions (default 64).
    chunk_size: directions vmapped together; default
      `jaxue.certify.default_chunk_size()` (1 on CPU, 16 on accelerators).
    batch_size: images per forward pass.

  Returns:
    ``{"eta", "num_directions", "best_index", "selection_accuracy" (of the
    best), "selection_accuracies" (all, float64 array), "direction_norms"
    (float array), "test_accuracy" (of the best), "variables" (the best
    θ0 + d)}``.
  """
  eta = _check_eta(eta)
  if math.isinf(eta):
    raise ValueError("eta must be finite for random directions")
  num_directions = _check_int("num_directions", num_directions)
  batch_size = _check_int("batch_size", batch_size)
  chunk = _check_int("chunk_size", certify.default_chunk_size()
                     if chunk_size is None else chunk_size)
  chunk = min(chunk, num_directions)
  apply_fn = _apply_fn(model)
  _check_variables(variables0)
  x_sel, y_sel = _check_set("the selection set", selection_set)
  test_set = _check_set("the test set", test_set)
  correct, norms, best, best_params = _direction_scores(
      key, jnp.float32(eta), variables0, jnp.asarray(x_sel),
      jnp.asarray(y_sel), apply_fn=apply_fn, num_directions=num_directions,
      chunk=chunk, batch_size=min(batch_size, x_sel.shape[0]))
  accuracies = np.asarray(correct, np.int64) / float(x_sel.shape[0])
  best = int(best)
  variables = {**variables0, "params": best_params}
  return {"eta": eta, "num_directions": num_directions, "best_index": best,
          "selection_accuracy": float(accuracies[best]),
          "selection_accuracies": accuracies,
          "direction_norms": np.asarray(norms),
          "test_accuracy": train.evaluate(apply_fn, variables, *test_set),
          "variables": variables}
