"""Shared test setup: per-test seeding, hypothesis profiles, device helpers.

Devices: ``available_devices()`` is ``["cpu"]`` plus ``"cuda"`` when torch
sees a GPU and ``lumo_uti._C_cuda`` loaded. Parametrise over devices with the
``device`` fixture (CUDA cases skip with "CUDA kernels not built" or "no CUDA
device"), ask for the list with the ``devices`` fixture, or for CUDA-only
tests take the ``cuda_device`` fixture.

Hypothesis profiles: ``ci`` (default: 100 examples, no deadline), ``dev`` (20)
and ``thorough`` (1000); choose with ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=100, **_COMMON)
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def cuda_skip_reason() -> str | None:
    """None when CUDA tests can run, else why not ("CUDA kernels not built" / "no CUDA device")."""
    from lumo_uti.ops import _native

    if not _native.cuda_module_loaded():
        return f"CUDA kernels not built ({_native.cuda_reason()})"
    if not torch.cuda.is_available():
        return f"no CUDA device ({_native.cuda_reason()})"
    return None


def available_devices() -> list[str]:
    """``["cpu"]`` plus ``"cuda"`` when the CUDA kernels can run here."""
    return ["cpu"] + (["cuda"] if cuda_skip_reason() is None else [])


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> None:
    """Seed random, numpy and torch from the test's id, so each test is reproducible alone."""
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> str:
    """Each device in turn; the CUDA case skips when it cannot run here."""
    if request.param == "cuda":
        reason = cuda_skip_reason()
        if reason is not None:
            pytest.skip(reason)
    return request.param


@pytest.fixture
def devices() -> list[str]:
    return available_devices()


@pytest.fixture
def cuda_device() -> str:
    """"cuda", or skip ("CUDA kernels not built" / "no CUDA device")."""
    reason = cuda_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return "cuda"
