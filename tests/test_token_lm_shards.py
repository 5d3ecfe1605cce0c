"""lumo tokenlm train --data SHARDS/: the packer, --loss-on masks, the command, resume, fingerprint refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lumo_uti
from lumo_model.token_lm import TrainConfig, patch_load, train
from lumo_model.token_lm.packing import ShardPacker, Window, collate_windows, open_token_shards
from lumo_model.token_lm.tasks import LOSS_ON, loss_id_mask
from lumo_uti.cli import main
from lumo_uti.datasets import TokenShards, tokenize_dataset
from test_token_lm_helpers import tiny_qwen3, token_space

SEP = -7  # a separator no document holds


class FakeShards:
    """Documents of distinct IDs (document i holds 1000 * i + 0..n-1); counts the documents read."""

    def __init__(self, lengths: list[int]):
        self.docs = [np.arange(n, dtype=np.int32) + 1000 * i for i, n in enumerate(lengths)]
        self.lengths = np.array(lengths, dtype=np.int64)
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> np.ndarray:
        self.reads.append(i)
        return self.docs[i]


LENGTHS = [5, 1, 12, 3, 0, 7, 2, 9]


def _stream(packer: ShardPacker, windows: int) -> np.ndarray:
    """The stream rebuilt from consecutive windows (each repeats the previous one's last token)."""
    ws = [packer.window(g).ids for g in range(windows)]
    return np.concatenate([ws[0]] + [w[1:] for w in ws[1:]])


def _epoch_stream(shards: FakeShards, packer: ShardPacker, epoch: int) -> list[int]:
    order, _ = packer.epoch_order(epoch)
    out: list[int] = []
    for i in order:
        out += shards.docs[i].tolist() + ([packer.separator] if packer.separator is not None else [])
    return out


# ---------------------------------------------------------------------------
# The packer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("separator", [SEP, None], ids=["separator", "append_eos"])
@pytest.mark.parametrize("seq_len", [2, 4, 16, 64])
def test_windows_are_the_shuffled_stream_in_order(separator, seq_len) -> None:
    shards = FakeShards(LENGTHS)
    packer = ShardPacker(shards, seq_len, seed=3, separator=separator)
    assert packer.epoch_tokens == sum(LENGTHS) + (len(LENGTHS) if separator is not None else 0)
    n = 3 * packer.epoch_tokens // (seq_len - 1) + 1
    got = _stream(packer, n)
    want = sum((_epoch_stream(shards, packer, e) for e in range(len(got) // packer.epoch_tokens + 1)), [])
    assert got.tolist() == want[: len(got)]  # every document, in order, epoch after epoch
    for e in range(3):
        assert sorted(packer.epoch_order(e)[0].tolist()) == list(range(len(LENGTHS)))
    assert packer.epoch_order(0)[0].tolist() != packer.epoch_order(1)[0].tolist()  # reshuffled per epoch
    for g in range(n):
        w = packer.window(g)
        assert w.ids.shape == w.segment.shape == w.position.shape == w.doc_start.shape == (seq_len,)


def test_window_boundaries_segments_positions_and_doc_starts() -> None:
    shards = FakeShards([3, 2, 4])
    packer = ShardPacker(shards, 8, seed=0, separator=SEP)
    order = packer.epoch_order(0)[0].tolist()
    w = packer.window(0)
    docs = [shards.docs[i].tolist() + [SEP] for i in order]
    # Window 0 = the first 8 tokens of the stream, cut in document pieces.
    assert w.ids.tolist() == sum(docs, [])[:8]
    sizes = [len(d) for d in docs]
    want_seg, want_pos, want_start, left = [], [], [], 8
    for k, size in enumerate(sizes):
        take = min(size, left)
        want_seg += [k] * take
        want_pos += list(range(take))
        want_start += [True] + [False] * (take - 1)
        left -= take
        if not left:
            break
    assert w.segment.tolist() == want_seg and w.position.tolist() == want_pos and w.doc_start.tolist() == want_start
    # The separator ends its document's piece; the next piece starts a new document.
    for i in np.flatnonzero(w.ids == SEP):
        if i + 1 < 8:
            assert w.doc_start[i + 1] and w.segment[i + 1] == w.segment[i] + 1 and w.position[i + 1] == 0
    # A document cut by the window edge continues in the next window at position 0, not as a new document.
    nxt = packer.window(1)
    assert nxt.ids[0] == w.ids[-1] and nxt.position[0] == 0 and nxt.doc_start[0] == w.doc_start[-1]


def test_batches_are_pure_and_ranks_get_disjoint_targets() -> None:
    lengths = np.random.default_rng(0).integers(0, 13, 40).tolist()
    shards = FakeShards(lengths)
    world, bs, L = 3, 2, 6
    packer = ShardPacker(shards, L, seed=11, separator=SEP)
    fresh = ShardPacker(FakeShards(lengths), L, seed=11, separator=SEP)
    # Same (seed, step, rank): the same windows, whatever was read before and in any order.
    for step, rank in [(5, 2), (0, 0), (5, 2), (17, 1), (3, 0)]:
        a, b = packer.batch(step, bs, rank, world), fresh.batch(step, bs, rank, world)
        for x, y in zip(a, b):
            for f in ("ids", "segment", "position", "doc_start"):
                assert np.array_equal(getattr(x, f), getattr(y, f))
    other = ShardPacker(FakeShards(lengths), L, seed=12, separator=SEP)
    assert any(not np.array_equal(x.ids, y.ids) for x, y in zip(packer.batch(0, 4, 0, 1), other.batch(0, 4, 0, 1)))
    # Targets (every token but a window's first): the stream's tokens after its first, each exactly
    # once, split between the ranks. Document IDs are distinct within an epoch: stay in epoch 0.
    steps = (packer.epoch_tokens - 1) // (L - 1) // (world * bs)
    assert steps >= 3
    by_rank: list[list[int]] = [[] for _ in range(world)]
    for step in range(steps):
        for rank in range(world):
            for w in packer.batch(step, bs, rank, world):
                by_rank[rank] += [t for t in w.ids[1:].tolist() if t != SEP]
    stream = [t for t in _epoch_stream(shards, packer, 0)[1 : steps * world * bs * (L - 1) + 1] if t != SEP]
    assert sorted(sum(by_rank, [])) == sorted(stream) and len(set(stream)) == len(stream)
    assert all(by_rank) and all(not set(by_rank[a]) & set(by_rank[b]) for a in range(world) for b in range(a))


def test_a_window_reads_only_its_documents() -> None:
    shards = FakeShards([4] * 1000)
    packer = ShardPacker(shards, 8, seed=0, separator=SEP)
    w = packer.window(300)
    read = set(shards.reads)
    assert len(read) <= 3 and set((w.ids[w.ids != SEP] // 1000).tolist()) == read


def test_packer_rejects_empty_shards_and_short_windows() -> None:
    with pytest.raises(ValueError, match="no tokens"):
        ShardPacker(FakeShards([0, 0]), 8, 0, None)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        ShardPacker(FakeShards([3]), 1, 0, SEP)


# ---------------------------------------------------------------------------
# Loss masks and the attention mask
# ---------------------------------------------------------------------------


def _mixed_document(uti) -> list[int]:
    return uti.encode(["a caption", lumo_uti.ImageCodes(np.arange(6).reshape(2, 3)), " and sound",
                       lumo_uti.AudioCodes(np.zeros((2, 8), dtype=np.int64))])


def test_loss_on_selects_regions() -> None:
    uti = lumo_uti.load()
    ts = uti.token_space
    eos = ts.special_tokens["<|endoftext|>"]
    ids = np.array(_mixed_document(uti) + [eos])
    regions = [ts.region_name(int(i)) for i in ids]
    want = {
        "all": [True] * len(ids),
        "text": [r == "text" for r in regions],
        "new": [r in ("special", "grid", "image", "audio") for r in regions],
        "image": [r in ("grid", "image") or int(i) in (ts.id_of("<|image_start|>"), ts.id_of("<|image_end|>"))
                  for i, r in zip(ids, regions)],
        "audio": [r == "audio" or int(i) in (ts.id_of("<|audio_start|>"), ts.id_of("<|audio_end|>"))
                  for i, r in zip(ids, regions)],
    }
    for which in LOSS_ON:
        mask = loss_id_mask(ts, which)
        assert mask.shape == (ts.padded_vocab_size,)
        assert mask[torch.from_numpy(ids)].tolist() == want[which], which
    image = loss_id_mask(ts, "image")
    assert image[ts.block("image").offset : ts.block("image").end].all() and not image[ts.id_of("<|image_patch|>")]
    with pytest.raises(ValueError, match="expected one of"):
        loss_id_mask(ts, "video")


def test_collate_windows_labels_follow_loss_on_and_skip_document_starts() -> None:
    uti = lumo_uti.load()
    ts = uti.token_space
    eos = ts.special_tokens["<|endoftext|>"]
    doc = _mixed_document(uti) + [eos]
    shards = FakeShards([len(doc)] * 3)
    shards.docs = [np.array(doc, dtype=np.int32)] * 3
    packer = ShardPacker(shards, 50, seed=0, separator=None)
    windows = packer.batch(0, 2, 0, 1)
    for which in LOSS_ON:
        batch = collate_windows(windows, loss_id_mask(ts, which), torch.float32)
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.shape == labels.shape == (2, 50) and batch["attention_mask"].shape == (2, 1, 50, 50)
        starts = torch.from_numpy(np.stack([w.doc_start for w in windows]))
        keep = loss_id_mask(ts, which)[ids] & ~starts
        assert torch.equal(labels != -100, keep) and torch.equal(labels[keep], ids[keep])
        assert (labels[starts] == -100).all()
    img = collate_windows(windows, loss_id_mask(ts, "image"), torch.float32)["labels"]
    assert {ts.region_name(int(i)) for i in img[img != -100]} <= {"image", "grid", "special"}


def test_packed_window_equals_each_document_alone() -> None:
    """Block-diagonal mask + position reset: a packed window's logits are those of its pieces run alone."""
    model = tiny_qwen3(False, hidden=16)
    shards = FakeShards([5, 9, 3, 6])
    packer = ShardPacker(shards, 16, seed=1, separator=7)
    windows = packer.batch(0, 2, 0, 1)
    batch = collate_windows(windows, torch.ones(200000, dtype=torch.bool), torch.float32)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
        for b, w in enumerate(windows):
            for piece in np.unique(w.segment):
                where = np.flatnonzero(w.segment == piece)
                alone = model(input_ids=torch.from_numpy(w.ids[where])[None]).logits[0]
                torch.testing.assert_close(packed[b, where], alone, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# The command on real shards
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A saved tiny Qwen3 base, a corpus and its shards (with and without append_eos)."""
    d = tmp_path_factory.mktemp("tokenlm_shards")
    tiny_qwen3(False, hidden=16).save_pretrained(d / "base")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(10):
        doc = [f"document {i} says hello"]
        if i % 3 != 2:
            doc.append({"image_codes": rng.integers(0, 16384, (2, 1 + i % 3)).tolist()})
        doc += [" then ", {"audio_codes": rng.integers(0, 1024, (1 + i % 2, 8)).tolist()}]
        lines.append(doc)
    (d / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    uti = lumo_uti.load()
    tokenize_dataset(d / "corpus.jsonl", uti, out=d / "shards", shard_docs=4, progress=False)
    tokenize_dataset(d / "corpus.jsonl", uti, out=d / "shards_eos", shard_docs=4, progress=False, append_eos=True)
    return d


def _args(workdir: Path, out: Path, *extra: str, data: str | Path = "shards") -> list[str]:
    return ["tokenlm", "train", "--base", str(workdir / "base"), "--data", str(workdir / data), "--out", str(out),
            "--steps", "4", "--batch-size", "2", "--seq-len", "24", "--save-every", "2", "--log-every", "2",
            "--lr", "0.01", *extra]


def _rows(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter / "adapter.safetensors"))


def test_open_token_shards_separator_and_identity(workdir) -> None:
    ts = token_space()
    plain, sep, h1 = open_token_shards(workdir / "shards", ts)
    eos_shards, none, h2 = open_token_shards(workdir / "shards_eos", ts)
    assert sep == ts.special_tokens["<|endoftext|>"] and none is None and h1 != h2
    assert all(eos_shards[i][-1] == sep for i in range(len(eos_shards)))
    assert open_token_shards(workdir / "shards", ts)[2] == h1
    # Packed with or without append_eos, the stream is the same tokens.
    a = ShardPacker(plain, 24, 0, sep)
    b = ShardPacker(eos_shards, 24, 0, None)
    assert a.epoch_tokens == b.epoch_tokens and all(np.array_equal(a.window(g).ids, b.window(g).ids) for g in range(6))


def test_command_trains_from_shards_and_writes_an_adapter(workdir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(_args(workdir, out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "10 documents" in captured.err and "from token shards (separator added)" in captured.err
    assert "tokenlm: step 4/4 loss" in captured.err
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [2, 4] and all(np.isfinite(r["loss"]) for r in logs)
    assert {"text", "image", "audio"} <= set(logs[0]["loss_by_region"]) | set(logs[1]["loss_by_region"])
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())["state"]
    assert state["data_sha256"] == open_token_shards(workdir / "shards", token_space())[2]
    from transformers import AutoModelForCausalLM

    model = patch_load(AutoModelForCausalLM.from_pretrained(workdir / "base"), out / "adapter")
    ts = token_space()
    emb = model.get_input_embeddings()
    mean = emb.base_weight[: ts.text_vocab_size].float().mean(0)
    seen = ts.id_of("<|audio_start|>") - ts.base_rows
    unseen = ts.grid_id(200) - ts.base_rows
    assert not torch.allclose(emb.new_weight[seen].detach(), mean, rtol=0, atol=1e-4)
    assert torch.equal(emb.new_weight[unseen].detach(), mean)


def test_loss_on_image_trains_on_image_spans_only(workdir, tmp_path, capsys) -> None:
    out = tmp_path / "img"
    assert main(_args(workdir, out, "--loss-on", "image", data="shards_eos")) == 0, capsys.readouterr().err
    capsys.readouterr()
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    regions = set().union(*(r["loss_by_region"] for r in logs))
    assert regions and regions <= {"image", "grid", "special"}
    assert json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())["state"]["config"]["loss_on"] == "image"


def test_resume_from_shards_equals_uninterrupted(workdir, tmp_path) -> None:
    def cfg(out: Path, **kw) -> TrainConfig:
        base = dict(base=str(workdir / "base"), data=str(workdir / "shards"), out=str(out), steps=5,
                    batch_size=2, seq_len=24, save_every=2, log_every=1, lr=1e-2)
        return TrainConfig(**{**base, **kw})

    straight = train(cfg(tmp_path / "straight"), log=lambda s: None)

    class Killed(Exception):
        pass

    def kill_after_step_2_checkpoint(line: str) -> None:
        if "checkpoint" in line and "step-00000002" in line:
            raise Killed

    with pytest.raises(Killed):
        train(cfg(tmp_path / "resumed"), log=kill_after_step_2_checkpoint)
    lines: list[str] = []
    resumed = train(cfg(tmp_path / "resumed", resume=True), log=lines.append)
    assert any("resumed from" in x and "at step 2" in x for x in lines)
    assert resumed["step"] == straight["step"] == 5
    a, b = _rows(tmp_path / "straight" / "adapter"), _rows(tmp_path / "resumed" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Resuming with other shards or another seq_len is refused: the batches would differ.
    with pytest.raises(ValueError, match="--resume with another data file"):
        train(cfg(tmp_path / "resumed", resume=True, steps=7, data=str(workdir / "shards_eos")), log=lambda s: None)
    with pytest.raises(ValueError, match="--resume with seq_len 32, the run used 24"):
        train(cfg(tmp_path / "resumed", resume=True, steps=7, seq_len=32), log=lambda s: None)


def test_fingerprint_mismatch_is_refused(workdir, tmp_path, capsys) -> None:
    bad = tmp_path / "bad_shards"
    shutil.copytree(workdir / "shards", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["identity"]["token_space"]["fingerprint"] = "sha256:" + "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert TokenShards(bad).fingerprint == "sha256:" + "0" * 64
    code = main(_args(workdir, tmp_path / "run", data=bad))
    err = capsys.readouterr().err
    assert code == 2
    assert f"the token shards in {bad} were made with token space sha256:{'0' * 64}, the bundle has " \
           f"{token_space().fingerprint}" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_folder_without_manifest_is_refused(workdir, tmp_path, capsys) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    assert main(_args(workdir, tmp_path / "run", data=folder)) == 2
    assert "not a finished token-shard folder (no manifest.json)" in capsys.readouterr().err


def test_fused_and_materialized_losses_agree_on_packed_shards(workdir, tmp_path, capsys) -> None:
    # Packed windows carry position_ids and a block-diagonal mask: both loss paths must see them.
    logs = {}
    for loss in ("fused", "materialized"):
        out = tmp_path / loss
        assert main(_args(workdir, out, "--loss", loss)) == 0, capsys.readouterr().err
        logs[loss] = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]
    capsys.readouterr()
    assert len(logs["fused"]) == 2
    np.testing.assert_allclose(logs["fused"], logs["materialized"], rtol=1e-5)
