"""Codecs over Hugging Face models: identical codes, media handling, bundles, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import lumo_uti
from lumo_uti import Audio, AudioCodes, BundleError, ImageCodes, codecs
from lumo_uti.codecs import CodecError, audio_io
from codec_models import TINY, hf_model, make, model_codes, reference_codes

IMAGE = ["janus", "chameleon", "emu3"]
AUDIO = ["encodec", "dac", "mimi"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_models")
    return {name: make(name, root) for name in TINY}


def _codec(models, name, **options):
    return codecs.load(f"{TINY[name][0]}:{models[name]}", **options)


# -- identical codes --------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE)
def test_image_codes_equal_the_models_own_encode(models, name):
    codec = _codec(models, name)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 8, 8)
    ours = codec.encode_tensor(x)
    assert ours.dtype == torch.int64 and ours.shape == (3, 4, 4)
    assert torch.equal(ours, reference_codes(name, models[name], x))


@pytest.mark.parametrize("name, options", [("encodec", {}), ("encodec", {"bandwidth": 10.0}), ("dac", {}),
                                           ("dac", {"num_quantizers": 2}), ("mimi", {}), ("mimi", {"num_quantizers": 2})])
def test_audio_codes_equal_the_models_own_encode(models, name, options):
    codec = _codec(models, name, **options)
    torch.manual_seed(2)
    x = torch.randn(2, 1, 800) * 0.3
    ours = codec.encode_tensor(x)
    ref = reference_codes(name, models[name], x, **options)
    assert ours.shape == ref.shape and ours.shape[-1] == codec.num_codebooks
    assert torch.equal(ours, ref)


def test_the_codec_does_not_touch_other_model_instances(models):
    _codec(models, "encodec")
    fresh = reference_codes("encodec", models["encodec"], torch.randn(1, 1, 400))
    assert fresh.shape[-1] == 2  # the untouched model still runs its own quantiser


def _quantizer_codebooks(name, model):
    """The codebook tensors the quantiser of ``model`` searches (one per stage)."""
    if name in IMAGE:
        return [model.quantize.embedding.weight]
    if name == "encodec":
        return [layer.codebook.embed for layer in model.quantizer.layers]
    if name == "dac":
        return [stage.codebook.weight for stage in model.quantizer.quantizers]
    split = model.quantizer  # mimi: embed is derived from embed_sum and cached (see below)
    layers = [*split.semantic_residual_vector_quantizer.layers, *split.acoustic_residual_vector_quantizer.layers]
    return [layer.codebook for layer in layers]


@pytest.mark.parametrize("name", IMAGE + AUDIO)
def test_codes_follow_a_codebook_written_after_the_first_encode(models, name):
    # The codecs keep their codebooks packed between calls; an in-place write
    # must reach the search, as it reaches the model's own quantiser.
    codec, plain = _codec(models, name), hf_model(name, models[name])
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8) if name in IMAGE else torch.randn(2, 1, 800) * 0.3
    before = codec.encode_tensor(x)
    assert torch.equal(before, model_codes(name, plain, x))
    with torch.no_grad():
        for model in (codec.model, plain):
            for codebook in _quantizer_codebooks(name, model):
                if name == "mimi":  # a new embed_sum, and the cached embed dropped: a new tensor
                    codebook.embed_sum.copy_(codebook.embed_sum.roll(1, dims=0))
                    codebook._embed = None
                else:
                    codebook.copy_(codebook.roll(1, dims=0))
    after = codec.encode_tensor(x)
    assert torch.equal(after, model_codes(name, plain, x))
    assert not torch.equal(after, before)


# -- media --------------------------------------------------------------------------------
def _image(mode, size=(11, 9)):
    rng = np.random.default_rng(0)
    if mode in ("RGB", "RGBA"):
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8), mode)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L")
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert("P")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_images_of_any_mode_encode(models, mode):
    codec = _codec(models, "janus")
    codes = codec.encode(_image(mode))
    assert len(codes) == 1 and codes[0].shape == (4, 4)
    assert int(codes[0].codes.max()) < codec.codebook_size


def test_batched_image_encode_equals_one_at_a_time(models):
    codec = _codec(models, "emu3")
    images = [_image("RGB", (16, 8)), _image("RGB", (8, 8)), _image("L", (16, 9))]
    batched = codec.encode(images)
    single = [codec.encode(img)[0] for img in images]
    assert batched == single
    assert [c.shape for c in batched] == [(4, 8), (4, 4), (4, 8)]  # sides / 2, 9 rounds to 8


def test_image_decode_round_trip_shapes(models):
    codec = _codec(models, "janus")
    images = codec.decode(codec.encode([_image("RGB"), _image("L")]))
    assert [img.size for img in images] == [(8, 8), (8, 8)] and images[0].mode == "RGB"
    with pytest.raises(CodecError, match="no decoder"):
        _codec(models, "chameleon").decode(ImageCodes(np.zeros((4, 4), dtype=int)))


def test_audio_of_any_rate_and_channel_count(models):
    codec = _codec(models, "encodec")
    t = torch.linspace(0, 1, 16000)
    stereo_16k = Audio(torch.stack([torch.sin(440 * t), torch.cos(220 * t)]) * 0.5, 16000)
    codes = codec.encode([stereo_16k, Audio(torch.sin(300 * t[:8000]) * 0.3, 8000)])
    assert [c.shape for c in codes] == [(1000, 2), (1000, 2)]  # 1 s at 1000 frames/s
    decoded = codec.decode(codes)
    assert all(a.sample_rate == 8000 and a.num_channels == 1 and a.num_samples == 8000 for a in decoded)
    assert all(torch.isfinite(a.waveform).all() for a in decoded)


def test_batched_audio_encode_equals_one_at_a_time(models):
    codec = _codec(models, "mimi")
    torch.manual_seed(3)
    clips = [Audio(torch.randn(1, n) * 0.2, 8000) for n in (800, 480, 800)]
    assert codec.encode(clips) == [codec.encode(c)[0] for c in clips]


def test_resampling_keeps_a_tone():
    t = torch.arange(48000) / 48000
    tone = torch.sin(2 * torch.pi * 440 * t)[None]
    down = audio_io.resample(tone, 48000, 16000)
    assert down.shape == (1, 16000)
    expected = torch.sin(2 * torch.pi * 440 * torch.arange(16000) / 16000)
    assert (down[0, 100:-100] - expected[100:-100]).abs().max() < 0.01


@pytest.mark.parametrize(
    "audio, message",
    [
        (Audio(torch.zeros(1, 0), 8000), "zero-length"),
        (Audio(torch.tensor([[0.0, float("nan"), 0.0]]), 8000), "non-finite sample at channel 0, index 1"),
    ],
)
def test_bad_audio(models, audio, message):
    with pytest.raises(ValueError, match=message):
        _codec(models, "encodec").encode(audio)


def test_bad_images_and_files(models, tmp_path):
    codec = _codec(models, "janus")
    with pytest.raises(ValueError, match="size 0x0"):
        codec.encode(Image.new("RGB", (0, 0)))
    with pytest.raises(TypeError, match="expected a Image or a list"):
        codec.encode("cat.png")
    (tmp_path / "bad.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(ValueError, match="cannot read audio file .*bad.wav"):
        Audio.load(tmp_path / "bad.wav")
    with pytest.raises(TypeError, match="expected a float waveform"):
        Audio(np.zeros((1, 4), dtype=np.int16), 8000)
    with pytest.raises(ValueError, match="sample_rate"):
        Audio(np.zeros(4, dtype=np.float32), 0)


def test_codec_directory_errors(models, tmp_path):
    with pytest.raises(CodecError, match="codec directory not found"):
        codecs.load(f"hf-janus:{tmp_path / 'nope'}")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CodecError, match="pickled weights are refused"):
        codecs.load(f"hf-janus:{tmp_path / 'pickled'}")
    with pytest.raises(CodecError, match="unknown codec kind 'hf-vqgan'"):
        codecs.load(f"hf-vqgan:{models['janus']}")
    with pytest.raises(CodecError, match="KIND:DIR"):
        codecs.load("hf-janus")
    with pytest.raises(CodecError, match="bandwidth 7.0 is not one of"):
        _codec(models, "encodec", bandwidth=7.0)
    with pytest.raises(CodecError, match="unknown options"):
        _codec(models, "janus", colour=True)


# -- bundles and the UTI ----------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return lumo_uti.create_bundle(out, image=f"hf-janus:{models['janus']}", audio=f"hf-encodec:{models['encodec']}")


def test_bundle_records_codec_identity(bundle, models):
    ts = lumo_uti.TokenSpace.load(bundle)
    assert ts.codecs["image"]["kind"] == "hf-janus" and ts.codecs["audio"]["options"] == {"bandwidth": 20.0}
    assert ts.block("image").codebook_size == 64 and ts.block("audio").num_codebooks == 2
    assert ts.codecs["image"]["weights_hash"] == _codec(models, "janus").weights_hash


def test_uti_encodes_and_decodes_media(bundle):
    uti = lumo_uti.load(bundle)
    t = torch.linspace(0, 0.5, 4000)
    doc = ["Describe:", _image("RGB"), "and", Audio(torch.sin(500 * t)[None] * 0.4, 8000)]
    ids = uti.encode(doc)
    assert ids == uti.encode(doc)
    segments = uti.decode(ids)
    assert segments[0] == "Describe:" and isinstance(segments[1], Image.Image) and isinstance(segments[3], Audio)
    codes = uti.decode_codes(ids)
    assert isinstance(codes[1], ImageCodes) and isinstance(codes[3], AudioCodes) and codes[3].shape == (500, 2)
    assert uti.encode_batch([doc, doc[:2]]) == [ids, uti.encode(doc[:2])]
    lenient = uti.decode(ids[:-2], strict=False)  # lose the end marker and half a frame
    repairs = lenient.repairs
    assert isinstance(lenient[3], Audio) and [r.rule for r in repairs][-1] == "audio.truncated_frame"
    with pytest.raises(TypeError, match="cannot encode dict"):
        uti.encode([{"x": 1}])


def test_bundle_with_changed_weights_is_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    weights = next((copy / "codecs" / "image").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"image codec weights .* files that differ: \['model.safetensors'\]"):
        lumo_uti.load(copy)


def test_create_bundle_refuses_to_overwrite_and_leaves_nothing_on_failure(bundle, tmp_path, models):
    with pytest.raises(BundleError, match="exists"):
        lumo_uti.create_bundle(bundle, image=f"hf-janus:{models['janus']}")
    with pytest.raises(CodecError):
        lumo_uti.create_bundle(tmp_path / "b", image=f"hf-janus:{tmp_path / 'missing'}")
    assert list(tmp_path.iterdir()) == []


def test_codec_geometry_must_match_the_token_space(models):
    with pytest.raises(BundleError, match="64 codes, but block 'image' has 1 of 16384"):
        lumo_uti.UTI(lumo_uti.load().token_space, lumo_uti.load().text_tokenizer, image_codec=_codec(models, "janus"))


# -- the command line -------------------------------------------------------------------
def test_cli_bundle_encode_decode_media(models, tmp_path, capsys):
    from lumo_uti.cli import main

    out = tmp_path / "bundle"
    code = main(["bundle", "create", "--image", f"hf-janus:{models['janus']}", "--audio",
                 f"hf-encodec:{models['encodec']}", "--audio-option", "bandwidth=10.0", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "codec image   hf-janus" in printed and "bandwidth=10.0" in printed
    _image("RGBA").save(tmp_path / "cat.png")
    Audio(torch.sin(torch.linspace(0, 300, 4000))[None] * 0.5, 8000).save(tmp_path / "a.wav")
    code = main(["encode", "--bundle", str(out), "--text", "Look:", "--image", str(tmp_path / "cat.png"),
                 "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path / "ids.json")])
    ids = json.loads(capsys.readouterr().out)
    assert code == 0 and ids == json.loads((tmp_path / "ids.json").read_text())
    code = main(["decode", "--bundle", str(out), str(tmp_path / "ids.json"), "--out", str(tmp_path / "dec")])
    assert code == 0
    index = json.loads((tmp_path / "dec" / "index.json").read_text())
    assert [s["type"] for s in index["segments"]] == ["text", "image", "audio"]
    assert Image.open(tmp_path / "dec" / "001.png").size == (8, 8)
    assert Audio.load(tmp_path / "dec" / "002.wav").sample_rate == 8000
    code = main(["encode", "--bundle", str(out), "--image", str(tmp_path / "a.wav")])
    assert code == 2 and "cannot read image file" in capsys.readouterr().err
    text_only = lumo_uti.create_bundle(tmp_path / "text_only")
    code = main(["encode", "--bundle", str(text_only), "--image", str(tmp_path / "cat.png")])
    assert code == 2 and "cannot encode" in capsys.readouterr().err
