"""REM (Fu et al., ICLR 2022) on Fashion-MNIST: every JSON of this folder.

    python experiments/rem/run.py --out runs/rem [--only NAME] [--smoke] \\
        [--cells runs/methods_vs_defences/table/cells]

config.json holds the settings of each committed JSON: `jaxue table` runs
(a JSON is one table or a tree of named tables), some of whose rows come
from `jaxue craft` runs of its "releases" (--from-runs). noise_features.json
applies `jaxue.diagnostics` to the table's releases and the rho_a runs.
Every run has its own directory under ``--out`` and resumes. Table cells of
rem_table live in ``--cells`` (default ``--out/cells``): methods_vs_defences
has the same settings, so its cells can be shared, as in the recorded run.
"""

import argparse
import json
import pathlib
import re
import sys

import jax

import jaxue
from jaxue import data, diagnostics, models, runs
from jaxue.pipelines import craft, evaluate, options, table

CONFIG = pathlib.Path(__file__).with_name("config.json")


def settings(smoke):
  """config.json's "full" settings (``--smoke``: sizes scaled down)."""
  config = json.loads(CONFIG.read_text())
  scale = config["smoke"] if smoke else {}

  def convert(value):  # Lists as tuples, "8/255" as a number.
    if isinstance(value, dict):
      return {k: convert(scale[k] if k in scale else v)
              for k, v in value.items()}
    if isinstance(value, list):
      return tuple(convert(v) for v in value)
    fraction = isinstance(value, str) and re.fullmatch(r"\d+/\d+", value)
    return options.parse_fraction(value) if fraction else value

  return convert(config["full"])


class Study:
  """The settings, ``--out``, ``--cells`` and ``--quiet`` of one run."""

  def __init__(self, cfg, out, cells, quiet):
    self.cfg, self.out, self.cells, self.quiet = cfg, out, cells, quiet

  def table_config(self, **changes):
    return table.Config(**{**self.cfg["table"], **changes,
                           "quiet": self.quiet})

  def release(self, method, name):
    """The folder of a release: a table cell (name "cell") or a craft run
    of config.json's "releases" with the table's data settings."""
    if name == "cell":
      folder = self.cells / method
      craft.run(table.craft_config(self.table_config(), method), folder)
      return folder
    folder = self.out / "releases" / name
    fields = {k: self.cfg["table"][k] for k in (
        "train_size", "test_size", "widths", "epsilon", "seed")}
    craft.run(craft.Config(**{**fields, **self.cfg["releases"][name],
                              "quiet": self.quiet}), folder)
    return folder

  def tables(self, spec, out):
    """A table run, or a tree of named ones (a dict without "methods")."""
    if "methods" not in spec:
      return {k: self.tables(s, out / k.replace("/", "_"))
              for k, s in spec.items()}
    spec = dict(spec)
    sources = tuple(f"{m}={self.release(m, n)}"
                    for m, n in spec.pop("from", {}).items())
    if spec.pop("shared_cells", False):
      spec["cells"] = str(self.cells)
    return table.run(self.table_config(from_runs=sources, **spec), out)

  def features(self):
    """noise_features.json: what each release's noise is made of, against
    a reference model trained on the clean images outside every release."""
    cfg = self.cfg["noise_features"]
    releases = {m: evaluate.load_release(self.release(m, n))
                for m, n in cfg["releases"].items()}
    x, y = data.load("fashion_mnist", "train")
    test = tuple(a[:self.cfg["table"]["test_size"]]
                 for a in data.load("fashion_mnist", "test"))
    ref = dict(cfg["reference"], excluded=runs.sha256_arrays(
        {m: r.train_indices for m, r in releases.items()}))
    spec = {"name": "small_cnn", "num_classes": 10, "widths": ref["widths"]}
    stage = runs.Run(self.out / "noise_features", "noise_features",
                     ref).stage("reference", ref)
    if not stage.done:
      variables, info = diagnostics.train_reference(
          jax.random.key(ref["seed"]), models.make_model(**spec), x, y,
          exclude=[r.train_indices for r in releases.values()],
          num_classes=10, test=test, epochs=ref["epochs"],
          progress=not self.quiet and "reference model")
      runs.save_model(stage.path / "model", variables, model=spec,
                      input_shape=x.shape[1:])
      stage.finish(info)
    model, variables, _ = runs.load_model(stage.path / "model")
    directions = diagnostics.class_directions(x, y, num_classes=10)
    measured = {m: {
        "released": str(r.path), "method": r.meta.get("method"),
        **diagnostics.describe_release(
            evaluate.clean_originals(r, None)[0], r.images, r.labels,
            directions=directions, num_classes=10,
            reference=(model.apply, variables))}
                for m, r in releases.items()}
    return {"releases": measured,
            "reference_model": {**spec, **ref, **stage.result()}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--cells", type=pathlib.Path, default=None,
                      help="rem_table's cells (default --out/cells)")
  parser.add_argument("--only", help="one JSON's name (default: all)")
  parser.add_argument("--smoke", action="store_true",
                      help="sizes scaled down (config.json's smoke)")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = settings(args.smoke)
  study = Study(cfg, args.out, args.cells or args.out / "cells", args.quiet)
  names = [n for n in cfg if n not in ("table", "releases")]
  if args.only not in names + [None]:
    parser.error(f"--only: choose from {', '.join(names)}")
  written = {}
  for name in names if args.only is None else [args.only]:
    results = (study.features() if name == "noise_features" else
               study.tables(cfg[name], args.out / name))
    results = dict(results, command=" ".join(["python"] + sys.argv),
                   config=cfg, jaxue_version=jaxue.__version__)
    runs.write_json(args.out / f"{name}.json", runs.jsonable(results))
    written[name] = results
    print(f"wrote {args.out / name}.json")
  return written


if __name__ == "__main__":
  main()
