"""Streaming loader: rank/worker splitting, equal batches per rank, corrupt data skipped and counted."""

from __future__ import annotations

import tarfile

import pytest
import torch
from conftest import write_shards

from glyphgen.data import loader as L
from glyphgen.data.loader import LoaderConfig, make_dataset, make_loader, split_batches
from glyphgen.text.tokenizer import CharTokenizer


def _as(monkeypatch, rank: int, world: int, worker: int, workers: int) -> None:
    # webdataset's pytorch_worker_info reads these before asking torch.distributed.
    for k, v in dict(RANK=rank, WORLD_SIZE=world, WORKER=worker, NUM_WORKERS=workers).items():
        monkeypatch.setenv(k, str(v))


def _keys(batches) -> list[str]:
    return [t for b in batches for t in b["text"]]


def test_split_batches_takes_the_smallest_rank_worker_share():
    # 7 shards over 2 ranks x 2 workers: shares are shards {0,4},{2,6},{1,5},{3} -> 8, 6, 8, 4 samples.
    assert split_batches([4, 4, 4, 4, 4, 4, 2], batch_size=2, world_size=2, num_workers=2) == 2
    with pytest.raises(ValueError, match="3 shards cannot be split over 2 ranks x 2 workers"):
        split_batches([4, 4, 4], 2, 2, 2)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        split_batches([1, 4, 4, 4], 2, 2, 2)


def test_every_rank_gets_the_same_batches_and_no_sample_twice(tmp_path, monkeypatch):
    texts = write_shards(tmp_path / "s", 26, maxcount=4)
    cfg = LoaderConfig(
        shards=str(tmp_path / "s"), resolution=32, batch_size=2, num_workers=2, shuffle_buffer=8
    )
    per_rank: dict[int, list[str]] = {0: [], 1: []}
    for rank in (0, 1):
        for worker in (0, 1):
            _as(monkeypatch, rank, 2, worker, 2)
            dataset, batches_per_rank = make_dataset(cfg, CharTokenizer())
            batches = list(dataset)
            assert len(batches) == 2 and batches_per_rank == 4
            per_rank[rank] += _keys(batches)
    assert len(per_rank[0]) == len(per_rank[1]) == 8
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) <= set(texts)


def test_batch_contents(tmp_path):
    write_shards(tmp_path / "s", 12, maxcount=6, size=32)
    cfg = LoaderConfig(
        shards=str(tmp_path / "s"), resolution=16, batch_size=4, num_workers=0, shuffle_buffer=0
    )
    tok = CharTokenizer()
    batch = next(iter(make_loader(cfg, tok)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.uint8
    assert (batch["image"][:, 0] == batch["image"][:, 2]).all()  # grayscale repeated to RGB
    assert batch["text"] == ["t0", "t1", "t2", "t3"]
    assert [tok.decode(row) for row in batch["tokens"]] == batch["text"]
    assert batch["mask"].sum(1).tolist() == [4, 4, 4, 4]


def test_worker_processes_yield_len_batches_every_epoch(tmp_path):
    write_shards(tmp_path / "s", 40, maxcount=5)
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=32, batch_size=3, num_workers=2, channels=1)
    loader = make_loader(cfg)
    first, second = list(loader), list(loader)
    assert len(first) == len(second) == len(loader) == 12  # 4 shards x 5 per worker -> 6 batches each
    assert first[0]["image"].shape == (3, 1, 32, 32)
    assert sorted(_keys(first)) != _keys(first)  # shuffled
    assert _keys(first) != _keys(second)  # a different order each epoch


def test_resampled_epoch_length_is_exact(tmp_path, monkeypatch):
    write_shards(tmp_path / "s", 9, maxcount=3)
    _as(monkeypatch, 1, 4, 0, 1)
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=32, batch_size=2, num_workers=0, resampled=True)
    dataset, batches = make_dataset(cfg, CharTokenizer())
    assert batches == 1 and len(list(dataset)) == 1  # 9 samples // (2 per batch x 4 ranks)
    cfg.epoch_batches = 7
    dataset, batches = make_dataset(cfg, CharTokenizer())
    assert batches == 7 and len(list(dataset)) == 7


def test_truncated_shard_and_corrupt_member_are_skipped_and_counted(tmp_path):
    write_shards(tmp_path / "s", 12, maxcount=4)
    shard0 = tmp_path / "s" / "shard-000000.tar"
    shard0.write_bytes(shard0.read_bytes()[:2500])  # cut inside the second sample
    shard1 = tmp_path / "s" / "shard-000001.tar"
    with tarfile.open(shard1) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard1, "w") as tar:
        for m, data in members:
            data = b"not a png" if m.name == "k00005.png" else data
            m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))
    L._SKIPS.clear()
    cfg = LoaderConfig(
        shards=str(tmp_path / "s"), resolution=32, batch_size=1, num_workers=0, shuffle_buffer=0
    )
    with pytest.warns(UserWarning, match="skipped corrupt data"):
        batches = list(make_loader(cfg))
    assert len(batches) == 12  # the stream cycles so the epoch still has its length
    seen = set(_keys(batches))
    assert "t5" not in seen and {"t8", "t9", "t10", "t11", "t4", "t6", "t7"} <= seen
    assert sum(L.skip_counts().values()) >= 2


def test_pipe_url_and_missing_folder(tmp_path):
    write_shards(tmp_path / "s", 6, maxcount=3)
    spec = f"pipe:cat {tmp_path}/s/shard-{{000000..000001}}.tar"
    cfg = LoaderConfig(shards=spec, resolution=32, batch_size=2, num_workers=0, epoch_batches=3)
    assert len(list(make_loader(cfg))) == 3
    with pytest.raises(ValueError, match="set epoch_batches"):
        make_loader(LoaderConfig(shards=spec, num_workers=0))
    with pytest.raises(FileNotFoundError, match="no such shard folder"):
        make_loader(LoaderConfig(shards=str(tmp_path / "nothing")))


def test_unknown_characters_are_counted_in_the_loader(tmp_path):
    from conftest import png_bytes, text_image

    from glyphgen.data.shards import Sample, ShardOutput

    with ShardOutput(tmp_path / "s", maxcount=4) as out:
        for i, text in enumerate(["café", "ok", "über", "fine"]):
            out.write(Sample(f"k{i}", png_bytes(text_image("x")), text))
    tok = CharTokenizer()
    cfg = LoaderConfig(
        shards=str(tmp_path / "s"), resolution=32, batch_size=4, num_workers=0, shuffle_buffer=0
    )
    with pytest.warns(UserWarning, match="2 characters outside the alphabet"):
        batch = next(iter(make_loader(cfg, tok)))
    assert batch["text"][0] == "café" and tok.decode(batch["tokens"][0]) == "caf\ufffd"


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_mid_epoch_continues_the_same_stream(tmp_path, workers):
    write_shards(tmp_path / "s", 40, maxcount=5)
    cfg = LoaderConfig(
        shards=str(tmp_path / "s"), resolution=32, batch_size=2, num_workers=workers, shuffle_buffer=6
    )
    uninterrupted = make_loader(cfg)
    epoch0, epoch1 = list(uninterrupted), list(uninterrupted)
    resumed = make_loader(cfg, epoch_fn=lambda: 1)  # a restarted run, told its epoch by the trainer
    resumed.resume(1, 5)
    after = list(resumed)
    assert [b["position"] for b in after] == [(1, i) for i in range(5, len(epoch1))]
    assert [b["text"] for b in after] == [b["text"] for b in epoch1[5:]]
    assert epoch0[0]["position"] == (0, 0)
    assert [b["text"] for b in epoch0] != [b["text"] for b in epoch1]
