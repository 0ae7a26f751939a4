"""Shared test set-up: 8 simulated CPU devices for the sharding tests.

XLA reads the flag once, when the CPU backend starts, so it is set here,
before any test module imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
