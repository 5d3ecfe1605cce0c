"""One rule for a path a bundle records: relative, POSIX, inside the bundle, for every loader."""

from __future__ import annotations

import json
import shutil

import pytest

import lumo_uti
from lumo_uti._hashing import canonical_json, sha256_bytes
from lumo_uti._paths import path_inside
from lumo_uti.audit.abi import open_bundle
from lumo_uti.errors import BundleError
from lumo_uti.text import load_text_tokenizer

BAD = ["", "/etc", "../outside", "a/../../b", "codecs\\image", "..", 7, None]


@pytest.mark.parametrize("rel", BAD)
def test_path_inside_refuses(tmp_path, rel):
    with pytest.raises(BundleError, match="inside the bundle") as info:
        path_inside(tmp_path, rel, "thing")
    assert str(info.value).startswith("thing: ")


@pytest.mark.parametrize("rel", ["codecs/image", "tok", "a/./b"])
def test_path_inside_accepts(tmp_path, rel):
    assert path_inside(tmp_path, rel, "thing") == tmp_path / rel


@pytest.mark.parametrize("rel", ["../outside", "codecs\\image"])
def test_every_loader_applies_the_rule(tmp_path, rel):
    identity = {"kind": "hf-tokenizer", "hash": "sha256:" + "0" * 64, "path": rel}
    with pytest.raises(BundleError, match="inside the bundle"):
        load_text_tokenizer(identity, tmp_path)

    bundle = tmp_path / "bundle"
    shutil.copytree(lumo_uti.default_bundle_dir(), bundle)
    obj = json.loads((bundle / "token_space.json").read_text())
    obj["codecs"]["audio"]["path"] = rel
    obj.pop("fingerprint")
    obj["fingerprint"] = sha256_bytes(canonical_json(obj))  # a consistent file, only the path is bad
    (bundle / "token_space.json").write_text(json.dumps(obj))
    with pytest.raises(BundleError, match="inside the bundle"):
        lumo_uti.load(bundle)
    _, checks = open_bundle(bundle, "cpu")
    failed = {c.name: c.message for c in checks if c.verdict == "fail"}
    assert "inside the bundle" in failed["abi.codec.audio"]
