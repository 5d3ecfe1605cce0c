"""Opening a bundle for the audit, and the ABI checks.

``lumo_uti.load`` refuses a bundle whose codec weights differ from what
``token_space.json`` records; the audit must instead report that, so it opens
the bundle step by step: the token space (fingerprint re-checked by
``TokenSpace.load``), the text tokenizer (hash re-checked), then each codec,
whose identity (per-file weight hashes, config hash) is compared with the
recorded one before the codec is used for the other checks anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import TokenizerMismatchError, TokenSpaceError
from ..grammar import Grammar
from ..token_space import TokenSpace
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


def _codec_dir(bundle_dir: Path, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise ValueError(f"codec path must be relative and inside the bundle, got {rel!r}")
    return bundle_dir / rel


def _identity_differences(recorded: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human lines for every identity field that differs (weight files by name)."""
    out = []
    rec_files, found_files = recorded.get("weight_files") or {}, found.get("weight_files") or {}
    for name in sorted(set(rec_files) | set(found_files)):
        a, b = rec_files.get(name), found_files.get(name)
        if a != b:
            if a is None:
                out.append(f"weight file {name} is not recorded in token_space.json")
            elif b is None:
                out.append(f"weight file {name} is recorded but missing")
            else:
                out.append(f"weight file {name} has hash {b}, recorded {a}")
    for key in ("weights_hash", "config_hash", "kind"):
        if recorded.get(key) != found.get(key):
            out.append(f"{key} is {found.get(key)}, recorded {recorded.get(key)}")
    return out


def open_bundle(directory: Path, device: str) -> tuple[OpenedBundle, list[Check]]:
    """Open ``directory`` as far as possible; returns it and the ABI checks.

    Never raises for a broken bundle: every problem becomes a failed ``abi.*``
    check. (A missing directory or ``token_space.json`` is a usage error the
    caller reports before calling this.)
    """
    from .. import codecs
    from ..text import load_text_tokenizer

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
        load_text_tokenizer(ts.tokenizer, directory)
        checks.append(Check("abi.tokenizer", "abi", PASS, f"tokenizer {ts.tokenizer.get('kind')} hash matches",
                            value=ts.tokenizer.get("hash")))
    except (TokenizerMismatchError, ValueError, OSError) as e:
        checks.append(Check("abi.tokenizer", "abi", FAIL, f"text tokenizer: {e}"))

    for modality, recorded in ts.codecs.items():
        name = f"abi.codec.{modality}"
        kind, options = recorded.get("kind"), dict(recorded.get("options") or {})
        try:
            path = _codec_dir(directory, recorded.get("path"))
            codec = codecs.load(f"{kind}:{path}", device=device, **options)
        except Exception as e:  # noqa: BLE001 - any load failure is an ABI finding, reported not raised
            opened.codec_problems[modality] = f"{modality} codec did not load: {e}"
            checks.append(Check(name, "abi", FAIL, opened.codec_problems[modality], details={"kind": kind}))
            continue
        found = codec.identity
        differences = _identity_differences(recorded, found)
        block = ts.codes_block(modality)
        geometry = (codec.codebook_size, codec.num_codebooks)
        if block is not None and geometry != (block.codebook_size, block.num_codebooks):
            differences.append(
                f"codec has {geometry[1]} codebook(s) of {geometry[0]} codes, block {block.name!r} has "
                f"{block.num_codebooks} of {block.codebook_size}"
            )
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
