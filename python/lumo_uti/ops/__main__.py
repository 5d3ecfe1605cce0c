"""``python -m lumo_uti.ops``: print backends() and the GPU code in the CUDA module as JSON."""

from __future__ import annotations

import json

from . import backends


def main() -> int:
    print(json.dumps(backends(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
