"""Certification throughput: Monte-Carlo draws per second per model.

    python benchmarks/certify_speed.py [--out DIR] [--draws 64]

Times `jaxue.certify.sample_accuracies` (whole 10,000-image test set, eval
mode, one draw = one perturbed copy of all trainable parameters) for the
CPU-default small CNN, the published-width small CNN (28x28x1) and the CIFAR
ResNet-18 (32x32x3), on generated data (throughput does not depend on pixel
values). Compilation is excluded: each configuration is run once to warm up.
Writes ``OUT/results.json`` (default OUT: ``benchmarks/results/certify_speed``)
with draws/s and achieved GFLOP/s (FLOPs of one forward pass counted by
XLA's cost analysis).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxue import certify
from jaxue import runs
from jaxue import models

# A sibling: the script runs by path, with this folder first on sys.path.
import _common as common  # pylint: disable=g-bad-import-order

CONFIGS = {
    "small_cnn_cpu": ("small_cnn", (16, 32, 64), (28, 28, 1)),
    "small_cnn": ("small_cnn", (64, 128, 256), (28, 28, 1)),
    "resnet18": ("resnet18", None, (32, 32, 3)),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python benchmarks/certify_speed.py",
                              description=__doc__)
  p.add_argument("--out", type=pathlib.Path,
                 default=common.RESULTS / "certify_speed",
                 help="writes OUT/results.json (default %(default)s)")
  p.add_argument("--models", default=",".join(CONFIGS))
  p.add_argument("--draws", type=common.positive_int, default=64)
  p.add_argument("--test-size", type=common.positive_int, default=10_000)
  p.add_argument("--chunk-sizes", default=None,
                 help="comma list (default: the backend's default only)")
  p.add_argument("--batch-size", type=common.positive_int, default=1000)
  args = p.parse_args(argv)
  unknown = set(args.models.split(",")) - set(CONFIGS)
  if unknown:
    raise common.UsageError(f"unknown models {sorted(unknown)}; choose from "
                            f"{list(CONFIGS)}")
  return args


def xla_flops(fn, *args) -> float:
  """FLOPs of one ``fn(*args)`` call, counted by XLA's cost analysis.

  The function is lowered for the CPU backend from the arguments' shapes and
  dtypes only (no data moves, nothing runs) and XLA's HLO cost analysis of
  the lowered module is returned (falling back to the compiled module's).
  The CPU backend is used whatever the default one is: on GPU, convolutions
  become cuDNN custom calls that the compiled module's cost analysis does
  not count. Loops (`lax.scan`, `fori_loop`, `lax.map`) are counted once,
  not per trip, so pass a loop-free function and multiply by the trip count
  yourself.

  Args:
    fn: a jax-traceable function (not necessarily jitted).
    *args: its arguments (arrays, pytrees of arrays, typed keys).

  Returns:
    The FLOP count, or NaN if XLA reports none.
  """

  def spec(x):
    if hasattr(x, "dtype") and hasattr(x, "shape"):
      return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x

  def flops(cost):
    if isinstance(cost, list):
      cost = cost[0] if cost else None
    return float((cost or {}).get("flops", float("nan")))

  specs = jax.tree.map(spec, args)
  with jax.default_device(jax.devices("cpu")[0]):
    lowered = jax.jit(fn).lower(*specs)
    try:
      count = flops(lowered.cost_analysis())
    except NotImplementedError:
      count = float("nan")
    if count != count:  # NaN: ask the compiled module.
      count = flops(lowered.compile().cost_analysis())
  return count


def forward_flops(model, variables, shape, batch) -> float:
  """FLOPs of one eval-mode forward pass over ``batch`` images (XLA)."""
  x = jnp.zeros((batch, *shape), jnp.float32)
  return xla_flops(lambda v, x: model.apply(v, x, False)[0], variables, x)


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  rng = np.random.default_rng(0)
  results = {}
  for name in args.models.split(","):
    arch, widths, shape = CONFIGS[name]
    model = models.make_model(arch, widths=widths)
    variables = model.init(jax.random.key(0), shape)
    images = rng.integers(0, 256, (args.test_size, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, args.test_size).astype(np.int32)
    flops = forward_flops(model, variables, shape, args.batch_size) * (
        args.test_size / args.batch_size)
    chunks = ([int(c) for c in args.chunk_sizes.split(",")]
              if args.chunk_sizes else [certify.default_chunk_size()])
    per_chunk = {}
    for chunk in chunks:
      run = lambda n, first=0, chunk=chunk: certify.sample_accuracies(  # pylint: disable=g-long-lambda
          jax.random.key(1), model.apply, variables, images, labels,
          sigma=0.01, num_draws=n, chunk_size=chunk,
          batch_size=args.batch_size, first_draw=first)
      run(chunk * 4)  # Compile (one block).
      start = time.perf_counter()
      run(args.draws, first=10_000)
      seconds = time.perf_counter() - start
      per_chunk[chunk] = {"draws_per_second": args.draws / seconds,
                          "seconds": seconds,
                          "gflops": flops * args.draws / seconds / 1e9}
      print(f"{name} chunk {chunk}: {args.draws / seconds:.2f} draws/s, "
            f"{per_chunk[chunk]['gflops']:.0f} GFLOP/s")
    best = max(per_chunk.values(), key=lambda r: r["draws_per_second"])
    results[name] = {"input_shape": list(shape),
                     "params": models.count_params(variables),
                     "tflop_per_draw": flops / 1e12, "chunks": per_chunk,
                     "draws_per_second": best["draws_per_second"],
                     "gflops": best["gflops"]}
  out = {"test_size": args.test_size, "draws": args.draws,
         "models": results, **common.metadata(args, __file__, argv)}
  runs.write_json(args.out / "results.json", out)
  return out


if __name__ == "__main__":
  main()
