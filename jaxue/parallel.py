"""Data parallelism for training and crafting over a device mesh.

Every jaxue step that consumes a batch -- `jaxue.train.train_step` and
`~jaxue.train.adversarial_train_step`, the noise steps of EM, PUE and REM,
PUE's robust surrogate step, the eval-mode counts -- passes the batch
through `shard_batch`. Outside a mesh that is the identity. Inside

    with jax.set_mesh(jaxue.parallel.data_mesh()):
      result = jaxue.noise.error_minimizing_noise(key, state, x, y, ...)

the batch's leading axis is constrained to the mesh's ``"data"`` axis, so
XLA's SPMD partitioner splits every forward and backward pass over the
devices and all-reduces the gradients and the batch-norm statistics; the
parameters, optimizer state and dataset stay replicated. The result is the
single-device computation up to the order of floating-point sums (tested on
8 fake CPU devices). One host with many devices; across hosts,
certification shards its draws (`jaxue.certify.sample_accuracies`).

On a CPU, `request_cpu_devices` splits the host into one JAX device per
core before JAX starts, so that independent work -- certification's draws
over a mesh -- runs concurrently instead of each computation spreading its
small operations over all cores.

A batch whose size the device count does not divide is padded by the
partitioner; give the batch a multiple of the device count to keep every
device busy.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from typing import Any

import jax
from jax.sharding import AxisType, PartitionSpec as P

DATA_AXIS = "data"

__all__ = ["DATA_AXIS", "available_cores", "data_mesh", "request_cpu_devices",
           "shard_batch"]

_FORCE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> int:
  """CPU cores this process may run on (its affinity mask where known)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def request_cpu_devices(num_devices: int | None = None) -> bool:
  """Asks JAX to present the host CPU as ``num_devices`` devices.

  Each CPU device runs its computations on its own thread, sharing one pool
  of worker threads, so computations placed on different devices -- the
  shards of `jaxue.certify.sample_accuracies` over a draw mesh -- overlap
  (measured in docs/performance.md). Accelerators are unaffected: this only
  sets how many CPU devices JAX creates.

  Must run before JAX's first computation (the count is fixed when the CPU
  backend starts). It changes nothing, and returns False, when the backend
  has already started or when ``XLA_FLAGS`` already sets
  ``--xla_force_host_platform_device_count`` (the user's choice wins).

  Args:
    num_devices: CPU devices to create; default `available_cores()`.

  Returns:
    Whether the request took effect.

  Raises:
    ValueError: ``num_devices`` is not a positive integer.
  """
  if num_devices is None:
    num_devices = available_cores()
  if isinstance(num_devices, bool) or int(num_devices) != num_devices or (
      num_devices < 1):
    raise ValueError(f"num_devices must be a positive integer, got "
                     f"{num_devices!r}")
  if _FORCE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", int(num_devices))
  except RuntimeError:  # The backends have started: the count is fixed.
    return False
  return True


def data_mesh(devices: Sequence[jax.Device] | None = None,
              *, axis: str = DATA_AXIS) -> jax.sharding.Mesh:
  """A one-axis mesh over ``devices`` (default: every visible device) for
  `jax.set_mesh`; the axis is an ``Auto`` (compiler-partitioned) one."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("data_mesh needs at least one device")
  return jax.make_mesh((len(devices),), (axis,),
                       axis_types=(AxisType.Auto,), devices=devices)


def _data_axis(axis: str) -> str | None:
  """``axis`` when the context mesh (`jax.set_mesh`) has it as a
  compiler-partitioned axis, else None (no mesh, or inside `shard_map`)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names:
    return None
  if mesh.axis_types[mesh.axis_names.index(axis)] != AxisType.Auto:
    return None
  return axis


def shard_batch(batch: Any, *, axis: str = DATA_AXIS) -> Any:
  """Splits every array of ``batch`` along its leading (batch) axis over
  the context mesh's ``axis``; the identity without such a mesh.

  Traceable; use it on a step's inputs. Scalars pass through.
  """
  axis = _data_axis(axis)
  if axis is None:
    return batch

  def constrain(x):
    if getattr(x, "ndim", 0) == 0:
      return x
    return jax.lax.with_sharding_constraint(x, P(axis))

  return jax.tree.map(constrain, batch)
