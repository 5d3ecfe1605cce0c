"""The sanitizer build must catch a bug: a read past a buffer's end.

Run by tests/sanitize/run.sh in its own process, before the tests, with the
environment of the test run: it lies to ``vq_search`` about a buffer (claims 4
rows of x where the tensor has 2, so the bindings' extent check passes) and
expects AddressSanitizer to abort the process with a heap-buffer-overflow
report. run.sh fails if this process exits normally.
"""

from __future__ import annotations

import torch

import plugin  # noqa: F401 - loads the sanitizer build as lumo_uti._C
from lumo_uti.ops import _native

module = _native.cpu()
x, cb = torch.randn(2, 3), torch.randn(5, 3)
codes, best = torch.empty(4, dtype=torch.int64), torch.empty(4)
module.vq_search((x.data_ptr(), 12), 0, 4, 3, _native.buffer(cb), 0, 5, 0, (0, 0), _native.buffer(codes),
                 _native.buffer(best), 1, 0)
print("selfcheck: the out-of-bounds read was not reported")
