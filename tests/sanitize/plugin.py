"""pytest plugin: run the tests against a sanitizer build of ``lumo_uti._C``.

Loaded by tests/sanitize/run.sh (``-p plugin``, this folder on PYTHONPATH).
Imports the module named by ``$LUMO_SANITIZED_MODULE`` as ``lumo_uti._C``
before any test imports the package's native module, so every op runs on it;
fails the session if that module is not a sanitizer build.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import lumo_uti


def _load() -> tuple[object, str]:
    path = os.environ.get("LUMO_SANITIZED_MODULE")
    if not path:
        raise RuntimeError("LUMO_SANITIZED_MODULE is not set (run tests/sanitize/run.sh)")
    spec = importlib.util.spec_from_file_location("lumo_uti._C", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sanitize = module.build_info().get("sanitize", "")
    if not sanitize:
        raise RuntimeError(f"{path} is not a sanitizer build (build_info()['sanitize'] is empty)")
    sys.modules["lumo_uti._C"] = module
    lumo_uti._C = module
    return module, sanitize


_MODULE, _SANITIZE = _load()

# Tests that fork a process with live threads. GCC 12's ASan runtime does not
# hold its allocator's locks across fork(), so the child can inherit one that
# another thread held and deadlock on its first allocation: a limitation of
# the runtime, not of the kernels (whose threads the tests above exercise).
_FORKING_TESTS = frozenset({"test_forked_child_starts_a_pool_of_its_own"})


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001, ARG001 - pytest hook
    import pytest

    for item in items:
        if getattr(item, "originalname", item.name) in _FORKING_TESTS:
            item.add_marker(pytest.mark.skip(reason="forks a threaded process: ASan's allocator may deadlock"))


def pytest_report_header(config) -> str:  # noqa: ANN001, ARG001 - pytest hook
    return f"lumo_uti._C: sanitizer build (-fsanitize={_SANITIZE}) {_MODULE.__file__}"


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001, ARG001 - pytest hook
    from lumo_uti.ops import _native

    # The ops really ran on the sanitizer build (and did not fall back to the reference).
    if _native.cpu() is not _MODULE:
        raise RuntimeError("lumo_uti.ops did not use the sanitizer build of lumo_uti._C")
