"""The ``lumo`` command, run in-process (and once as the installed console script)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import lumo_uti
from lumo_uti.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "inspect", "encode", "decode", "bundle", "backends", "tokenlm", "vlm", "train-codec",
                    "codec-corpus", "audit", "tokenize-dataset", "shards"):
        assert f"    {command}" in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2


def test_inspect(capsys):
    code, out, _ = run(capsys, "inspect")
    assert code == 0
    ts = lumo_uti.load().token_space
    assert ts.fingerprint in out and "151936..151999" in out and "8 x 1024 codes" in out
    code, out, _ = run(capsys, "inspect", "--json")
    assert lumo_uti.TokenSpace.from_json(json.loads(out)) == ts


def test_encode_text_and_json(capsys):
    code, out, _ = run(capsys, "encode", "--text", "Hello world")
    assert (code, json.loads(out)) == (0, [9707, 1879])
    code, out, _ = run(capsys, "encode", "--text", "Hello world", "--json")
    obj = json.loads(out)
    assert obj["ids"] == [9707, 1879] and obj["num_tokens"] == 2 and obj["fingerprint"].startswith("sha256:")


def test_encode_document_then_decode_round_trip(capsys, tmp_path):
    doc = ["caption", {"image_codes": [[1, 2], [3, 4]]}, {"text": " sound"}, {"audio_codes": [list(range(8))]}, {"image_placeholder": 3}]
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    code, out, _ = run(capsys, "encode", "--doc", str(tmp_path / "doc.json"), "--out", str(tmp_path / "ids.json"))
    assert code == 0
    assert json.loads((tmp_path / "ids.json").read_text()) == json.loads(out)
    code, out, _ = run(capsys, "decode", str(tmp_path / "ids.json"), "--json")
    assert code == 0
    segments = json.loads(out)["segments"]
    assert segments == ["caption", {"image_codes": [[1, 2], [3, 4]]}, " sound", {"audio_codes": [list(range(8))]}, {"image_placeholder": 3}]
    code, out, _ = run(capsys, "decode", str(tmp_path / "ids.json"))
    assert "image codes 2x2" in out and "audio codes 1 frames x 8 codebooks" in out


def test_decode_errors_and_lenient(capsys, tmp_path):
    ids = lumo_uti.encode(["hi", lumo_uti.ImageCodes([[1, 2]])])[:-1]
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids)))
    code, _, err = run(capsys, "decode", str(tmp_path / "ids.txt"))
    assert code == 1 and "span.unterminated" in err
    code, out, _ = run(capsys, "decode", str(tmp_path / "ids.txt"), "--lenient", "--json")
    obj = json.loads(out)
    assert code == 0 and obj["repairs"][0]["rule"] == "span.unterminated"


@pytest.mark.parametrize(
    "content, message",
    [("[1, 2.5]", "expected a JSON list of integer IDs"), ("one two", "whitespace-separated"), ('{"x": 1}', "integer IDs")],
)
def test_decode_bad_files(capsys, tmp_path, content, message):
    (tmp_path / "ids.json").write_text(content)
    code, _, err = run(capsys, "decode", str(tmp_path / "ids.json"))
    assert code == 2 and message in err


def test_bad_documents_and_bundles(capsys, tmp_path):
    (tmp_path / "doc.json").write_text(json.dumps([{"image_codes": [[1.5]]}]))
    code, _, err = run(capsys, "encode", "--doc", str(tmp_path / "doc.json"))
    assert code == 2 and "document item 0 (image_codes)" in err
    (tmp_path / "doc.json").write_text(json.dumps([{"video": 1}]))
    code, _, err = run(capsys, "encode", "--doc", str(tmp_path / "doc.json"))
    assert code == 2 and "expected a string or an object" in err
    code, _, err = run(capsys, "encode", "--doc", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err
    code, _, err = run(capsys, "inspect", str(tmp_path / "nowhere"))
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "encode", "--text", "x", "--bundle", str(tmp_path / "nowhere"))
    assert code == 2 and "bundle not found" in err


def test_demo_encodes_and_decodes_real_media(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path / "demo"))
    assert code == 0 and "text round trip      exact" in out
    demo = tmp_path / "demo"
    for name in ("input_image.png", "decoded_image.png", "side_by_side.png", "input_audio.wav", "decoded_audio.wav",
                 "ids.json", "decoded_text.json", "summary.json", "report.md"):
        assert (demo / name).is_file(), name
    ids = json.loads((demo / "ids.json").read_text())
    segments = lumo_uti.decode(ids)
    assert [type(s).__name__ for s in segments][::2] == ["str", "str", "str"]
    from PIL import Image

    with Image.open(demo / "input_image.png") as a, Image.open(demo / "decoded_image.png") as b:
        assert a.size == b.size == segments[1].size
    assert isinstance(segments[3], lumo_uti.Audio) and segments[3].sample_rate == 16000
    summary = json.loads((demo / "summary.json").read_text())
    # the shipped codecs' quality on the demo's (unseen) photo and voice
    assert summary["round_trip_ok"] and summary["image_psnr_db"] > 22 and summary["audio_si_snr_db"] > 3
    assert (demo / "report.md").read_text().startswith("# lumo demo")


def test_backends_command(capsys):
    code, out, _ = run(capsys, "backends")
    assert code == 0 and json.loads(out)["cpu"] in (True, False)


@pytest.mark.skipif(shutil.which("lumo") is None, reason="console script not installed")
def test_console_script():
    proc = subprocess.run(["lumo", "encode", "--text", "Hello world"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [9707, 1879]
