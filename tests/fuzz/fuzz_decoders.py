"""Coverage-guided fuzzing of the decoders of untrusted input, with atheris (by hand, not in CI).

    pip install atheris
    python tests/fuzz/fuzz_decoders.py -max_total_time=600 [corpus_dir]

The first input byte picks the target: even, the token decoders (strict and
lenient ``decode``, ``allowed_next``, lenient ``state_after``) on the rest
read as little-endian int32 IDs, shifted into the default token space's UTI
blocks; odd, ``TokenSpace.from_json_bytes`` on the rest. Anything but the
documented errors (``UTIDecodeError``, ``TokenSpaceError``) is a crash.
The CI runs the same targets as bounded hypothesis tests
(``tests/test_fuzz_decoders.py``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import lumo_uti
    from lumo_uti import TokenSpace, TokenSpaceError, UTIDecodeError

UTI = lumo_uti.UTI(lumo_uti.load().token_space, lumo_uti.load().text_tokenizer)
BASE = UTI.token_space.base_rows - 64  # IDs near 0 fall on the markers, grid and code blocks


def fuzz_ids(data: bytes) -> None:
    ids = np.frombuffer(data[: len(data) // 4 * 4], dtype="<i4").astype(np.int64) + BASE
    try:
        strict = UTI.grammar.decode(ids)
    except UTIDecodeError:
        strict = None
    lenient = UTI.grammar.decode(ids, strict=False)
    if strict is not None and (lenient.segments != strict.segments or lenient.repairs):
        raise AssertionError("lenient decoding differs from strict decoding on a valid stream")
    UTI.grammar.decode(UTI.encode(lenient.segments))  # lenient output is a valid document
    try:
        UTI.allowed_next(ids)
    except UTIDecodeError:
        if strict is not None:
            raise
    UTI.grammar.state_after(ids)


def fuzz_token_space(data: bytes) -> None:
    try:
        ts = TokenSpace.from_json_bytes(data)
    except TokenSpaceError:
        return
    TokenSpace.from_json_bytes(ts.to_json_bytes())


def test_one_input(data: bytes) -> None:
    if not data:
        return
    (fuzz_ids if data[0] % 2 == 0 else fuzz_token_space)(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
