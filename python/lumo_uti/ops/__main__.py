"""``python -m lumo_uti.ops``: print backends() and the GPU code in the CUDA module as JSON."""

from __future__ import annotations

import json

from . import backends
from ._fatbin import embedded_archs


def main() -> int:
    info = backends()
    cuda_info = info["build_info"].get("cuda")
    if cuda_info is not None:
        cuda_info["embedded_archs"] = embedded_archs(cuda_info["path"])
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
