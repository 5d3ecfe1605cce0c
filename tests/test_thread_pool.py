"""The CPU kernels' helper threads: steered off the calling thread's CPU (Linux).

On virtual machines a helper woken after a pause was queued on the caller's
CPU (both threads time-sharing one vCPU while the other idled), so the pool
restricts its helpers to the caller's allowed CPUs minus the caller's current
one. These tests look at the helpers' affinity masks from outside, in a fresh
process, the way a user's ``taskset`` would see them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and at least 2 allowed CPUs",
)

# Runs one multi-threaded vq_search and reports the allowed CPUs of the process
# and of every thread in it.
_PROBE = textwrap.dedent(
    """
    import json, os, torch
    torch.manual_seed(0)
    from lumo_uti.ops import vq_search
    x, cb = torch.randn(4096, 8), torch.randn(4096, 8)
    torch.set_num_threads(2)
    want = vq_search(x, cb)
    masks = {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
    print(json.dumps({"process": sorted(os.sched_getaffinity(0)), "threads": masks,
                      "codes_ok": bool(torch.equal(want, vq_search(x, cb)))}))
    """
)


def _probe(env_extra: dict[str, str], cpus: list[int] | None = None) -> dict:
    from lumo_uti import ops

    if not ops.backends()["cpu"]:
        pytest.skip("native CPU module not built")
    env = {**os.environ, **env_extra}
    env.pop("LUMO_FORCE_REFERENCE", None)
    cmd = [sys.executable, "-c", _PROBE]
    kwargs = {}
    if cpus is not None:
        kwargs["preexec_fn"] = lambda: os.sched_setaffinity(0, cpus)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, **kwargs)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_helpers_are_steered_off_the_callers_cpu() -> None:
    got = _probe({})
    process = set(got["process"])
    assert got["codes_ok"]
    # Some thread (a helper) is restricted to a proper, non-empty subset of the
    # process's CPUs that leaves out exactly one CPU (the caller's at call time).
    steered = [set(m) for m in got["threads"].values() if set(m) != process]
    assert steered, got
    for mask in steered:
        assert mask and mask < process and len(process - mask) == 1, got


def test_steering_can_be_switched_off() -> None:
    got = _probe({"LUMO_POOL_STEER": "0"})
    assert got["codes_ok"]
    assert all(set(m) == set(got["process"]) for m in got["threads"].values()), got


def test_one_allowed_cpu_leaves_the_masks_alone() -> None:
    cpu = min(os.sched_getaffinity(0))
    got = _probe({}, cpus=[cpu])
    assert got["process"] == [cpu]
    # Never an empty mask: every thread keeps the one CPU it may use.
    assert all(m == [cpu] for m in got["threads"].values()), got
