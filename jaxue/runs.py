"""Run directories: the one mechanism for files, resume and integrity.

Every long job (crafting, victims, certification, recovery, tables, the
quickstart) writes into a run directory::

    DIR/run.json              kind, config and its fingerprint, jaxue version
    DIR/<stage>/stage.json    the stage's own config (a cache key)
    DIR/<stage>/result.json   written last: the stage is done
    DIR/<stage>/ckpt/step_N/  kill-safe checkpoints (arrays.npz + meta.json)

Guarantees:

* **Config.** A run directory records its config on first use; opening it
  again with different settings raises `RunError` naming the differing
  settings (``overwrite=True`` starts afresh). Each stage is keyed by its
  own config, so a cached stage is never reused for other settings.
* **Kill safety.** Files are written to a temporary name in the same folder,
  flushed, fsynced and renamed (`os.replace` is atomic on POSIX). A checkpoint
  is a directory renamed into place after its files are durable; the previous
  checkpoint is deleted only after its successor is committed; the progress
  counter lives in the checkpoint's own ``meta.json``, so state and progress
  are committed together. A SIGKILL at any instant leaves the last good
  checkpoint, and resuming loses at most the work since it.
* **Integrity.** Array files carry the sha256 of their arrays, and models,
  releases and certification states record the dataset they were made from
  (name, split, shape, sha256 of the images). Loading verifies both; a
  corrupted file or one from another dataset raises `RunError` naming it.
* **Permissions.** Files get the mode the user's umask gives new files;
  temporary files are removed when a write fails.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import contextlib
import datetime
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import tempfile
from typing import Any
import zipfile

import jax
import numpy as np

PathLike = str | os.PathLike

RUN_FILE = "run.json"
STAGE_FILE = "stage.json"
RESULT_FILE = "result.json"
_META_KEY = "__jaxue_meta__"
_STEP_DIR = re.compile(r"^step_(\d{9})$")


class RunError(ValueError):
  """A problem with a run directory or one of its files, in one line."""


# ---------------------------------------------------------------- fault points
_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
  """Kills this process with SIGKILL at a named point, for fault tests.

  Inactive unless the environment variable ``JAXUE_KILL_AT`` is
  ``"NAME:K"``: then the K-th time (1-based) the point NAME is reached, the
  process kills itself, exactly as an out-of-memory killer or a pre-empted
  host would. Points: ``"write:before-rename"`` (a file is durable under its
  temporary name), ``"checkpoint:before-commit"`` (a checkpoint's files are
  durable, not yet renamed into place), ``"checkpoint:before-prune"`` (the new
  checkpoint is committed, the old one not yet deleted) and whatever points
  pipelines declare (e.g. ``"craft:round"``).
  """
  spec = os.environ.get("JAXUE_KILL_AT")
  if not spec:
    return
  target, _, count = spec.rpartition(":")
  if target != name:
    return
  _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
  if _FAULT_COUNTS[name] == int(count):
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------- atomic writes
def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _fsync_dir(path: pathlib.Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
  """Yields a temporary path next to ``path``; renames it into place when the
  block succeeds and removes it when the block fails.

  The file is fsynced before the rename and gets the permissions the user's
  umask gives new files (`tempfile` would leave it 0600).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=suffix + ".tmp")
  os.close(fd)
  tmp = pathlib.Path(tmp)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    fault_point("write:before-rename")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_json(path: PathLike, obj: Any) -> None:
  """Writes JSON atomically."""
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_text(path: PathLike, text: str) -> None:
  """Writes a text file atomically."""
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def read_json(path: PathLike) -> Any:
  """Reads JSON; a missing or malformed file raises one line naming it."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise RunError(f"{path} does not exist") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RunError(f"{path} is corrupt (not valid JSON: {e})") from None


# -------------------------------------------------------------------- hashes
def fingerprint(config: Mapping[str, Any]) -> str:
  """sha256 of a config's canonical JSON (sorted keys), in hex."""
  text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def sha256_arrays(arrays: Mapping[str, Any]) -> str:
  """sha256 over named arrays: names, dtypes, shapes and bytes, in name
  order."""
  digest = hashlib.sha256()
  for name in sorted(arrays):
    array = np.ascontiguousarray(np.asarray(arrays[name]))
    digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def dataset_fingerprint(name: str, split: str, images: np.ndarray,
                        labels: np.ndarray | None = None) -> dict[str, Any]:
  """What identifies the data a file was made from: name, split, image shape
  and the sha256 of the images (and labels)."""
  arrays = {"images": images}
  if labels is not None:
    arrays["labels"] = labels
  return {"name": name, "split": split,
          "shape": [int(s) for s in np.shape(images)],
          "sha256": sha256_arrays(arrays)}


def check_dataset(recorded: Mapping[str, Any] | None,
                  actual: Mapping[str, Any], what: str) -> None:
  """Raises `RunError` if ``what`` was made from other data than ``actual``."""
  if recorded is None:
    return
  if dict(recorded) != dict(actual):
    differs = [k for k in ("name", "split", "shape", "sha256")
               if recorded.get(k) != actual.get(k)]
    raise RunError(
        f"{what} was made from {recorded.get('name')}/{recorded.get('split')}"
        f" {recorded.get('shape')}, not from the data given here "
        f"({actual.get('name')}/{actual.get('split')} {actual.get('shape')};"
        f" differs in {', '.join(differs)})")


def jsonable(value: Any) -> Any:
  """A config value as JSON holds it: paths as strings, tuples as lists,
  numpy scalars as Python numbers."""
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


# --------------------------------------------------------------- array files
def save_arrays(path: PathLike, arrays: Mapping[str, Any], *,
                meta: Mapping[str, Any] | None = None,
                compress: bool = False) -> str:
  """Writes named arrays to an ``.npz`` atomically, with their sha256.

  Args:
    path: the file.
    arrays: name -> array.
    meta: JSON-able description stored inside the file (e.g. the dataset
      fingerprint); `load_arrays` returns it.
    compress: zip-deflate the arrays (releases; not checkpoints, where
      speed matters more).

  Returns:
    The sha256 of the arrays.
  """
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  if _META_KEY in arrays:
    raise ValueError(f"array name {_META_KEY!r} is reserved")
  digest = sha256_arrays(arrays)
  record = {"sha256": digest, "meta": jsonable(dict(meta or {}))}
  payload = dict(arrays)
  payload[_META_KEY] = np.frombuffer(json.dumps(record).encode(), np.uint8)
  with atomic_path(path, suffix=".npz") as tmp:
    with open(tmp, "wb") as f:
      (np.savez_compressed if compress else np.savez)(f, **payload)
  return digest


def load_arrays(path: PathLike) -> tuple[dict[str, np.ndarray],
                                         dict[str, Any]]:
  """Reads a file written by `save_arrays` and verifies its sha256.

  Returns:
    ``(arrays, meta)``.

  Raises:
    RunError: the file is missing, unreadable, or its arrays do not match
      the recorded sha256 (corruption or tampering).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise RunError(f"{path} does not exist")
  try:
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
    raise RunError(f"{path} is corrupt or not a jaxue array file ({e})"
                   ) from None
  if _META_KEY not in arrays:
    raise RunError(f"{path} has no integrity record (not written by jaxue)")
  try:
    record = json.loads(arrays.pop(_META_KEY).tobytes().decode())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RunError(f"{path} is corrupt (its integrity record: {e})") from None
  if sha256_arrays(arrays) != record.get("sha256"):
    raise RunError(f"{path} is corrupt: its arrays do not match the sha256 "
                   "recorded when it was written")
  return arrays, record.get("meta", {})


def _leaf_name(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path) or "."


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """A pytree's leaves as name -> numpy array (names from tree paths)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_leaf_name(p): np.asarray(jax.device_get(v)) for p, v in leaves}


def unflatten(like: Any, arrays: Mapping[str, np.ndarray],
              what: str = "checkpoint") -> Any:
  """The inverse of `flatten` into the structure of ``like``; shapes and
  dtypes must match."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  leaves = []
  for p, template in paths:
    name = _leaf_name(p)
    if name not in arrays:
      raise RunError(f"{what} lacks {name}: it was written for another "
                     "model or config")
    value = arrays[name]
    dtype = getattr(template, "dtype", None) or np.asarray(template).dtype
    if value.shape != tuple(np.shape(template)) or value.dtype != dtype:
      raise RunError(f"{what}: {name} is {value.dtype}{list(value.shape)}, "
                     f"expected {dtype}{list(np.shape(template))}")
    leaves.append(value)
  return jax.tree_util.tree_unflatten(treedef, leaves)


# --------------------------------------------------------------- checkpoints
class Checkpoints:
  """Kill-safe checkpoints of a pytree and its progress, in one directory.

  ``save(step, tree, meta)`` writes ``step_N/{arrays.npz, meta.json}`` under
  a temporary name, fsyncs, renames the folder into place and only then
  deletes older steps (keeping ``keep``). ``meta`` (e.g. the round counter and
  the history) is committed with the arrays it describes.
  """

  def __init__(self, directory: PathLike, *, keep: int = 1):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.directory = pathlib.Path(directory)
    self.keep = keep

  def steps(self) -> list[int]:
    """Committed steps, ascending."""
    if not self.directory.is_dir():
      return []
    found = (_STEP_DIR.match(p.name) for p in self.directory.iterdir())
    return sorted(int(m.group(1)) for m in found if m)

  def save(self, step: int, tree: Any, meta: Mapping[str, Any] | None = None
           ) -> None:
    """Commits ``tree`` and ``meta`` as checkpoint ``step``."""
    if not 0 <= step < 10**9:
      raise ValueError(f"checkpoint step must be in [0, 1e9), got {step}")
    self.directory.mkdir(parents=True, exist_ok=True)
    final = self.directory / f"step_{step:09d}"
    tmp = pathlib.Path(tempfile.mkdtemp(dir=self.directory,
                                        prefix=f".step_{step:09d}."))
    try:
      os.chmod(tmp, 0o777 & ~_umask())
      digest = save_arrays(tmp / "arrays.npz", flatten(tree))
      write_json(tmp / "meta.json", {"step": step, "sha256": digest,
                                     "meta": jsonable(dict(meta or {}))})
      _fsync_dir(tmp)
      fault_point("checkpoint:before-commit")
      if final.exists():  # A rerun of the same step: replace it.
        shutil.rmtree(final)
      os.rename(tmp, final)
      _fsync_dir(self.directory)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    fault_point("checkpoint:before-prune")
    for old in self.steps()[:-self.keep]:
      shutil.rmtree(self.directory / f"step_{old:09d}", ignore_errors=True)
    for stale in self.directory.glob(".step_*"):
      shutil.rmtree(stale, ignore_errors=True)

  def restore(self, like: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """The newest checkpoint as ``(step, tree, meta)``, or None if none.

    Raises:
      RunError: the newest checkpoint is corrupt or does not fit ``like``.
    """
    steps = self.steps()
    if not steps:
      return None
    folder = self.directory / f"step_{steps[-1]:09d}"
    record = read_json(folder / "meta.json")
    arrays, _ = load_arrays(folder / "arrays.npz")
    if record.get("sha256") != sha256_arrays(arrays):
      raise RunError(f"{folder}: arrays.npz does not match meta.json")
    return (int(record["step"]), unflatten(like, arrays, str(folder)),
            record.get("meta", {}))

  def clear(self) -> None:
    shutil.rmtree(self.directory, ignore_errors=True)


# -------------------------------------------------------------------- models
def save_model(path: PathLike, variables: Any, *, model: Mapping[str, Any],
               input_shape, dataset: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> None:
  """Saves a model's variables and how to rebuild it, with integrity data.

  Writes ``path/variables.npz`` (with the sha256 of the arrays) and then
  ``path/model.json`` (the `models.make_model` arguments, the input shape,
  the dataset fingerprint and ``extra``); model.json is written last, so a
  folder without it is an unfinished save.

  Args:
    path: checkpoint folder.
    variables: ``{"params": ..., "batch_stats": ...}``.
    model: `models.make_model` keyword arguments.
    input_shape: one image's (H, W, C).
    dataset: `dataset_fingerprint` of the training data it was made from.
    extra: any JSON-able description (method, epsilon, sigma, ...).
  """
  path = pathlib.Path(path)
  digest = save_arrays(path / "variables.npz", flatten(variables))
  write_json(path / "model.json", {
      "model": jsonable(dict(model)),
      "input_shape": [int(s) for s in input_shape],
      "dataset": jsonable(dict(dataset)) if dataset else None,
      "sha256": digest, "extra": jsonable(dict(extra or {}))})


def load_model(path: PathLike, *, dataset: Mapping[str, Any] | None = None):
  """Loads and verifies a checkpoint written by `save_model`.

  Args:
    path: checkpoint folder.
    dataset: if given, the fingerprint of the data the caller is about to
      use with the model; a model made from other data raises `RunError`.

  Returns:
    ``(model, variables, description)``: a `models.Model`, its variables and
    the saved ``model.json``.
  """
  from jaxue import models as models_lib  # Deferred: models imports flax.

  path = pathlib.Path(path)
  spec_path = path / "model.json"
  if not spec_path.exists():
    raise RunError(f"{path} is not a jaxue model checkpoint (no model.json)")
  description = read_json(spec_path)
  try:
    model = models_lib.make_model(**description["model"])
    shape = tuple(description["input_shape"])
  except (KeyError, TypeError, ValueError) as e:
    raise RunError(f"{spec_path} is not a jaxue model description ({e})"
                   ) from None
  arrays, _ = load_arrays(path / "variables.npz")
  if description.get("sha256") not in (None, sha256_arrays(arrays)):
    raise RunError(f"{path}/variables.npz does not match the sha256 in "
                   "model.json (the folder's files were mixed)")
  like = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
  variables = unflatten(like, arrays, f"{path}/variables.npz")
  if dataset is not None:
    check_dataset(description.get("dataset"), dataset, f"the model {path}")
  return model, variables, description


# ---------------------------------------------------------------------- runs
def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """The settings that differ, one phrase each. A setting that ``old`` does
  not record counts as None (an option added later, left at its default
  None, keeps earlier runs valid)."""
  keys = sorted(set(old) | set(new))
  return [f"{k} {json.dumps(new.get(k))} (the run has "
          f"{json.dumps(old.get(k))})"
          for k in keys if old.get(k) != new.get(k)]


class Stage:
  """One cached step of a run, keyed by its own config.

  A stage is done once `finish` has written ``result.json``; its files
  (arrays, models, checkpoints) live in ``stage.path``.
  """

  def __init__(self, path: pathlib.Path, config: Mapping[str, Any]):
    self.path = path
    self.config = jsonable(dict(config))
    path.mkdir(parents=True, exist_ok=True)
    stage_file = path / STAGE_FILE
    if stage_file.exists():
      saved = read_json(stage_file)
      diffs = _differences(saved.get("config", {}), self.config)
      if diffs:
        raise RunError(f"{path} was made with other settings: "
                       f"{'; '.join(diffs)}; use --overwrite or another "
                       "--out")
    else:
      write_json(stage_file, {"config": self.config,
                              "fingerprint": fingerprint(self.config)})

  @property
  def done(self) -> bool:
    return (self.path / RESULT_FILE).exists()

  def result(self) -> dict[str, Any]:
    return read_json(self.path / RESULT_FILE)

  def finish(self, result: Mapping[str, Any]) -> dict[str, Any]:
    """Marks the stage done with its result (JSON); returns the result."""
    result = jsonable(dict(result))
    write_json(self.path / RESULT_FILE, result)
    return result

  def checkpoints(self, *, keep: int = 1) -> Checkpoints:
    return Checkpoints(self.path / "ckpt", keep=keep)

  def clear_checkpoints(self) -> None:
    shutil.rmtree(self.path / "ckpt", ignore_errors=True)


class Run:
  """A run directory (see the module docstring).

  Args:
    workdir: the directory; created if missing.
    kind: the pipeline ("craft", "certify", ...).
    config: the run's settings (JSON-able; paths and tuples are converted).
    overwrite: delete an existing run in ``workdir`` first (only a folder
      that holds a jaxue run; anything else is never deleted).

  Raises:
    RunError: ``workdir`` holds a run of another kind or with other
      settings, holds files that are not a jaxue run, or is not writable.
  """

  def __init__(self, workdir: PathLike, kind: str, config: Mapping[str, Any],
               *, overwrite: bool = False):
    self.path = pathlib.Path(workdir)
    self.kind = kind
    self.config = jsonable(dict(config))
    run_file = self.path / RUN_FILE
    if self.path.exists() and not self.path.is_dir():
      raise RunError(f"{self.path} is a file where a run directory is needed")
    if run_file.exists() and overwrite:
      shutil.rmtree(self.path)
    elif self.path.is_dir() and not run_file.exists() and any(
        self.path.iterdir()):
      raise RunError(f"{self.path} is not empty and holds no jaxue run; "
                     "choose a new or empty directory")
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      if run_file.exists():
        self._check(read_json(run_file))
      else:
        from jaxue import __version__  # Deferred: jaxue imports runs.
        write_json(run_file, {
            "kind": kind, "config": self.config,
            "fingerprint": fingerprint(self.config),
            "jaxue_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc)
                       .isoformat(timespec="seconds")})
    except PermissionError as e:
      raise RunError(f"cannot write to {e.filename or self.path}: "
                     "permission denied") from None
    except OSError as e:
      raise RunError(f"cannot write to {self.path}: {e.strerror}") from None

  def _check(self, saved: Mapping[str, Any]) -> None:
    if saved.get("kind") != self.kind:
      raise RunError(f"{self.path} holds a {saved.get('kind')} run, not a "
                     f"{self.kind} run; choose another directory")
    diffs = _differences(saved.get("config", {}), self.config)
    if diffs:
      raise RunError(f"{self.path} holds a {self.kind} run with other "
                     f"settings: {'; '.join(diffs)}; rerun with --overwrite "
                     "to start afresh, or choose another --out")

  def stage(self, name: str, config: Mapping[str, Any] | None = None
            ) -> Stage:
    """The stage ``name`` (a sub-directory), keyed by ``config``."""
    return Stage(self.path / name, config or {})

  def write_json(self, name: str, obj: Any) -> pathlib.Path:
    write_json(self.path / name, jsonable(obj))
    return self.path / name


def read_run(workdir: PathLike) -> dict[str, Any]:
  """The ``run.json`` of a run directory (kind, config, fingerprint)."""
  path = pathlib.Path(workdir)
  if not (path / RUN_FILE).exists():
    raise RunError(f"{path} is not a jaxue run directory (no {RUN_FILE})")
  return read_json(path / RUN_FILE)

