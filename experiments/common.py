"""Shared plumbing of the experiment scripts: flags, metadata, errors, data."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import contextlib
import datetime
import fractions
import functools
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxue import data as data_lib
from jaxue import parallel

REPO = pathlib.Path(__file__).resolve().parent.parent
CPU_WIDTHS = (16, 32, 64)
# Methods whose noise has one entry per class (`noise.release` indexes it by
# label).
CLASSWISE = ("em-classwise", "pue-classwise", "lsp")


def noise_mode(method: str) -> str:
  """The ``mode`` of a method's noise (`noise.release`'s argument)."""
  return "classwise" if method in CLASSWISE else "samplewise"


class UsageError(ValueError):
  """A bad flag value; reported as one line, no traceback."""


def parse_fraction(text: str) -> float:
  """Parses ``"8/255"``, ``"0.03"`` or ``"1e-2"`` into a float."""
  try:
    value = float(fractions.Fraction(text.strip()))
  except (ValueError, ZeroDivisionError) as e:
    raise argparse.ArgumentTypeError(
        f"not a number or fraction: {text!r}") from e
  return value


def epsilon_label(epsilon: float) -> str:
  """8/255-style label when epsilon is a multiple of 1/255."""
  scaled = epsilon * 255
  if abs(scaled - round(scaled)) < 1e-6:
    return f"{round(scaled)}/255"
  return f"{epsilon:g}"


def _int_at_least(text: str, minimum: int) -> int:
  try:
    value = int(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from e
  if value < minimum:
    raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
  return value


def positive_int(text: str) -> int:
  return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
  return _int_at_least(text, 0)


def positive_float(text: str) -> float:
  """A finite number > 0 (learning rates, sigma)."""
  try:
    value = float(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
  if not (np.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(
        f"must be a finite number > 0, got {text!r}")
  return value


def float_list(text: str) -> tuple[float, ...]:
  """Comma-separated finite numbers; ``""`` gives an empty tuple."""
  try:
    values = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError as e:
    raise argparse.ArgumentTypeError(
        f"not a comma-separated list of numbers: {text!r}") from e
  if not all(np.isfinite(v) for v in values):
    raise argparse.ArgumentTypeError(f"numbers must be finite, got {text!r}")
  return values


def etas_arg(text: str) -> tuple[float, ...]:
  """A non-empty comma-separated list of radii eta >= 0 (finite)."""
  etas = float_list(text)
  if not etas or min(etas) < 0:
    raise argparse.ArgumentTypeError(
        f"etas must be finite numbers >= 0, got {text!r}")
  return etas


def widths_arg(text: str) -> tuple[int, ...]:
  try:
    widths = tuple(int(w) for w in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(
        f"widths must be comma-separated integers, got {text!r}") from e
  if not widths or min(widths) < 1:
    raise argparse.ArgumentTypeError(f"bad widths {text!r}")
  return widths


def git_commit() -> str:
  """The jaxue commit (with ``-dirty`` if the tree has local changes).

  A copy of the tree without ``.git`` (e.g. on a remote accelerator) can
  pass the commit in the ``JAXUE_COMMIT`` environment variable.
  """
  if os.environ.get("JAXUE_COMMIT"):
    return os.environ["JAXUE_COMMIT"]
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=True
                            ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "jaxue",
                            "experiments"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    return commit + ("-dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def metadata(args: argparse.Namespace | None = None) -> dict[str, Any]:
  """What every results.json records so anyone can re-run it."""
  device = jax.devices()[0]
  return {
      "command": "python -m " + " ".join(
          [_module_name()] + [shlex.quote(a) for a in sys.argv[1:]]),
      "commit": git_commit(),
      "backend": jax.default_backend(),
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "config": {k: jsonable(v) for k, v in vars(args).items()}
      if args is not None else {},
  }


def _module_name() -> str:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name:
    return spec.name
  return sys.argv[0]


def jsonable(value: Any) -> Any:
  """An argparse value as JSON can hold it: Paths as strings, tuples as
  lists (recursively)."""
  if isinstance(value, pathlib.Path):
    return str(value)
  if isinstance(value, (tuple, list)):
    return [jsonable(v) for v in value]
  return value


def cli(main: Callable[[Sequence[str] | None], Any]
        ) -> Callable[[Sequence[str] | None], Any]:
  """Turns expected failures (bad flags, missing data) into one line on
  stderr and exit status 2, instead of a traceback."""

  @functools.wraps(main)
  def wrapper(argv: Sequence[str] | None = None) -> Any:
    try:
      return main(argv)
    except (FileExistsError, NotADirectoryError) as e:
      print(f"error: {e.filename} is a file where a folder is needed "
            "(check --out)", file=sys.stderr)
      raise SystemExit(2) from None
    except (UsageError, ValueError, FileNotFoundError) as e:
      message = str(e).strip().replace("\n", " ")
      print(f"error: {message}", file=sys.stderr)
      raise SystemExit(2) from None
    except KeyboardInterrupt:
      print("interrupted; rerun the same command to resume where "
            "checkpoints exist", file=sys.stderr)
      raise SystemExit(130) from None

  return wrapper


def add_data_parallel_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--data-parallel", action="store_true",
      help="split every training and crafting batch over all devices of "
      "this host (jaxue.parallel; equal to one device's run up to float "
      "rounding)")


def cpu_devices_arg(text: str) -> int | None:
  """``auto`` (one CPU device per available core) or a positive integer."""
  return None if text == "auto" else positive_int(text)


def add_cpu_devices_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--cpu-devices", type=cpu_devices_arg, default=None, metavar="N|auto",
      help="on a CPU host, present the cores as N JAX devices so that "
      "certification's draws run concurrently, one shard per device "
      "(default auto: one per available core; same accuracies; "
      "jaxue.parallel.request_cpu_devices). Ignored when XLA_FLAGS sets "
      "--xla_force_host_platform_device_count or JAX has already started")


def request_cpu_devices(args: argparse.Namespace) -> None:
  """Applies ``--cpu-devices``; call before anything runs a JAX op."""
  parallel.request_cpu_devices(getattr(args, "cpu_devices", None))


def draw_mesh() -> jax.sharding.Mesh | None:
  """Certification's draw mesh (axis "samples") over every device of the
  default backend, every process included; None for a single device."""
  if jax.device_count() == 1:
    return None
  return jax.make_mesh((jax.device_count(),), ("samples",))


def device_scope(args: argparse.Namespace
                 ) -> contextlib.AbstractContextManager:
  """`jax.set_mesh` over every local device with ``--data-parallel``; a
  no-op otherwise (an enclosing mesh, e.g. the table's, stays in force)."""
  if not getattr(args, "data_parallel", False):
    return contextlib.nullcontext()
  mesh = parallel.data_mesh(jax.local_devices())
  print(f"data-parallel over {mesh.size} {jax.default_backend()} device(s)")
  return jax.set_mesh(mesh)


def load_data(dataset: str, data_dir: str | None, train_size: int | None,
              seed: int) -> dict[str, Any]:
  """Loads train/test and takes a stratified training subset.

  Returns:
    ``{"train": (x, y), "test": (x, y), "indices", "num_classes",
    "image_shape", "name"}``.
  """
  info = data_lib.get_info(dataset)
  x_train, y_train = data_lib.load(dataset, "train", data_dir)
  x_test, y_test = data_lib.load(dataset, "test", data_dir)
  indices = np.arange(len(y_train))
  if train_size is not None and train_size > len(y_train):
    raise UsageError(f"--train-size {train_size} exceeds the {len(y_train)} "
                     f"images of the {dataset} training set")
  if train_size is not None and train_size < len(y_train):
    indices = data_lib.stratified_subset(
        jax.random.key(seed), y_train, train_size,
        num_classes=info.num_classes)
  return {"train": (x_train[indices], y_train[indices]),
          "test": (x_test, y_test), "indices": indices,
          "num_classes": info.num_classes,
          "image_shape": x_train.shape[1:], "name": info.name}


class Timer:
  """Collects named wall times: ``with timer("craft"): ...``."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  def __call__(self, name: str):
    timer = self

    class _Section:

      def __enter__(self):
        self.start = time.perf_counter()

      def __exit__(self, *exc):
        timer.seconds[name] = round(
            timer.seconds.get(name, 0.0) + time.perf_counter() - self.start, 2)

    return _Section()


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
  """A plain monospace table (also returned as text)."""
  cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  text = "\n".join(lines)
  print(text)
  return text
