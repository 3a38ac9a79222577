"""Train victims on a release (or clean data) and measure their accuracy.

    jaxue evaluate --release runs/em-sw --out runs/em-sw-eval
    jaxue evaluate --clean --train-size 10000 --out runs/clean
    jaxue evaluate --release runs/rem --adversarial --adv-radius 8/255 \\
        --out runs/rem-adv

``--release`` takes a `jaxue craft` run directory (or its ``release.npz``).
The release names the dataset and the positions of its images in the
training set; the clean images there must match the fingerprint the release
recorded (another ``--data-dir`` holding other images is refused), and a
``--dataset``, ``--epsilon`` or ``--train-size`` that contradicts the
release is refused. ``--model`` / ``--widths`` choose the victim's
architecture, by default the release's surrogate's. ``--clean`` trains on
the clean stratified training subset of ``--train-size`` instead (drawn
with ``--seed`` as `jaxue craft` draws it).

Defences: ``--augment`` (random crop, plus flips on colour images),
``--defence`` (cutout, mixup, cutmix, grayscale, JPEG re-encoding of the
release, UEraser Lite / standard / Max (``ueraser-lite``, ``ueraser``,
``ueraser-max``: its augmentations with the max loss over K copies), the
orthogonal projection of the release's linear class directions
(``orthogonal-projection``: the victims then train on float images);
`jaxue.defences`), ``--adversarial`` (Madry PGD adversarial
training at ``--adv-radius``, ``--adv-steps`` steps of ``--adv-step-size``)
and ``--poison-ratio r`` (only a random fraction r of the release stays
protected, the rest reverts to its clean originals).

``--seeds`` victims are trained (victim k with key ``fold_in(key(seed),
k)``), each evaluated on the clean test set after every epoch. Writes to the
run directory ``--out``:

* ``results.json``: last-epoch test accuracy per seed, their mean and
  standard deviation, beside the peak over epochs (what early stopping
  would keep) and its epoch; the per-epoch curves and their mean;
* ``victim_curves.png``: the curves;
* ``models/victim-seed<k>/``: each victim (`jaxue.runs.save_model`);
* ``victim-seed<k>/``: each victim's stage record. A finished victim is
  not trained again when an interrupted run is rerun.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxue import data as data_lib
from jaxue import defences
from jaxue import models
from jaxue import noise as noise_lib
from jaxue import runs
from jaxue import train
from jaxue.pipelines import _common
from jaxue.pipelines import _figures
from jaxue.pipelines import options
from jaxue.pipelines.options import option

RELEASE_FILE = "release.npz"
# Flags that only mean something with another flag, and that flag's value.
_NEEDS = {
    "adv_radius": ("adversarial", (True,)),
    "adv_steps": ("adversarial", (True,)),
    "adv_step_size": ("adversarial", (True,)),
    "cutout_size": ("defence", ("cutout",)),
    "mix_alpha": ("defence", ("mixup", "cutmix")),
    "jpeg_quality": ("defence", ("jpeg",)),
}


def _jpeg_quality(value: Any) -> str | None:
  if options.positive_int(value) is None and value <= 95:
    return None
  return f"must be an integer in [1, 95], got {value!r}"


def _radius(value: Any) -> str | None:
  if options.unit_interval(value) is None and value > 0:
    return None
  return f"must be a number in (0, 1], got {value!r}"


@dataclasses.dataclass(frozen=True)
class Config:
  """The settings of `run` (the flags of ``jaxue evaluate``)."""

  release: str | None = option(
      None, "a jaxue craft run directory (or its release.npz): the victims "
      "train on its release", parse=str, metavar="DIR")
  clean: bool = option(False, "train on the clean training subset instead "
                       "of a release")
  dataset: str | None = options.dataset(
      None, "dataset (default: the release's; fashion_mnist with --clean)")
  data_dir: str | None = options.data_dir()
  train_size: int | None = options.train_size(None)
  test_size: int | None = options.test_size()
  model: str | None = options.model(
      None, "victim architecture (default: the release's surrogate's, else "
      f"{options.MODEL})")
  widths: tuple[int, ...] | None = options.widths(None)
  epsilon: float | None = options.epsilon()
  epochs: int = options.epochs()
  batch_size: int = option(128, "victim batch size", parse=int,
                           check=options.positive_int)
  learning_rate: float = option(0.1, "victim learning rate (cosine decay "
                                "to zero)", parse=float,
                                check=options.positive_float)
  augment: bool = option(False, "random crop (+ flip for colour images) "
                         "while training")
  defence: str = option("none", "training-time defence ('augmentation' is "
                        "--augment)", choices=defences.DEFENCES)
  cutout_size: int | None = option(
      None, "cutout square side (default half the image side)", parse=int,
      check=options.optional(options.positive_int))
  mix_alpha: float = option(1.0, "Beta parameter of mixup / cutmix",
                            parse=float, check=options.positive_float)
  jpeg_quality: int = option(10, "JPEG quality of --defence jpeg",
                             parse=int, check=_jpeg_quality)
  poison_ratio: float = option(
      1.0, "fraction of the release that stays protected; the rest reverts "
      "to its clean originals", parse=options.parse_fraction,
      check=options.unit_interval)
  adversarial: bool = option(False, "train the victims adversarially (Madry "
                             "PGD, L-inf)")
  adv_radius: float = option(4 / 255, "adversarial training's attack radius "
                             "(REM's rho_a)", parse=options.parse_fraction,
                             check=_radius)
  adv_steps: int = option(10, "adversarial training's PGD steps", parse=int,
                          check=options.nonnegative_int)
  adv_step_size: float | None = option(
      None, "adversarial training's PGD step (default radius / 5)",
      parse=options.parse_fraction,
      check=options.optional(options.positive_float))
  seeds: int = options.seeds()
  seed: int = options.seed()
  data_parallel: bool = option(
      False, "split every training batch over all devices of this host",
      runtime=True)
  quiet: bool = options.quiet()

  def __post_init__(self):
    options.validate(self)
    if self.release is None and not self.clean:
      raise ValueError("--release is required (or --clean to train on "
                       "clean data)")
    if self.release is not None and self.clean:
      raise ValueError("--release and --clean exclude each other")
    if self.clean and self.poison_ratio < 1:
      raise ValueError("--poison-ratio needs --release data")
    if self.clean and self.epsilon is not None:
      raise ValueError("--epsilon needs --release (it checks the release's "
                       "budget)")
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    for name, (needed, values) in _NEEDS.items():
      if (getattr(self, name) != defaults[name]
          and getattr(self, needed) not in values):
        wanted = (options.flag(needed) if values == (True,) else
                  f"{options.flag(needed)} {' or '.join(values)}")
        raise ValueError(f"{options.flag(name)} applies with {wanted} only")
    if self.adversarial:
      adversarial_config(self)
      if self.defence in ("mixup", "cutmix", "ueraser", "ueraser-max"):
        raise ValueError(f"--adversarial does not combine with --defence "
                         f"{self.defence}")


def adversarial_config(config: Config) -> train.AdversarialConfig:
  """The validated attack settings of ``--adv-*``."""
  try:
    return train.AdversarialConfig(config.adv_radius, config.adv_steps,
                                   config.adv_step_size).resolved()
  except ValueError as e:
    raise ValueError(f"--adversarial: {e}") from None


class _Compose(NamedTuple):
  """Two augmentations in a row (hashable: a static jit argument)."""

  first: Callable
  second: Callable

  def __call__(self, key, images):
    first_key, second_key = jax.random.split(key)
    return self.second(second_key, self.first(first_key, images))


class Release(NamedTuple):
  """A release read by `load_release`.

  Attributes:
    path: the ``release.npz``.
    images: uint8 NHWC protected images.
    labels: int32 labels.
    train_indices: their positions in the clean training set.
    meta: its record (dataset fingerprint, method, epsilon, ...).
    sha256: the sha256 of its arrays.
  """
  path: pathlib.Path
  images: np.ndarray
  labels: np.ndarray
  train_indices: np.ndarray
  meta: dict[str, Any]
  sha256: str


def release_file(path: str | pathlib.Path) -> pathlib.Path:
  """``path`` itself, or the ``release.npz`` of the run directory
  ``path``."""
  path = pathlib.Path(path)
  if path.is_dir():
    if (path / RELEASE_FILE).is_file():
      return path / RELEASE_FILE
    if (path / runs.RUN_FILE).exists():
      kind = runs.read_run(path).get("kind")
      raise runs.RunError(f"{path} holds a {kind} run without "
                          f"{RELEASE_FILE}; pass a jaxue craft run directory")
    raise FileNotFoundError(f"no release at {path} (no {RELEASE_FILE}); "
                            "create one with jaxue craft --out DIR")
  if not path.exists():
    raise FileNotFoundError(f"no release at {path}; create one with jaxue "
                            "craft --out DIR")
  return path


def load_release(path: str | pathlib.Path) -> Release:
  """Reads and checks a release written by `jaxue craft`.

  Raises:
    RunError / ValueError: one line naming the file: missing, corrupt, not
      a jaxue release, empty, or with malformed ``train_indices``.
  """
  path = release_file(path)
  arrays, meta = runs.load_arrays(path)
  missing = [k for k in ("images", "labels", "train_indices")
             if k not in arrays]
  if missing:
    raise runs.RunError(f"{path} has no {', '.join(map(repr, missing))} "
                        "(not a jaxue release)")
  if not isinstance(meta.get("dataset"), dict) or not meta.get(
      "dataset_name"):
    raise runs.RunError(f"{path} records no dataset fingerprint (not a "
                        "jaxue release)")
  images, labels = arrays["images"], arrays["labels"]
  if not len(labels):
    raise ValueError(f"{path} holds no images")
  try:
    data_lib.check_dataset(images, labels)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  indices = arrays["train_indices"]
  if not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"{path}: train_indices must be integers, got "
                     f"{indices.dtype}")
  if (indices.ndim != 1 or indices.min(initial=0) < 0
      or len(indices) != len(labels)):
    raise ValueError(f"{path}: train_indices must be a 1-D array of "
                     "positions >= 0 in the clean training set, one per "
                     "image")
  return Release(path, images, labels.astype(np.int32), indices, meta,
                 runs.sha256_arrays(arrays))


def clean_originals(release: Release, data_dir: str | None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The clean training images and labels a release was made from, checked
  against the fingerprint it recorded.

  Raises:
    RunError: the dataset found here differs from the release's.
  """
  name = release.meta["dataset_name"]
  x_all, y_all = data_lib.load(name, "train", data_dir)
  indices = release.train_indices
  if indices.max(initial=0) >= len(y_all):
    raise runs.RunError(
        f"{release.path} was made from other data: its train_indices go "
        f"beyond the {len(y_all)} {name} training images found here")
  x, y = x_all[indices], y_all[indices]
  found = runs.dataset_fingerprint(name, "train", x, y)
  recorded = release.meta["dataset"]
  if dict(recorded) != found:
    differs = [k for k in ("name", "split", "shape", "sha256")
               if recorded.get(k) != found.get(k)]
    raise runs.RunError(
        f"{release.path.name} was made from other data: the {name} training "
        f"images at its train_indices (--data-dir "
        f"{data_dir or 'default'}) differ from the ones it recorded (in "
        f"{', '.join(differs)}); {release.path}")
  if not np.array_equal(y, release.labels):
    raise runs.RunError(f"{release.path}: its labels do not match the "
                        f"{name} training labels at its train_indices")
  return x, y


def _check_against_release(config: Config, meta: dict[str, Any]) -> None:
  """Refuses flags that contradict the release."""
  name = meta["dataset_name"]
  if config.dataset is not None and (
      data_lib.get_info(config.dataset).name != name):
    raise ValueError(f"--dataset {config.dataset} contradicts the release, "
                     f"made from {name}; leave --dataset out")
  if config.epsilon is not None:
    recorded = meta.get("epsilon")
    if recorded is None:
      raise ValueError(f"--epsilon {config.epsilon:g} contradicts the "
                       f"release, a {meta.get('method')} release without an "
                       "L-inf budget; leave --epsilon out")
    if abs(recorded - config.epsilon) > 1e-9:
      raise ValueError(
          f"--epsilon {_common.epsilon_label(config.epsilon)} contradicts "
          f"the release, made at epsilon "
          f"{_common.epsilon_label(recorded)}; leave --epsilon out")
  if (config.train_size is not None
      and config.train_size != meta.get("train_size")):
    raise ValueError(f"--train-size {config.train_size} contradicts the "
                     f"release of {meta.get('train_size')} images; leave "
                     "--train-size out")


def victim_model(config: Config, release_model: dict[str, Any] | None,
                 num_classes: int) -> dict[str, Any]:
  """The victim's `models.make_model` arguments: ``--model``/``--widths``,
  by default the release's surrogate's architecture."""
  release_model = release_model or {}
  name = config.model or release_model.get("name") or options.MODEL
  widths = config.widths
  if widths is None:
    if release_model and name == release_model.get("name"):
      widths = release_model.get("widths")
    elif name.startswith("small_cnn"):
      widths = options.WIDTHS
  spec = {"name": name, "num_classes": num_classes,
          "widths": list(widths) if widths else None}
  models.make_model(**spec)  # A bad combination fails before any work.
  return spec


def run(config: Config, workdir: str | pathlib.Path, *,
        overwrite: bool = False) -> dict[str, Any]:
  """Trains ``config.seeds`` victims (see the module docstring).

  Args:
    config: the settings.
    workdir: the run directory (created; rerunning into it resumes).
    overwrite: delete an earlier run in ``workdir`` first.

  Returns:
    The results (as in ``results.json``).
  """
  timer = _common.Timer()
  release = None
  with timer("load"):
    if config.clean:
      data = _common.load_data(config.dataset or options.DATASET,
                               config.data_dir, config.train_size,
                               config.seed, config.test_size)
      name, fingerprint = data.name, data.train_fingerprint
      x_train, y_train = data.train
      x_test, y_test = data.test
      num_classes, release_model, clean = data.num_classes, None, None
    else:
      release = load_release(config.release)
      _check_against_release(config, release.meta)
      name = release.meta["dataset_name"]
      clean = clean_originals(release, config.data_dir)
      fingerprint = release.meta["dataset"]
      x_train, y_train = release.images, release.labels
      x_test, y_test = data_lib.load(name, "test", config.data_dir)
      x_test, y_test = x_test[:config.test_size], y_test[:config.test_size]
      num_classes = data_lib.get_info(name).num_classes
      release_model = release.meta.get("model")
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(f"released images are {x_train.shape[1:]} but {name} "
                     f"test images are {x_test.shape[1:]}")
  data_lib.check_dataset(x_train, y_train, num_classes=num_classes)
  model_spec = victim_model(config, release_model, num_classes)
  key = jax.random.key(config.seed)
  protected = None
  if config.poison_ratio < 1:
    x_train, mask = noise_lib.protect_fraction(
        jax.random.fold_in(key, 7), clean[0], x_train, config.poison_ratio)
    protected = int(mask.sum())
  shape = tuple(x_train.shape[1:])
  defence = defences.make_defence(
      config.defence, shape, num_classes, cutout_size=config.cutout_size,
      mix_alpha=config.mix_alpha, jpeg_quality=config.jpeg_quality)
  adversarial = adversarial_config(config) if config.adversarial else None
  if config.batch_size > len(y_train):
    raise ValueError(f"--batch-size {config.batch_size} exceeds the "
                     f"{len(y_train)} training images")

  out = pathlib.Path(workdir)
  run_dir = runs.Run(out, "evaluate", options.fingerprinted(config),
                     overwrite=overwrite)
  training_sha = runs.sha256_arrays({"images": x_train, "labels": y_train})
  source = "clean" if release is None else str(release.path)
  _common.log(config.quiet, f"{name}: {config.seeds} victim(s) "
              f"{models.make_model(**model_spec).name} on {source} "
              f"({len(y_train)} images, {jax.default_backend()})")
  if protected is not None:
    _common.log(config.quiet, f"partial protection: {protected} of "
                f"{len(y_train)} images stay protected")
  if defence.preprocess is not None:
    with timer("defence"):
      x_train = defence.preprocess(x_train)
  linear_accuracy = None
  if defence.project is not None:
    with timer("defence"):
      projected = defence.project(jax.random.fold_in(key, 8), x_train,
                                  y_train)
    x_train, linear_accuracy = projected.images, projected.accuracy
    _common.log(config.quiet, f"orthogonal projection: a linear model fits "
                f"the release to {linear_accuracy:.3f}; its {num_classes} "
                "class directions removed")
  if config.defence == "grayscale" and shape[-1] == 1:
    _common.log(config.quiet, "note: grayscale is a no-op on 1-channel "
                "images")
  augment = defence.augment
  if config.augment:
    standard = data_lib.default_augmentation(shape)
    augment = standard if augment is None else _Compose(standard, augment)

  victim_settings = options.fingerprinted(config)
  del victim_settings["seeds"]
  victim_settings.update(model=model_spec, training_data=training_sha)
  model = models.make_model(**model_spec)
  per_seed = []
  with timer("train"), _common.device_scope(config.data_parallel):
    for k in range(config.seeds):
      stage = run_dir.stage(f"victim-seed{k}",
                            {**victim_settings, "victim_seed": k})
      if stage.done:
        result = stage.result()
        _common.log(config.quiet, f"seed {k}: trained already, clean test "
                    f"accuracy {result['test_accuracy'][-1]:.4f}")
        per_seed.append(result)
        continue
      state, history = train.train_victim(
          jax.random.fold_in(key, k), model, x_train, y_train,
          test=(x_test, y_test), epochs=config.epochs,
          batch_size=config.batch_size, learning_rate=config.learning_rate,
          augment=augment, mix=defence.mix, adversarial=adversarial,
          repeats=defence.repeats, allow_float=defence.project is not None,
          progress=False if config.quiet else f"victim seed {k}")
      runs.save_model(
          out / "models" / f"victim-seed{k}", state.variables,
          model=model_spec, input_shape=shape, dataset=fingerprint,
          extra={"training_data": source, "training_data_sha256":
                 training_sha, "victim_seed": k, "seed": config.seed,
                 "defence": config.defence, "augment": config.augment,
                 "adversarial": config.adversarial,
                 "poison_ratio": config.poison_ratio})
      result = stage.finish({"victim_seed": k, **history})
      _common.log(config.quiet, f"seed {k}: clean test accuracy "
                  f"{result['test_accuracy'][-1]:.4f}")
      per_seed.append(result)

  finals = [r["test_accuracy"][-1] for r in per_seed]
  curves = [r["test_accuracy"] for r in per_seed]
  peaks = [train.peak_accuracy(curve) for curve in curves]
  _figures.accuracy_curves(out / "victim_curves.png", {"victim": curves})
  results = {
      "dataset": name,
      "training_data": source,
      "release": None if release is None else {
          "path": str(release.path), "sha256": release.sha256,
          "method": release.meta.get("method"),
          "mode": release.meta.get("mode"),
          "epsilon": release.meta.get("epsilon")},
      "train_size": len(y_train), "test_size": len(y_test),
      "image_shape": list(shape),
      "model": model_spec,
      "epochs": config.epochs, "augment": config.augment,
      "defence": config.defence, "poison_ratio": config.poison_ratio,
      "protected_images": protected,
      "adversarial": adversarial._asdict() if adversarial else None,
      "victim_accuracy": float(np.mean(finals)),
      "victim_accuracy_std": float(np.std(finals)),
      "victim_accuracy_per_seed": finals,
      "victim_peak_accuracy": float(np.mean([a for a, _ in peaks])),
      "victim_peak_accuracy_std": float(np.std([a for a, _ in peaks])),
      "victim_peak_accuracy_per_seed": [a for a, _ in peaks],
      "victim_peak_epoch_per_seed": [e for _, e in peaks],
      "projection_linear_accuracy": linear_accuracy,
      "victim_curves": curves,
      "victim_curve_mean": np.mean(curves, axis=0).tolist(),
      "victim_curve_std": np.std(curves, axis=0).tolist(),
      "train_seconds_per_seed": [round(sum(r["seconds"]), 2)
                                 for r in per_seed],
      "wall_seconds": dict(timer.seconds),
      **_common.metadata(config),
  }
  results = runs.jsonable(results)
  run_dir.write_json("results.json", results)
  _common.log(config.quiet, f"victim accuracy "
              f"{results['victim_accuracy']:.4f} +- "
              f"{results['victim_accuracy_std']:.4f} over {config.seeds} "
              f"seed(s) (peak {results['victim_peak_accuracy']:.4f}); "
              f"wrote {out / 'results.json'}")
  return results
