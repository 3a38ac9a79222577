"""Checkpoints of models and crafting runs (orbax), and atomic file writes.

A model checkpoint is a directory holding the state's arrays (written by
orbax, which writes to a temporary directory and renames it, so a crash
never leaves a half-written checkpoint) and ``model.json`` describing how
to rebuild the model, so that certification and recovery can run later from
files alone.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxue import models as models_lib
from jaxue import train as train_lib

PathLike = str | os.PathLike


def write_json(path: PathLike, obj: Any) -> None:
  """Writes JSON atomically (temporary file in the same folder + rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                   suffix=".tmp") as f:
    json.dump(obj, f, indent=2, sort_keys=False)
    f.write("\n")
  os.replace(f.name, path)


def save_npz(path: PathLike, **arrays: np.ndarray) -> None:
  """Writes a compressed .npz atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path.parent, delete=False,
                                   suffix=".npz") as f:
    np.savez_compressed(f, **arrays)
  os.replace(f.name, path)


def _arrays(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)


def save_pytree(path: PathLike, tree: Any) -> None:
  """Saves a pytree of arrays to ``path`` (replacing an older one)."""
  path = pathlib.Path(path).absolute()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, _arrays(tree), force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()


def restore_pytree(path: PathLike, like: Any) -> Any:
  """Restores a pytree saved by `save_pytree` into the structure of
  ``like``."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint at {path}")
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(path, _arrays(like))
  finally:
    checkpointer.close()


def save_model(path: PathLike, state: train_lib.TrainState, *,
               model: dict[str, Any], input_shape, extra: dict | None = None
               ) -> None:
  """Saves a model's variables and how to rebuild it.

  Args:
    path: checkpoint directory.
    state: the trained state (only parameters and batch statistics are
      kept: enough to evaluate, certify and fine-tune).
    model: `models.make_model` keyword arguments, e.g.
      ``{"name": "small_cnn", "num_classes": 10, "widths": [16, 32, 64]}``.
    input_shape: one image's (H, W, C).
    extra: any JSON-able description (dataset, method, epsilon, ...).
  """
  path = pathlib.Path(path)
  save_pytree(path / "variables", state.variables)
  write_json(path / "model.json", {"model": dict(model),
                                   "input_shape": list(input_shape),
                                   "extra": extra or {}})


def load_model(path: PathLike
               ) -> tuple[models_lib.Model, dict[str, Any], dict[str, Any]]:
  """Loads a checkpoint written by `save_model`.

  Returns:
    ``(model, variables, description)`` where description is the saved
    ``model.json``.
  """
  path = pathlib.Path(path)
  spec_path = path / "model.json"
  if not spec_path.exists():
    raise FileNotFoundError(
        f"{path} is not a jaxue model checkpoint (no model.json); write one "
        "with jaxue.checkpoint.save_model or experiments.craft/evaluate")
  try:
    description = json.loads(spec_path.read_text())
    model = models_lib.make_model(**description["model"])
    shape = tuple(description["input_shape"])
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(
        f"{spec_path} is not a jaxue model description (expected JSON with "
        f"'model' and 'input_shape', as save_model writes): {e!r}") from None
  like = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
  like = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like)
  variables = restore_pytree(path / "variables", like)
  restored = jax.tree.map(np.shape, variables)
  if restored != jax.tree.map(np.shape, like):
    raise ValueError(
        f"{path}: the saved variables do not match the model in "
        f"model.json ({description['model']}, input {shape})")
  return model, variables, description


def remove(path: PathLike) -> None:
  """Deletes a checkpoint directory if present."""
  shutil.rmtree(path, ignore_errors=True)
