"""The lumo command: every user error is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

from lumo_uti.bundle import create_bundle, export_bundle
from lumo_uti.cli import main
from lumo_uti.token_space import TokenSpace


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels in a few bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    good = export_bundle(root / "good")

    def variant(name, edit_ts=None, edit_dir=None):
        d = root / name
        shutil.copytree(good, d)
        if edit_ts is not None:
            data = TokenSpace.load(d / "token_space.json").to_json()
            data.pop("fingerprint")
            edit_ts(data)
            TokenSpace(data).save(d / "token_space.json")
        if edit_dir is not None:
            edit_dir(d)
        return d

    def edit_config(d):
        config = d / "codecs" / "audio" / "config.json"
        config.write_text(config.read_text().replace('"sample_rate": 16000', '"sample_rate": 8000'))

    return {
        "good": good,
        "missing-weights": variant("missing-weights", edit_dir=lambda d: (d / "codecs/audio/model.safetensors").unlink()),
        "missing-config": variant("missing-config", edit_dir=lambda d: (d / "codecs/image/config.json").unlink()),
        "unknown-kind": variant("unknown-kind", lambda t: t["codecs"]["audio"].update(kind="lumo-nope")),
        "unknown-tokenizer": variant("unknown-tokenizer", lambda t: t["base"]["tokenizer"].update(kind="sentencepiece")),
        "edited-config": variant("edited-config", edit_dir=edit_config),
        "no-audio": create_bundle(root / "no-audio", image=f"lumo-vq:{good / 'codecs' / 'image'}"),
    }


def _user_error(capsys, argv, expect: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"lumo {argv[0]}: "), err
    assert "Traceback" not in err and expect in lines[0], err


@pytest.mark.parametrize("name, expect", [
    ("missing-weights", "model.safetensors"),
    ("missing-config", "config.json is missing"),
    ("unknown-kind", "unknown codec kind 'lumo-nope'"),
    ("unknown-tokenizer", "unknown tokenizer kind 'sentencepiece'"),
    ("edited-config", "config_hash"),
])
@pytest.mark.parametrize("command", ["encode", "decode", "demo"])
def test_a_bad_bundle_is_one_line_and_exit_2(bundles, capsys, tmp_path, name, expect, command):
    ids = tmp_path / "ids.json"
    ids.write_text("[1, 2]")
    argv = {"encode": ["encode", "--bundle", str(bundles[name]), "--text", "hi"],
            "decode": ["decode", "--bundle", str(bundles[name]), str(ids)],
            "demo": ["demo", "--bundle", str(bundles[name]), "--out", str(tmp_path / "demo")]}[command]
    _user_error(capsys, argv, expect)


def test_a_decompression_bomb_png_is_refused(capsys, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(50_000, 50_000))
    _user_error(capsys, ["encode", "--image", str(bomb)], f"image file {bomb} is too large to decode")


def test_broken_images_are_refused(capsys, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
    broken = tmp_path / "broken.png"
    broken.write_bytes(buf.getvalue()[:60])
    _user_error(capsys, ["encode", "--image", str(broken)], f"cannot read image file {broken}")


def test_unwritable_outputs_are_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _user_error(capsys, ["encode", "--text", "hi", "--out", str(blocker / "ids.json")], "a_file")
    ids = tmp_path / "ids.json"
    ids.write_text("[9707]")
    _user_error(capsys, ["decode", str(ids), "--out", str(blocker)], "a_file")
    _user_error(capsys, ["demo", "--out", str(blocker)], "a_file")


def test_demo_needs_both_codecs(bundles, capsys, tmp_path):
    _user_error(capsys, ["demo", "--bundle", str(bundles["no-audio"]), "--out", str(tmp_path / "d")],
                "the demo needs a bundle with an image and an audio codec")


def test_bundle_create_errors_name_the_source(bundles, capsys, tmp_path):
    _user_error(capsys, ["bundle", "create", "--text", f"hf:{tmp_path / 'nope'}", "--out", str(tmp_path / "c")],
                "has no tokenizer.json")
    audio_dir = bundles["good"] / "codecs" / "audio"
    _user_error(capsys, ["bundle", "create", "--image", f"lumo-vq:{audio_dir}", "--out", str(tmp_path / "c")],
                f"{audio_dir / 'config.json'} has format 'lumo-rvq'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp folder named, none left


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_bundle_export_of_a_bundle_with_a_link(bundles, capsys, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(bundles["good"], src)
    os.symlink("..", src / "up")
    _user_error(capsys, ["bundle", "export", str(tmp_path / "out"), "--bundle", str(src)], "up is a symbolic link")

