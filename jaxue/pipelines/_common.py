"""Plumbing shared by the pipelines: data, metadata, timing, tables, devices."""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import dataclasses
import datetime
import os
import platform
import sys
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxue import data as data_lib
from jaxue import parallel
from jaxue import runs

# Methods whose noise has one entry per class (released by label).
CLASSWISE = ("em-classwise", "pue-classwise", "lsp")


class Data(NamedTuple):
  """A loaded dataset: the (sub)set used for training, and the test set.

  Attributes:
    name: canonical dataset name.
    train: (uint8 images, int32 labels) of the stratified training subset.
    test: (images, labels) of the test set (first ``test_size`` images).
    indices: positions of ``train`` in the full training split.
    num_classes: label classes.
    image_shape: one image's (H, W, C).
    train_fingerprint: `runs.dataset_fingerprint` of ``train``.
    test_fingerprint: `runs.dataset_fingerprint` of ``test``.
  """
  name: str
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  indices: np.ndarray
  num_classes: int
  image_shape: tuple[int, int, int]
  train_fingerprint: dict[str, Any]
  test_fingerprint: dict[str, Any]


def load_data(dataset: str, data_dir: str | None, train_size: int | None,
              seed: int, test_size: int | None = None) -> Data:
  """Loads train and test, and takes a stratified training subset.

  The subset is drawn with ``key(seed)``: the same seed gives the same
  images. ``train_size`` None keeps the whole training set.
  """
  info = data_lib.get_info(dataset)
  x_train, y_train = data_lib.load(dataset, "train", data_dir)
  x_test, y_test = data_lib.load(dataset, "test", data_dir)
  if train_size is not None and train_size > len(y_train):
    raise ValueError(f"--train-size {train_size} exceeds the {len(y_train)} "
                     f"images of the {dataset} training set")
  if test_size is not None and test_size > len(y_test):
    raise ValueError(f"--test-size {test_size} exceeds the {len(y_test)} "
                     f"images of the {dataset} test set")
  indices = np.arange(len(y_train))
  if train_size is not None and train_size < len(y_train):
    indices = np.asarray(data_lib.stratified_subset(
        jax.random.key(seed), y_train, train_size,
        num_classes=info.num_classes))
  x_train, y_train = x_train[indices], y_train[indices]
  x_test, y_test = x_test[:test_size], y_test[:test_size]
  return Data(
      name=info.name, train=(x_train, y_train), test=(x_test, y_test),
      indices=indices, num_classes=info.num_classes,
      image_shape=tuple(x_train.shape[1:]),
      train_fingerprint=runs.dataset_fingerprint(info.name, "train",
                                                 x_train, y_train),
      test_fingerprint=runs.dataset_fingerprint(info.name, "test", x_test,
                                                y_test))


def epsilon_label(epsilon: float) -> str:
  """``8/255``-style label when epsilon is a multiple of 1/255."""
  scaled = epsilon * 255
  if abs(scaled - round(scaled)) < 1e-6:
    return f"{round(scaled)}/255"
  return f"{epsilon:g}"


def metadata(config: Any = None) -> dict[str, Any]:
  """What every results.json records so that anyone can rerun it."""
  from jaxue import __version__
  device = jax.devices()[0]
  meta = {
      "jaxue_version": __version__,
      "command": " ".join(["jaxue"] + sys.argv[1:]) if os.path.basename(
          sys.argv[0]) in ("jaxue", "__main__.py") else None,
      "backend": jax.default_backend(),
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "cpu_count": os.cpu_count(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }
  if config is not None:
    meta["config"] = runs.jsonable(dataclasses.asdict(config))
  return meta


class Timer:
  """Collects named wall times: ``with timer("craft"): ...``."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = round(
          self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
  """A plain monospace table."""
  cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def log(quiet: bool, *parts: Any) -> None:
  """Prints a progress line unless quiet (only on process 0)."""
  if not quiet and jax.process_index() == 0:
    print(*parts, flush=True)


def draw_mesh() -> jax.sharding.Mesh | None:
  """Certification's draw mesh (axis "samples") over every device of every
  process; None for a single device."""
  if jax.device_count() == 1:
    return None
  return jax.make_mesh((jax.device_count(),), ("samples",))


def device_scope(data_parallel: bool) -> contextlib.AbstractContextManager:
  """`jax.set_mesh` over every local device when ``data_parallel``; a no-op
  otherwise (an enclosing mesh stays in force)."""
  if not data_parallel:
    return contextlib.nullcontext()
  return jax.set_mesh(parallel.data_mesh(jax.local_devices()))
