"""One flag vocabulary for every pipeline.

A pipeline's config is a frozen dataclass whose fields are made with
`option` (or one of the shared options below, which define each common
concept's name, default and meaning once). The command line is generated
from those fields (``train_size`` -> ``--train-size``), so the same concept
has the same flag and default in every subcommand, and library users get the
same validation as the command line: `validate` runs in each config's
``__post_init__`` and raises a one-line `ValueError` naming the flag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import fractions
import math
from typing import Any

# Defaults of the shared concepts, defined once.
DATASET = "fashion_mnist"
MODEL = "small_cnn"
WIDTHS = (16, 32, 64)
SIGMA = 0.05
DRAWS = 1000
EPOCHS = 8
TRAIN_SIZE = 10_000
SEED = 0
SEEDS = 1
Q = 0.9
CONFIDENCE = 0.99


def flag(name: str) -> str:
  """The command-line spelling of a config field."""
  return "--" + name.replace("_", "-")


def option(default: Any, help: str, *, parse: Callable[[str], Any] | None = None,
           check: Callable[[Any], str | None] | None = None,
           choices: Sequence[str] | None = None, metavar: str | None = None,
           runtime: bool = False, cli: bool = True) -> Any:
  """A config field with its command-line meaning.

  Args:
    default: the default (one place for it).
    help: one line for ``--help``.
    parse: turns the flag's text into the value (default: the type of the
      default, or ``str``).
    check: returns an error message (without the flag name) for a bad
      value, or None.
    choices: allowed values (strings).
    metavar: the placeholder in ``--help``.
    runtime: how the run executes, not what it computes (devices, progress
      output); left out of the run's fingerprint, so a resume may change it.
    cli: whether the command line exposes the field.
  """
  return dataclasses.field(default=default, metadata={
      "help": help, "parse": parse, "check": check, "choices": choices,
      "metavar": metavar, "runtime": runtime, "cli": cli})


# ----------------------------------------------------------------- parsers
def parse_fraction(text: str) -> float:
  """``"8/255"``, ``"0.03"`` or ``"1e-2"`` as a float."""
  try:
    return float(fractions.Fraction(text.strip()))
  except (ValueError, ZeroDivisionError):
    raise ValueError(f"not a number or fraction: {text!r}") from None


def parse_size(text: str) -> int | None:
  """An image count, or ``all`` (None)."""
  if text.strip() == "all":
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"not an integer or 'all': {text!r}") from None


def parse_int_list(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise ValueError(f"not a comma-separated list of integers: {text!r}"
                     ) from None


def parse_float_list(text: str) -> tuple[float, ...]:
  try:
    return tuple(parse_fraction(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise ValueError(f"not a comma-separated list of numbers: {text!r}"
                     ) from None


def parse_name_list(text: str) -> tuple[str, ...]:
  return tuple(v.strip() for v in text.split(",") if v.strip())


# ------------------------------------------------------------------ checks
def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def positive_int(value: Any) -> str | None:
  return None if _is_int(value) and value >= 1 else (
      f"must be an integer >= 1, got {value!r}")


def nonnegative_int(value: Any) -> str | None:
  return None if _is_int(value) and value >= 0 else (
      f"must be an integer >= 0, got {value!r}")


def seed_value(value: Any) -> str | None:
  return None if _is_int(value) and 0 <= value < 2**31 else (
      f"must be an integer in [0, 2**31), got {value!r}")


def positive_float(value: Any) -> str | None:
  return None if _is_number(value) and value > 0 else (
      f"must be a finite number > 0, got {value!r}")


def nonnegative_float(value: Any) -> str | None:
  return None if _is_number(value) and value >= 0 else (
      f"must be a finite number >= 0, got {value!r}")


def open_unit(value: Any) -> str | None:
  return None if _is_number(value) and 0 < value < 1 else (
      f"must be a number in (0, 1), got {value!r}")


def unit_interval(value: Any) -> str | None:
  return None if _is_number(value) and 0 <= value <= 1 else (
      f"must be a number in [0, 1], got {value!r}")


def optional(check: Callable[[Any], str | None]
             ) -> Callable[[Any], str | None]:
  """``check`` for a value that may also be None (meaning "the default")."""
  return lambda value: None if value is None else check(value)


def each(check: Callable[[Any], str | None], *, nonempty: bool = True
         ) -> Callable[[Any], str | None]:
  """``check`` applied to every element of a tuple."""

  def check_all(values: Any) -> str | None:
    if not isinstance(values, tuple) or (nonempty and not values):
      return f"must be a non-empty list, got {values!r}"
    for v in values:
      problem = check(v)
      if problem:
        return problem.replace("must be", "entries must be")
    return None

  return check_all


def validate(config: Any) -> None:
  """Checks every field of a config dataclass; raises one-line ValueError."""
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    choices = field.metadata.get("choices")
    if choices is not None and value is not None:
      values = value if isinstance(value, tuple) else (value,)
      bad = [v for v in values if v not in choices]
      if bad:
        raise ValueError(f"{flag(field.name)}: unknown {bad[0]!r}; choose "
                         f"from {', '.join(choices)}")
    check = field.metadata.get("check")
    problem = check(value) if check else None
    if problem:
      raise ValueError(f"{flag(field.name)} {problem}")


def fingerprinted(config: Any) -> dict[str, Any]:
  """A config's fields that decide its results (runtime fields left out)."""
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if not f.metadata.get("runtime")}


# ---------------------------------------------------- the shared concepts
def dataset(default: str | None = DATASET, help: str = "dataset") -> Any:
  from jaxue import data  # Deferred: keeps `jaxue --help` light.
  return option(default, help, choices=tuple(data.DATASETS))


def data_dir() -> Any:
  return option(None, "folder with the dataset's raw files (default: the "
                "standard locations, then TFDS)", parse=str, metavar="DIR",
                check=None)


def train_size(default: int | None = TRAIN_SIZE) -> Any:
  return option(default, "stratified training subset ('all': the whole "
                "training set)", parse=parse_size, check=optional(positive_int),
                metavar="N|all")


def test_size(default: int | None = None) -> Any:
  return option(default, "use only the first N test images (default: all)",
                parse=int, check=optional(positive_int), metavar="N")


def model(default: str | None = MODEL, help: str = "architecture") -> Any:
  from jaxue import models
  return option(default, help, choices=tuple(models.MODELS))


def widths(default: tuple[int, ...] | None = WIDTHS) -> Any:
  return option(default, "channel widths per block (16,32,64 is CPU-sized; "
                "the published small CNN is 64,128,256)",
                parse=parse_int_list, check=optional(each(positive_int)),
                metavar="W,W,W")


def epsilon() -> Any:
  return option(None, "L-inf noise budget in [0, 1] units, e.g. 8/255 "
                "(default: the dataset's, 8/255 for colour images and "
                "32/255 for 28x28 grayscale)", parse=parse_fraction,
                check=optional(open_unit), metavar="EPS")


def sigma() -> Any:
  return option(SIGMA, "smoothing noise sigma of certification, and PUE's "
                "sigma_train (0.05 suits the small CNN; the paper's 0.25 is "
                "for ResNet-18)", parse=float, check=positive_float)


def draws(default: int = DRAWS) -> Any:
  return option(default, "Monte-Carlo draws N of the certificate (the "
                "published N is 1000)", parse=int, check=positive_int,
                metavar="N")


def seed() -> Any:
  return option(SEED, "random seed (all keys derive from it)", parse=int,
                check=seed_value)


def seeds() -> Any:
  return option(SEEDS, "victims trained per dataset (different seeds); "
                "accuracies are averaged", parse=int, check=positive_int)


def epochs(default: int = EPOCHS) -> Any:
  return option(default, "victim training epochs", parse=int,
                check=positive_int)


def q() -> Any:
  return option(Q, "quantile level q of the (q, eta) certificate",
                parse=float, check=open_unit)


def confidence() -> Any:
  return option(CONFIDENCE, "confidence c of the certificate", parse=float,
                check=open_unit)


def quiet() -> Any:
  return option(False, "no progress bars", runtime=True)


def resolve_epsilon(epsilon: float | None, dataset_name: str) -> float:
  """``--epsilon`` or the dataset's default budget."""
  from jaxue import data
  if epsilon is not None:
    return epsilon
  shape = data.get_info(dataset_name).image_shape
  return 32 / 255 if shape[-1] == 1 and shape[0] <= 28 else 8 / 255
