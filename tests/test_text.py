"""Tests of lumo_uti.text: the Qwen3 text tokenizer, HF tokenizers, identities.

Two independent encoders are compared throughout: ``QwenTiktokenTokenizer``
(tiktoken over qwen.tiktoken) and ``HFTextTokenizer`` over a Qwen2/3-format
``tokenizer.json`` that this file builds from the same ranks (byte-level BPE
vocab + merges, Split(regex) + ByteLevel pre-tokenizer, NFC, added tokens), so the
HF side runs Hugging Face's own BPE, regex engine, normaliser and added-token
matcher. Public goldens (tests/golden/qwen3_public.json) pin both to HF output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumo_uti._hashing import canonical_json, sha256_bytes, sha256_file
from lumo_uti.text import (
    HF_KIND,
    QWEN3_BPE_SIZE,
    QWEN3_PAT_STR,
    QWEN3_SPECIAL_TOKENS,
    QWEN3_VOCAB_SIZE,
    QWEN_KIND,
    QWEN_TIKTOKEN_SHA256,
    HFTextTokenizer,
    QwenTiktokenTokenizer,
    TextTokenizer,
    TokenizerMismatchError,
    load_text_tokenizer,
    qwen3_tokenizer,
)

GOLDEN = Path(__file__).parent / "golden" / "qwen3_public.json"
# Regression pin: changing it changes every token space's base tokenizer hash.
QWEN_IDENTITY_HASH = "sha256:00babb313f7a4461d7dfe4bce741095ea055acb0530b87a37e92b2aaef1d85be"
UTI_LOOKALIKES = ["<|image_start|>", "<|image_end|>", "<|image_patch|>", "<|audio_start|>", "<|audio_end|>"]
HF_SPECIAL_FLAGS = [True] * 14 + [False] * 12  # as in Qwen3's tokenizer.json added_tokens
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- fixtures


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE vocabulary spelling)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merge_of(ranks: dict[bytes, int], token: bytes) -> list[bytes]:
    """BPE of ``token``'s bytes with the merges ranked below it: the last two parts."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def write_qwen_tokenizer_json(ranks_file: Path, out_dir: Path) -> Path:
    """A Qwen2/Qwen3-format tokenizer.json (one merge per token, 151387 merges)."""
    ranks = {}
    for line in ranks_file.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    enc = _bytes_to_unicode()
    spell = lambda b: "".join(enc[x] for x in b)  # noqa: E731
    merges = []
    for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            parts = _merge_of(ranks, tok)
            assert len(parts) == 2, f"token {tok!r} is not reachable by BPE"
            merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": QWEN3_BPE_SIZE + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": HF_SPECIAL_FLAGS[i]}
            for i, t in enumerate(QWEN3_SPECIAL_TOKENS)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN3_PAT_STR}, "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {spell(b): r for b, r in ranks.items()}, "merges": merges},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"name_or_path": "Qwen/Qwen3-8B-Base"}))
    return out_dir


@pytest.fixture(scope="session")
def qwen() -> QwenTiktokenTokenizer:
    return qwen3_tokenizer()


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory, qwen) -> Path:
    return write_qwen_tokenizer_json(qwen.ranks_path, tmp_path_factory.mktemp("hf") / "qwen3")


@pytest.fixture(scope="session")
def hf(hf_dir) -> HFTextTokenizer:
    return HFTextTokenizer(hf_dir)


def _segment_nfc(tok: QwenTiktokenTokenizer, s: str) -> str:
    """``s`` with every non-special stretch NFC-normalised (what encode sees)."""
    pat = "|".join(map(re.escape, sorted(QWEN3_SPECIAL_TOKENS, key=len, reverse=True)))
    pieces = re.split(f"({pat})", s)
    return "".join(p if i % 2 else tok.normalize(p) for i, p in enumerate(pieces))


# ---------------------------------------------------------------- strategies

_tricky = st.sampled_from(
    [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "'s", "'LL", "a", "Z", "7", "42", "é", "e\u0301",
     "\u0338", ">", "<", "|", "你好", "🙂", "\u200d", "👍🏽", "\u0898\u0316", "x\u0308\u0323", "...", "==", "<|", "|>"]
)
_chars = st.characters(blacklist_categories=("Cs",))
texts = st.lists(st.one_of(st.text(_chars, max_size=12), _tricky), max_size=24).map("".join)
texts_with_specials = st.lists(
    st.one_of(st.text(_chars, max_size=8), _tricky, st.sampled_from(QWEN3_SPECIAL_TOKENS),
              st.sampled_from(UTI_LOOKALIKES)),
    max_size=16,
).map("".join)
lookalike_texts = st.lists(
    st.one_of(st.text(_chars, max_size=8), _tricky, st.sampled_from(UTI_LOOKALIKES),
              st.sampled_from(["<|im_start", "im_end|>", "<think", "<|endoftext", "<|image_pad", "</think"])),
    max_size=16,
).map("".join)


# ---------------------------------------------------------------- goldens

_public = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", _public, ids=[f"{c['source']}-{i}" for i, c in enumerate(_public)])
def test_public_goldens(qwen, hf, case):
    assert qwen.encode(case["text"]) == case["ids"]
    assert hf.encode(case["text"]) == case["ids"]
    assert qwen.decode(case["ids"]) == _segment_nfc(qwen, case["text"])


def test_hello_world(qwen):
    assert qwen.encode("Hello world") == [9707, 1879]
    assert qwen.decode([9707, 1879]) == "Hello world"


# Pinned IDs (computed here, cross-checked against the independent HF pipeline below).
PINNED = [
    ("ascii", "The quick brown fox jumps over the lazy dog.", [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13]),
    ("contractions", "I'LL say we'Ve don't 's", [40, 6, 4086, 1977, 582, 6, 42612, 1513, 944, 364, 82]),
    ("digits", "12345", [16, 17, 18, 19, 20]),
    ("decimal", "pi=3.14159, n=-42", [2493, 28, 18, 13, 16, 19, 16, 20, 24, 11, 308, 10829, 19, 17]),
    ("cjk_zh", "你好，世界！", [108386, 3837, 99489, 6313]),
    ("cjk_ja", "こんにちは、世界。カタカナ", [89015, 5373, 99489, 1773, 70393, 46207, 70393, 95352]),
    ("hangul", "안녕하세요 세계", [126246, 144370, 91145, 133196]),
    ("arabic", "مرحبا بالعالم", [124122, 29825, 124671, 124476, 129634]),
    ("emoji_zwj_family", "👨\u200d👩\u200d👧\u200d👦", [145367, 378, 235, 145233, 378, 235, 145665, 378, 235, 145988]),
    ("emoji_flag_skin", "🇯🇵 👍🏽 ❤\ufe0f", [146131, 145516, 61804, 235, 145375, 70470, 30543]),
    ("code_python", "def f(x):\n\treturn x ** 2  # square\n", [750, 282, 2075, 982, 853, 856, 3070, 220, 17, 220, 671, 9334, 198]),
    ("code_c", "int main(void) { return 0; }\r\n", [396, 1887, 4333, 8, 314, 470, 220, 15, 26, 1686]),
    ("tabs_newlines", "a\tb\t\tc\n\nd \n e", [64, 2233, 197, 1444, 271, 67, 715, 384]),
    ("crlf", "line1\r\nline2\r\n\r\n", [1056, 16, 319, 1056, 17, 871]),
    ("whitespace_run", "x     y      \n\n\n   z   ", [87, 257, 379, 981, 1406, 256, 1147, 262]),
    ("nbsp_ideographic_space", "a\u00a0b\u3000c\u2003d", [64, 4102, 65, 22441, 66, 378, 225, 67]),
    ("nfc_cafe", "caf\u00e9", [924, 58858]),
    ("nfd_cafe", "cafe\u0301", [924, 58858]),
    ("nfd_greek_upsilon", "\u03d2\u0301\u03d2\u0308\u017f\u0307", [149493, 139, 242, 149616]),
    ("nfd_hangul_jamo", "\u1112\u1161\u11ab\u1100\u1173\u11af", [23573, 83291]),
    ("combining_reorder", "a\u0308\u0323 q\u0307\u0323", [20229, 136, 230, 2804, 136, 96, 136, 229]),
    ("zalgo", "Z\u0351\u036b\u0343a\u0310\u0364l\u0352g\u0344o\u0350",
     [57, 137, 239, 137, 104, 136, 241, 64, 136, 238, 137, 97, 75, 137, 240, 70, 136, 230, 53839, 78, 137, 238]),
    # HF's NFC tables predate Unicode 14: U+0898 keeps its place before U+0316
    # (Python 3.11's unicodedata would reorder them and change the IDs).
    ("hf_old_unicode_nfc", "a\u0898\u0316 x\u0c3c\u0301", [64, 156, 95, 246, 136, 244, 856, 31305, 120, 53839]),
    ("special_chat", "<|im_start|>user\nhi<|im_end|>\n", [151644, 872, 198, 6023, 151645, 198]),
    ("special_think", "<think>\nok\n</think>\n\n", [151667, 198, 562, 198, 151668, 271]),
    # specials are split out before NFC, so ">" does not compose with U+0338 into U+226F
    ("special_then_u0338", "<|im_end|>\u0338", [151645, 136, 116]),
    ("uti_markers", "<|image_start|><|image_patch|><|audio_start|>",
     [27, 91, 1805, 4906, 91, 1784, 91, 1805, 39643, 91, 1784, 91, 16736, 4906, 91, 29]),
    ("partial_special", "<|im_start|<|im_start <|endoftext|",
     [27, 91, 318, 4906, 91, 27, 91, 318, 4906, 82639, 8691, 723, 427, 91]),
]


@pytest.mark.parametrize("name,text,ids", PINNED, ids=[p[0] for p in PINNED])
def test_pinned_goldens(qwen, hf, name, text, ids):
    assert qwen.encode(text) == ids
    assert hf.encode(text) == ids


def test_nfc_and_nfd_forms_encode_identically(qwen):
    assert qwen.encode("cafe\u0301 \u1112\u1161\u11ab") == qwen.encode("caf\u00e9 \ud55c")
    assert qwen.encode("\u03d2\u0301\u03d2\u0308\u017f\u0307") == qwen.encode("\u03d3\u03d4\u1e9b")


def test_python_nfc_quick_check_implies_hf_leaves_text_unchanged():
    """The tokenizer skips HF's NFC when Python's tables say the text is already NFC: that is exact only
    while HF's tables are no newer than Python's. Every code point, and every base + combining mark pair."""
    import unicodedata

    from tokenizers import normalizers

    nfc = normalizers.NFC().normalize_str
    singles = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    disagree = [s for s in singles if unicodedata.is_normalized("NFC", s) and nfc(s) != s]
    assert not disagree, [hex(ord(s)) for s in disagree[:10]]
    marks = [s for s in singles if unicodedata.combining(s)]
    bases = [chr(c) for c in [*range(0x41, 0x7B), *range(0xC0, 0x250), *range(0x900, 0x980), *range(0x1100, 0x1200)]]
    pairs = [a + m for a in bases + marks[::3] for m in marks]
    disagree = [p for p in pairs if unicodedata.is_normalized("NFC", p) and nfc(p) != p]
    assert not disagree, [[hex(ord(c)) for c in p] for p in disagree[:10]]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["a", "e", "\u0301", "\u0316", "\u0898", "\u0308", "\u1100", "\u1161", "\u11ab",
                                 "\u0915", "\u093c", "\u1e9b", "\u017f", "\u0307", " ", "\U0001d15e", "\U00016d40"]),
                max_size=12).map("".join))
def test_normalize_equals_hf_nfc(qwen, s):
    from tokenizers import normalizers

    assert qwen.normalize(s) == normalizers.NFC().normalize_str(s)


def test_digits_split_into_single_tokens(qwen):
    ids = qwen.encode("1234567890")
    assert ids == [qwen.encode(d)[0] for d in "1234567890"]
    assert qwen.decode(ids) == "1234567890"


# ---------------------------------------------------------------- HF cross-check


@SETTINGS
@given(texts)
def test_agrees_with_hf_on_random_text(qwen, hf, s):
    assert qwen.encode(s) == hf.encode(s)


@SETTINGS
@given(texts_with_specials)
def test_agrees_with_hf_with_specials(qwen, hf, s):
    assert qwen.encode(s) == hf.encode(s)
    assert qwen.encode(s, allow_special=False) == hf.encode(s, allow_special=False)


@SETTINGS
@given(st.lists(st.integers(0, QWEN3_VOCAB_SIZE - 1) | st.integers(QWEN3_BPE_SIZE - 300, QWEN3_VOCAB_SIZE - 1),
                max_size=40))
def test_decode_agrees_with_hf_on_any_ids(qwen, hf, ids):
    # includes invalid UTF-8 byte sequences: both replace maximal invalid subparts with U+FFFD
    assert qwen.decode(ids) == hf.decode(ids)


def test_hf_tokenizer_properties(qwen, hf):
    assert hf.vocab_size == QWEN3_VOCAB_SIZE == qwen.vocab_size
    # Qwen3 marks 14 of its 26 added tokens special; all 26 are matched in text
    assert hf.special_tokens == {t: QWEN3_BPE_SIZE + i for i, t in enumerate(QWEN3_SPECIAL_TOKENS[:14])}
    assert all(hf.encode(t) == [i] for t, i in qwen.special_tokens.items())
    assert hf.identity["name"] == "Qwen/Qwen3-8B-Base"
    assert isinstance(hf, TextTokenizer) and isinstance(qwen, TextTokenizer)


# ---------------------------------------------------------------- specials


def test_special_token_table(qwen):
    assert len(QWEN3_SPECIAL_TOKENS) == 26 and QWEN3_VOCAB_SIZE == 151669
    assert qwen.special_tokens == {t: 151643 + i for i, t in enumerate(QWEN3_SPECIAL_TOKENS)}
    assert qwen.special_tokens["<|endoftext|>"] == 151643
    assert qwen.special_tokens["<|im_start|>"] == 151644
    assert qwen.special_tokens["<|im_end|>"] == 151645
    assert qwen.special_tokens["<|image_pad|>"] == 151655
    assert qwen.special_tokens["<tool_call>"] == 151657
    assert qwen.special_tokens["<|fim_prefix|>"] == 151659
    assert qwen.special_tokens["<think>"] == 151667
    assert qwen.special_tokens["</think>"] == 151668


@pytest.mark.parametrize("token", QWEN3_SPECIAL_TOKENS)
def test_each_special_encodes_to_its_id(qwen, token):
    sid = qwen.special_tokens[token]
    assert qwen.encode(token) == [sid]
    assert qwen.encode(f"a{token}b") == [qwen.encode("a")[0], sid, qwen.encode("b")[0]]
    plain = qwen.encode(token, allow_special=False)
    assert len(plain) >= 3 and all(i < QWEN3_BPE_SIZE for i in plain)
    assert qwen.decode([sid]) == token == qwen.decode(plain)
    assert qwen.token_bytes(sid) == token.encode()


@pytest.mark.parametrize("marker", UTI_LOOKALIKES)
def test_uti_markers_are_plain_text(qwen, marker):
    ids = qwen.encode(marker)
    assert len(ids) > 1 and max(ids) < QWEN3_BPE_SIZE
    assert ids == qwen.encode(marker, allow_special=False)
    assert qwen.decode(ids) == marker


@SETTINGS
@given(lookalike_texts)
def test_lookalikes_never_become_specials(qwen, s):
    ids = qwen.encode(s)
    assert all(0 <= i < QWEN3_VOCAB_SIZE for i in ids)
    # a special ID appears exactly where the text holds a real special literal
    found = re.findall("|".join(map(re.escape, sorted(QWEN3_SPECIAL_TOKENS, key=len, reverse=True))), s)
    assert [i for i in ids if i >= QWEN3_BPE_SIZE] == [qwen.special_tokens[t] for t in found]
    assert max(qwen.encode(s, allow_special=False), default=0) < QWEN3_BPE_SIZE


# ---------------------------------------------------------------- round trip


@SETTINGS
@given(texts)
def test_round_trip(qwen, s):
    ids = qwen.encode(s)
    assert all(0 <= i < QWEN3_VOCAB_SIZE for i in ids)
    assert qwen.decode(ids) == qwen.normalize(s)
    assert qwen.encode(s) == ids  # deterministic
    assert b"".join(qwen.token_bytes(i) for i in ids) == qwen.normalize(s).encode()


@SETTINGS
@given(texts_with_specials)
def test_round_trip_with_specials(qwen, s):
    assert qwen.decode(qwen.encode(s)) == _segment_nfc(qwen, s)
    assert qwen.decode(qwen.encode(s, allow_special=False)) == qwen.normalize(s)


@SETTINGS
@given(st.text(st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFF), max_size=60))
def test_normalize_matches_unicodedata_on_common_text(qwen, s):
    import unicodedata

    # the marks whose NFC differs between HF's tables and Python's are outside
    # this range except a few (U+0898..U+08CE, U+0C3C, ...); skip those
    if not re.search("[\u0898-\u08ce\u09fe\u0c3c\u0d3b\u0d3c\u0eba\u1715\u1ac1-\u1aff\u1df6-\u1dff]", s):
        assert qwen.normalize(s) == unicodedata.normalize("NFC", s)


# ---------------------------------------------------------------- errors


def test_encode_rejects_bad_input(qwen, hf):
    with pytest.raises(TypeError, match="expected str, got bytes"):
        qwen.encode(b"abc")
    for tok in (qwen, hf):
        with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at index 2"):
            tok.encode("ab\ud800c")


def test_decode_rejects_out_of_range(qwen, hf):
    for tok in (qwen, hf):
        with pytest.raises(ValueError, match=r"token ID 151669 at position 1 is outside the text vocabulary \[0, 151669\)"):
            tok.decode([5, 151669])
        with pytest.raises(ValueError, match="token ID -1 at position 0"):
            tok.decode([-1])
    with pytest.raises(ValueError, match="token ID 151936"):
        qwen.token_bytes(151936)
    np = pytest.importorskip("numpy")
    assert qwen.decode(np.array([9707, 1879], dtype=np.int64)) == "Hello world"


# ---------------------------------------------------------------- identity


def test_qwen_identity(qwen, tmp_path):
    ident = qwen.identity
    assert ident == {"kind": QWEN_KIND, "name": "Qwen/Qwen3-8B-Base", "hash": QWEN_IDENTITY_HASH}
    json.dumps(ident)  # JSON-able
    assert qwen3_tokenizer() is qwen
    # the same ranks elsewhere: a separate instance, the same identity
    copy = tmp_path / "qwen.tiktoken"
    shutil.copyfile(qwen.ranks_path, copy)
    other = QwenTiktokenTokenizer(copy)
    assert other is not qwen and other.identity == ident
    assert sha256_file(qwen.ranks_path) == QWEN_TIKTOKEN_SHA256
    ident["hash"] = "mutated"
    assert qwen.identity["hash"] == QWEN_IDENTITY_HASH


def test_changed_ranks_file_is_refused(qwen, tmp_path):
    data = bytearray(qwen.ranks_path.read_bytes())
    # swap the ranks of the first two lines: still a valid file, different IDs
    lines = bytes(data).split(b"\n")
    a, b = lines[0].split(), lines[1].split()
    lines[0], lines[1] = a[0] + b" " + b[1], b[0] + b" " + a[1]
    bad = tmp_path / "qwen.tiktoken"
    bad.write_bytes(b"\n".join(lines))
    with pytest.raises(TokenizerMismatchError, match=re.escape(QWEN_TIKTOKEN_SHA256)) as exc:
        QwenTiktokenTokenizer(bad)
    assert sha256_file(bad) in str(exc.value)


def test_hf_identity_tracks_file_bytes(hf, hf_dir, tmp_path):
    ident = hf.identity
    assert ident["kind"] == HF_KIND
    assert ident["hash"] == "sha256:" + hashlib.sha256((hf_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert HFTextTokenizer(hf_dir).identity == ident
    # same content, other bytes (one more space): a different tokenizer as far as the ABI knows
    changed = tmp_path / "changed"
    changed.mkdir()
    spec = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"][0]["content"] = "<|eot|>"
    (changed / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    other = HFTextTokenizer(changed)
    assert other.identity["hash"] != ident["hash"]
    assert other.identity["name"] == "changed"  # no tokenizer_config.json: the directory name
    assert other.encode("<|eot|>") == [151643] and hf.encode("<|eot|>") != [151643]


def test_hf_rejects_missing_and_sparse(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTextTokenizer(tmp_path / "nowhere")
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "b": 7}, unk_token="[UNK]")).save(str(sparse / "tokenizer.json"))
    with pytest.raises(ValueError, match="largest ID is 7"):
        HFTextTokenizer(sparse)


# ---------------------------------------------------------------- load_text_tokenizer


def test_load_qwen(qwen):
    assert load_text_tokenizer(qwen.identity) is qwen
    wrong = {**qwen.identity, "hash": "sha256:" + "0" * 64}
    with pytest.raises(TokenizerMismatchError) as exc:
        load_text_tokenizer(wrong)
    msg = str(exc.value)
    assert "Qwen/Qwen3-8B-Base" in msg and wrong["hash"] in msg and QWEN_IDENTITY_HASH in msg
    assert isinstance(exc.value, ValueError)


def test_load_hf_from_bundle(hf, hf_dir):
    bundle, rel = hf_dir.parent, hf_dir.name
    ident = {**hf.identity, "path": rel}
    tok = load_text_tokenizer(ident, bundle)
    assert isinstance(tok, HFTextTokenizer) and tok.encode("Hello world") == [9707, 1879]
    with pytest.raises(TokenizerMismatchError, match="Qwen/Qwen3-8B-Base"):
        load_text_tokenizer({**ident, "hash": "sha256:" + "1" * 64}, bundle)
    with pytest.raises(ValueError, match="needs bundle_dir"):
        load_text_tokenizer(ident)
    for bad in ("../qwen3", "/etc", "a/../../x"):
        with pytest.raises(ValueError, match="inside the bundle"):
            load_text_tokenizer({**ident, "path": bad}, bundle)
    with pytest.raises(ValueError, match="needs 'path'"):
        load_text_tokenizer(hf.identity, bundle)


def test_load_rejects_unknown_kind_and_missing_hash(qwen):
    with pytest.raises(ValueError, match=r"unknown tokenizer kind 'spm'.*'hf-tokenizer', 'qwen3-tiktoken'"):
        load_text_tokenizer({"kind": "spm", "name": "x", "hash": "sha256:00"})
    with pytest.raises(ValueError, match="no 'hash'"):
        load_text_tokenizer({"kind": QWEN_KIND, "name": "Qwen/Qwen3-8B-Base"})


# ---------------------------------------------------------------- _hashing


def test_hashing_helpers(tmp_path):
    assert sha256_bytes(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    f = tmp_path / "blob"
    f.write_bytes(b"x" * (3 << 20))  # several read chunks
    assert sha256_file(f) == sha256_bytes(b"x" * (3 << 20))
    assert canonical_json({"b": [1, 2.5], "a": "é"}) == '{"a":"é","b":[1,2.5]}'.encode()
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical_json({"x": b"bytes"})
