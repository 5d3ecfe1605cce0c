"""Opening a bundle for the audit, and the ABI checks.

``lumo_uti.load`` refuses a bundle whose codec weights differ from what
``token_space.json`` records; the audit must instead report that, so it runs
the steps of ``lumo_uti.load`` one by one with the same functions: the token
space (fingerprint re-checked by ``TokenSpace.load``), the text tokenizer
(hash re-checked), then each codec, loaded without the hash check
(``open_codec(verify=False)``), whose identity is compared with the record
and whose geometry with its block (``check_codec_fits``) before the codec is
used for the other checks anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._paths import path_inside
from ..bundle import identity_differences, open_codec, open_text_tokenizer
from ..errors import BundleError, TokenSpaceError, UTIError
from ..grammar import Grammar
from ..token_space import TokenSpace
from ..uti import check_codec_fits
from .results import FAIL, PASS, Check


@dataclass
class OpenedBundle:
    """What the audit could open of a bundle (``token_space`` None: nothing else was tried)."""

    directory: Path
    token_space: TokenSpace | None = None
    grammar: Grammar | None = None
    codecs: dict[str, Any] = field(default_factory=dict)
    codec_problems: dict[str, str] = field(default_factory=dict)  # modality -> why it did not load


def _no_text(_: Any) -> Any:
    raise ValueError("the audit encodes code spans only (no text)")


def open_bundle(directory: Path, device: str) -> tuple[OpenedBundle, list[Check]]:
    """Open ``directory`` as far as possible; returns it and the ABI checks.

    Never raises for a broken bundle: every problem becomes a failed ``abi.*``
    check. (A missing directory or ``token_space.json`` is a usage error the
    caller reports before calling this.)
    """
    opened = OpenedBundle(directory)
    checks: list[Check] = []
    ts_file = directory / "token_space.json"
    try:
        ts = TokenSpace.load(ts_file)
    except (TokenSpaceError, OSError) as e:
        rule = getattr(e, "rule", None)
        edited = "was edited after it was written (fingerprint mismatch)"
        what = edited if rule == "fingerprint" else "does not validate"
        checks.append(Check("abi.token_space", "abi", FAIL, f"{ts_file} {what}: {e}", details={"rule": rule}))
        return opened, checks
    opened.token_space = ts
    opened.grammar = Grammar(ts, _no_text, _no_text)
    checks.append(Check("abi.token_space", "abi", PASS, f"fingerprint {ts.fingerprint} matches the contents",
                        value=ts.fingerprint))

    try:
        open_text_tokenizer(ts_file, ts)
        checks.append(Check("abi.tokenizer", "abi", PASS, f"tokenizer {ts.tokenizer.get('kind')} hash matches",
                            value=ts.tokenizer.get("hash")))
    except (UTIError, ValueError, OSError) as e:
        checks.append(Check("abi.tokenizer", "abi", FAIL, f"text tokenizer: {e}"))

    for modality, recorded in ts.codecs.items():
        name = f"abi.codec.{modality}"
        kind = recorded.get("kind")
        try:
            path = path_inside(directory, recorded.get("path"), f"{modality} codec in token_space.json")
            codec = open_codec(directory, modality, recorded, device, verify=False)
        except Exception as e:  # noqa: BLE001 - any load failure is an ABI finding, reported not raised
            opened.codec_problems[modality] = f"{modality} codec did not load: {e}"
            checks.append(Check(name, "abi", FAIL, opened.codec_problems[modality], details={"kind": kind}))
            continue
        found = codec.identity
        differences = identity_differences(recorded, found)
        try:
            check_codec_fits(ts, modality, codec)
        except BundleError as e:
            differences.append(str(e))
        details = {"kind": kind, "weights_hash": found.get("weights_hash"), "recorded": recorded.get("weights_hash")}
        if differences:
            checks.append(Check(name, "abi", FAIL,
                                f"{modality} codec in {path} does not match token_space.json: "
                                + "; ".join(differences),
                                details=dict(details, differences=differences)))
        else:
            checks.append(Check(name, "abi", PASS, f"{modality} codec weights and config hashes match",
                                value=found.get("weights_hash"), details=details))
        opened.codecs[modality] = codec
    return opened, checks
