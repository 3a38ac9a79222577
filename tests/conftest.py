"""Strict test setup: rank promotion raises, so shape bugs surface at once."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def run_on_fake_devices():
  """``run(script, *args, timeout=...)``: runs a Python script in a fresh
  process with 8 fake CPU devices (the device count is fixed when JAX
  starts) and the repository importable; returns the CompletedProcess."""

  def run(script: str, *args: str, timeout: int = 600
          ) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                            else []))
    return subprocess.run([sys.executable, "-c", script, *args], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)

  return run
