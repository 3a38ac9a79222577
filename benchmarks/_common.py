"""Flags, metadata and errors shared by the benchmark scripts.

The scripts run by path (``python benchmarks/benchmark.py``), so they import
this module as a sibling and never the ``experiments`` package.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import datetime
import functools
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from typing import Any

import jax

from jaxue import parallel

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CPU_WIDTHS = (16, 32, 64)


class UsageError(ValueError):
  """A bad flag value; reported as one line, no traceback."""


def positive_int(text: str) -> int:
  """An integer >= 1 (argparse type)."""
  try:
    value = int(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from e
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def widths_arg(text: str) -> tuple[int, ...]:
  """Comma-separated positive layer widths, e.g. ``16,32,64``."""
  try:
    widths = tuple(int(w) for w in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(
        f"widths must be comma-separated integers, got {text!r}") from e
  if not widths or min(widths) < 1:
    raise argparse.ArgumentTypeError(f"bad widths {text!r}")
  return widths


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
  default backend; None for a single device."""
  if jax.device_count() == 1:
    return None
  return jax.make_mesh((jax.device_count(),), ("samples",))


def cli(main: Callable[[Sequence[str] | None], Any]
        ) -> Callable[[Sequence[str] | None], Any]:
  """Turns expected failures (bad flags, an --out that is a file) into one
  line on stderr and exit status 2, instead of a traceback."""

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
      print("interrupted", file=sys.stderr)
      raise SystemExit(130) from None

  return wrapper


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
  """A plain monospace table (also returned as text)."""
  cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  text = "\n".join(lines)
  print(text)
  return text


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
                            "benchmarks"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    return commit + ("-dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def command_line(script: str, argv: Sequence[str] | None) -> str:
  """The command that reruns this invocation from the repository root."""
  path = pathlib.Path(script).resolve()
  try:
    path = path.relative_to(REPO)
  except ValueError:
    pass
  argv = sys.argv[1:] if argv is None else argv
  return " ".join(["python", shlex.quote(str(path))]
                  + [shlex.quote(a) for a in argv])


def jsonable(value: Any) -> Any:
  """An argparse value as JSON can hold it: Paths as strings, tuples as
  lists (recursively)."""
  if isinstance(value, pathlib.Path):
    return str(value)
  if isinstance(value, (tuple, list)):
    return [jsonable(v) for v in value]
  return value


def metadata(args: argparse.Namespace, script: str,
             argv: Sequence[str] | None) -> dict[str, Any]:
  """What every results.json records so anyone can rerun it."""
  device = jax.devices()[0]
  return {
      "command": command_line(script, argv),
      "commit": git_commit(),
      "backend": jax.default_backend(),
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "config": {k: jsonable(v) for k, v in vars(args).items()},
  }
