"""Tests of jaxue.parallel: data-parallel training and crafting on a mesh."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxue import parallel


def test_shard_batch_is_the_identity_without_a_mesh():
  batch = (jnp.ones((4, 3)), jnp.arange(4), jnp.float32(2.0))
  assert parallel.shard_batch(batch) is batch
  got = jax.jit(parallel.shard_batch)(batch)
  for a, b in zip(got, batch):
    np.testing.assert_array_equal(a, b)


def test_data_mesh():
  mesh = parallel.data_mesh()
  assert mesh.axis_names == (parallel.DATA_AXIS,)
  assert mesh.size == jax.device_count()
  with pytest.raises(ValueError, match="at least one device"):
    parallel.data_mesh([])


def test_request_cpu_devices_after_start_changes_nothing():
  jax.devices()  # The backend has started (as in any program that ran JAX).
  count = jax.device_count()
  assert parallel.request_cpu_devices(count + 1) is False
  assert jax.device_count() == count
  for bad in (0, -2, 1.5, True):
    with pytest.raises(ValueError, match="num_devices"):
      parallel.request_cpu_devices(bad)
  assert parallel.available_cores() >= 1


_REQUEST_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    from jaxue import parallel
    took = parallel.request_cpu_devices(int(sys.argv[1]))
    print("RESULT", took, jax.device_count(),
          parallel.request_cpu_devices(2))
""")


@pytest.mark.parametrize("forced", [False, True])
def test_request_cpu_devices_before_start(forced, run_on_fake_devices):
  if forced:  # XLA_FLAGS forces 8 devices: the user's choice wins.
    proc = run_on_fake_devices(_REQUEST_SCRIPT, "3", timeout=120)
    expected = "RESULT False 8 False"
  else:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", _REQUEST_SCRIPT, "3"],
                          env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    expected = "RESULT True 3 False"
  assert expected in proc.stdout, proc.stdout + proc.stderr[-2000:]


# 1 vs 8 fake CPU devices (subprocess: the device count is fixed at import).
_SCRIPT = textwrap.dedent("""
    import re
    import jax
    import jax.numpy as jnp
    import numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 8, jax.devices()
    from jax.sharding import PartitionSpec as P
    from jaxue import models, noise, parallel, pue, rem, train

    rng = np.random.default_rng(0)
    n, classes = 64, 4
    x = rng.integers(0, 256, (n, 12, 12, 1), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.int32)
    model = models.make_model("small_cnn", num_classes=classes,
                              widths=(4, 8, 8))

    def fresh(tx=None):
      return train.create_train_state(jax.random.key(0), model, (12, 12, 1),
                                      tx or train.make_optimizer(0.1))

    def run():
      out = {}
      state, _ = train.train_epoch(fresh(), jnp.asarray(x), jnp.asarray(y),
                                   jax.random.key(1), batch_size=32)
      out["epoch"] = state.params
      out["accuracy"] = train.evaluate(model.apply, state.variables, x, y,
                                       batch_size=32)
      for mode, steps in (("samplewise", 3), ("classwise", 1)):
        cfg = noise.EMConfig(mode=mode, epsilon=8 / 255, pgd_steps=steps,
                             train_steps=2, batch_size=32,
                             sweep_batch_size=32, max_rounds=2)
        out[mode] = noise.craft(jax.random.key(2), fresh(), x, y, cfg,
                                num_classes=classes, progress=False).noise
      pc = pue.PUEConfig(sigma=0.1, sigma_step=0.05, surrogate_draws=2,
                         noise_draws=2)
      state, _ = jax.jit(lambda s, b, k: pue.robust_surrogate_step(
          s, b, k, pue=pc))(fresh(), (x[:32], y[:32]), jax.random.key(3))
      out["pue"] = state.params
      rc = rem.REMConfig(train_steps=2, batch_size=32, noise_steps=2,
                         eot_draws=2, attack_steps=2, checkpoint_every=2)
      out["rem"] = rem.robust_error_minimizing_noise(
          jax.random.key(4), fresh(rc.optimizer()), x, y,
          num_classes=classes, cfg=rc, progress=False).noise
      return out

    one = run()
    mesh = parallel.data_mesh()
    with jax.set_mesh(mesh):
      eight = run()
      # The step is partitioned: per-device batches of 32 / 8, gradients
      # all-reduced.
      hlo = train.train_epoch.lower(
          fresh(), jnp.asarray(x), jnp.asarray(y), jax.random.key(1),
          batch_size=32).compile().as_text()
      assert "all-reduce" in hlo
      assert "f32[4,12,12,1]" in hlo
      # Inside shard_map the data axis is manual: shard_batch stands aside.
      f = jax.shard_map(lambda b: parallel.shard_batch(b) * 2, mesh=mesh,
                        in_specs=P("data"), out_specs=P("data"))
      np.testing.assert_array_equal(jax.jit(f)(jnp.arange(8.0)),
                                    2 * np.arange(8.0))
    assert jax.tree.leaves(eight["epoch"])[0].sharding.mesh.size == 8
    assert one["accuracy"] == eight["accuracy"]
    for name in ("epoch", "pue"):
      for a, b in zip(jax.tree.leaves(one[name]),
                      jax.tree.leaves(eight[name])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Noise: signed steps can flip where a gradient is ~0; sums split over
    # devices round differently, nothing else.
    for name in ("samplewise", "classwise", "rem"):
      a, b = np.asarray(one[name]), np.asarray(eight[name])
      assert a.shape == b.shape
      assert np.mean(np.abs(a - b) > 1e-6) < 0.01, name
    print("PARALLEL_OK")
""")


def test_identical_up_to_rounding_on_fake_devices(run_on_fake_devices):
  proc = run_on_fake_devices(_SCRIPT)
  assert "PARALLEL_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
