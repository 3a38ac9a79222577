"""The ``jaxue`` command: argument parsing only.

Each subcommand is a thin parser over ``jaxue.pipelines.<name>.run(config,
workdir)``: its flags are generated from the fields of the pipeline's
``Config`` dataclass (`jaxue.pipelines.options`), so every subcommand spells
the same concept the same way, with the same default.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import errno
import importlib
import sys
import typing
from typing import Any

from jaxue.pipelines import options

SUBCOMMANDS = ("quickstart", "craft", "evaluate", "certify", "verify",
               "recover", "table")
_PIPELINE_MODULE = "jaxue.pipelines.{}"


def _pipeline(name: str):
  return importlib.import_module(_PIPELINE_MODULE.format(name))


def _summary(module) -> str:
  return (module.__doc__ or name_of(module)).strip().splitlines()[0]


def name_of(module) -> str:
  return module.__name__.rsplit(".", 1)[-1]


def _flag_type(field: dataclasses.Field, hints: dict[str, Any]):
  parse = field.metadata.get("parse")
  if parse is not None:
    return parse
  kind = hints.get(field.name)
  if kind in (int, float, str):
    return kind
  return str


def _argparse_type(parse):
  """Wraps a parser so that its ValueError becomes argparse's one line."""

  def convert(text: str):
    try:
      return parse(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None

  convert.__name__ = getattr(parse, "__name__", "value")
  return convert


def _metavar(hint: Any) -> str:
  """``N`` for counts, ``X`` for numbers, ``TEXT`` otherwise."""
  text = str(hint)
  if "tuple" in text:
    return "A,B,..."
  if "int" in text and "float" not in text:
    return "N"
  if "float" in text:
    return "X"
  return "TEXT"


def _default_text(value: Any) -> str:
  if value is None:
    return "auto"
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value) or "none"
  if isinstance(value, float):
    label = value * 255
    if value and abs(label - round(label)) < 1e-9 and value < 1:
      return f"{round(label)}/255"
    return f"{value:g}"
  return str(value)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type
                         ) -> None:
  """One flag per config field, with its default and meaning."""
  hints = typing.get_type_hints(config_cls)
  for field in dataclasses.fields(config_cls):
    meta = field.metadata
    if not meta.get("cli", True):
      continue
    default = field.default
    help_text = meta.get("help", "")
    if isinstance(default, bool):
      parser.add_argument(
          options.flag(field.name), dest=field.name, default=default,
          action=argparse.BooleanOptionalAction,
          help=help_text if "default" in help_text else
          f"{help_text} (default: {'on' if default else 'off'})")
      continue
    kwargs: dict[str, Any] = {
        "dest": field.name, "default": default,
        "type": _argparse_type(_flag_type(field, hints)),
        "help": help_text if "default" in help_text else
                f"{help_text} (default: {_default_text(default)})"}
    if meta.get("metavar"):
      kwargs["metavar"] = meta["metavar"]
    elif meta.get("choices") and not isinstance(default, tuple):
      kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "}"
    else:
      kwargs["metavar"] = _metavar(hints.get(field.name))
    parser.add_argument(options.flag(field.name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
  from jaxue import __version__
  parser = argparse.ArgumentParser(
      prog="jaxue", allow_abbrev=False, description="Unlearnable examples in JAX: craft "
      "protective noise, release protected data, train victims, certify "
      "(q, eta)-learnability, attack by weight recovery.")
  parser.add_argument("--version", action="version",
                      version=f"jaxue {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                              required=True)
  for name in SUBCOMMANDS:
    try:
      module = _pipeline(name)
    except ModuleNotFoundError as e:
      if e.name != _PIPELINE_MODULE.format(name):
        raise
      continue  # A pipeline not installed in this tree.
    p = sub.add_parser(
        name, help=_summary(module), description=module.__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    out_default = getattr(module, "DEFAULT_OUT", None)
    p.add_argument("--out", default=out_default,
                   required=out_default is None, metavar="DIR",
                   help="run directory: results, checkpoints, figures; "
                   "rerunning into it resumes"
                   + (f" (default: {out_default})" if out_default else ""))
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in --out and start afresh")
    p.add_argument("--cpu-devices", default="auto", metavar="N|auto",
                   type=_argparse_type(_cpu_devices),
                   help="on a CPU host, present the cores as N JAX devices "
                   "so that draws run concurrently (default: auto, one per "
                   "core; ignored if XLA_FLAGS sets a device count)")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error")
    add_config_arguments(p, module.Config)
  return parser


def _cpu_devices(text: str) -> int | None:
  if text == "auto":
    return None
  value = options.parse_size(text)
  problem = options.positive_int(value)
  if problem:
    raise ValueError(f"--cpu-devices {problem}")
  return value


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``jaxue ARGV``; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  module = _pipeline(args.command)
  values = {f.name: getattr(args, f.name)
            for f in dataclasses.fields(module.Config)
            if f.metadata.get("cli", True)}
  try:
    config = module.Config(**values)
    from jaxue import parallel
    parallel.request_cpu_devices(args.cpu_devices)
    module.run(config, args.out, overwrite=args.overwrite)
  except KeyboardInterrupt:
    print("interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    if args.debug or not _expected(e):
      raise
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"jaxue {args.command}: error: {message}", file=sys.stderr)
    return 2
  return 0


def _expected(error: Exception) -> bool:
  """Errors of input and environment (one line), not bugs (a traceback)."""
  if isinstance(error, (ValueError, FileNotFoundError, PermissionError,
                        NotADirectoryError, IsADirectoryError,
                        FileExistsError)):
    return True
  return isinstance(error, OSError) and error.errno in (
      errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)


def entry_point() -> None:
  """The console script."""
  sys.exit(main())
