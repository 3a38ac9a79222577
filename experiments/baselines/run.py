"""Model-free baselines (OPS, AR, LSP) on Fashion-MNIST: every JSON here.

    python experiments/baselines/run.py --out runs/baselines [--only NAME] \\
        [--smoke]

config.json holds the settings of each committed JSON: a tree of named
`jaxue table` runs whose protected rows come from `jaxue craft` runs of its
"releases" (--from-runs), so that every victim of one release trains on
the same images: the whole training set against the averaged-head and
the flattened-head small CNN, AR's distinctness bound per craft seed, the
4,000-image subset against two victim architectures, longer victim
training, the published widths, other budgets, and the first whole-set
runs. Every run has its own directory under ``--out`` and resumes; AR
releases marked bound3 repeat the earlier default screening bound.
"""

import argparse
import json
import pathlib
import re
import sys

import jaxue
from jaxue import runs
from jaxue.pipelines import craft, options, table

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


def release(cfg, out, name, quiet):
  """The folder of a `jaxue craft` run of config.json's "releases"."""
  spec = cfg["releases"][name]
  fields = {k: cfg["table"][k] for k in ("train_size", "test_size", "widths",
                                         "seed")}
  if spec["method"] not in craft.NOT_LINF:
    fields["epsilon"] = cfg["table"]["epsilon"]
  craft.run(craft.Config(**{**fields, **spec, "quiet": quiet}),
            out / "releases" / name)
  return out / "releases" / name


def tables(cfg, out, spec, path, quiet):
  """A table run, or a tree of named ones (a dict without "methods")."""
  if "methods" not in spec:
    return {k: tables(cfg, out, s, path / k, quiet) for k, s in spec.items()}
  spec = dict(spec)
  sources = tuple(f"{m}={release(cfg, out, n, quiet)}"
                  for m, n in spec.pop("from", {}).items())
  return table.run(table.Config(**{**cfg["table"], **spec,
                                   "from_runs": sources, "quiet": quiet}),
                   path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--only", help="one JSON's name (default: all)")
  parser.add_argument("--smoke", action="store_true",
                      help="sizes scaled down (config.json's smoke)")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = settings(args.smoke)
  names = [n for n in cfg if n not in ("table", "releases")]
  if args.only not in names + [None]:
    parser.error(f"--only: choose from {', '.join(names)}")
  written = {}
  for name in names if args.only is None else [args.only]:
    results = dict(tables(cfg, args.out, cfg[name], args.out / name,
                          args.quiet),
                   command=" ".join(["python"] + sys.argv), config=cfg,
                   jaxue_version=jaxue.__version__)
    runs.write_json(args.out / f"{name}.json", runs.jsonable(results))
    written[name] = results
    print(f"wrote {args.out / name}.json")
  return written


if __name__ == "__main__":
  main()
