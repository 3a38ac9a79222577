"""Strict test setup: rank promotion raises, so shape bugs surface at once."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
  return jax.random.key(0)
