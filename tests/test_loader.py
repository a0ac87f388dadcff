"""Streaming loader: rank/worker splitting, equal batches per rank, corrupt data skipped and counted."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
import warnings

import numpy as np
import pytest
import torch
from conftest import png_bytes, write_shards
from PIL import Image

from glyphgen.data import loader as L
from glyphgen.data.loader import LoaderConfig, make_dataset, make_loader, split_batches
from glyphgen.text.tokenizer import CharTokenizer


def _as(monkeypatch, rank: int, world: int, worker: int, workers: int) -> None:
    # webdataset's pytorch_worker_info reads these before asking torch.distributed.
    for k, v in dict(RANK=rank, WORLD_SIZE=world, WORKER=worker, NUM_WORKERS=workers).items():
        monkeypatch.setenv(k, str(v))


def _keys(batches) -> list[str]:
    return [t for b in batches for t in b["text"]]


def rewrite_members(shard, change) -> None:
    """Rewrite a tar in place with each member's bytes replaced by `change(name, data)`."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = change(m.name, data)
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def edit_manifest(folder, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


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
    rewrite_members(
        tmp_path / "s" / "shard-000001.tar", lambda name, data: b"not a png" if name == "k00005.png" else data
    )
    cfg = LoaderConfig(
        shards=str(tmp_path / "s"), resolution=32, batch_size=1, num_workers=0, shuffle_buffer=0
    )
    with pytest.warns(UserWarning, match="skipped corrupt data") as caught:
        batches = list(make_loader(cfg))
    assert len(batches) == 12  # the stream cycles so the epoch still has its length
    seen = set(_keys(batches))
    assert "t5" not in seen and {"t8", "t9", "t10", "t11", "t4", "t6", "t7"} <= seen
    assert sum("skipped corrupt data" in str(w.message) for w in caught) >= 2


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


def _replay_cfg(tmp_path, **kw) -> LoaderConfig:
    write_shards(tmp_path / "own", 24, maxcount=4)
    write_shards(tmp_path / "old", 10, maxcount=5, size=64, prefix="r")  # another stage's size
    kw = {"resolution": 32, "batch_size": 4, "shuffle_buffer": 6, "replay_fraction": 0.25, **kw}
    return LoaderConfig(shards=str(tmp_path / "own"), replay=str(tmp_path / "old"), **kw)


def test_replay_puts_a_fixed_share_of_old_data_in_every_batch(tmp_path):
    loader = make_loader(_replay_cfg(tmp_path, num_workers=0))
    epoch = list(loader)
    assert len(loader) == len(epoch) == 8  # counted over the stage's own 24 samples, 3 per batch
    for batch in epoch:
        assert sorted(t[0] for t in batch["text"]) == ["r", "t", "t", "t"]
        assert batch["image"].shape == (4, 3, 32, 32)
    own = [t for b in epoch for t in b["text"] if t[0] == "t"]
    assert sorted(own) == sorted(f"t{j}" for j in range(24))  # every own sample once per epoch
    assert len({t for b in epoch for t in b["text"] if t[0] == "r"}) > 1
    resampled = dataclasses.replace(loader.dataset.cfg, resampled=True)
    assert len(make_loader(resampled)) == 8  # shards drawn, not split: the same count


def test_replay_resumes_mid_epoch_on_the_same_stream(tmp_path):
    cfg = _replay_cfg(tmp_path, num_workers=2, replay_fraction=0.5)
    uninterrupted = make_loader(cfg)
    list(uninterrupted)
    epoch1 = list(uninterrupted)
    resumed = make_loader(cfg, epoch_fn=lambda: 1)
    resumed.resume(1, 2)
    assert [b["text"] for b in resumed] == [b["text"] for b in epoch1[2:]]


@pytest.mark.parametrize(
    ("fraction", "says"), [(0.0, "must be in (0, 1)"), (1.0, "must be in (0, 1)"), (0.9, "leaves no sample")]
)
def test_replay_fraction_is_checked(tmp_path, fraction, says):
    with pytest.raises(ValueError, match=rf"replay_fraction.*{re.escape(says)}"):
        LoaderConfig(shards="s", replay="r", batch_size=4, replay_fraction=fraction)


def test_a_missing_replay_folder_is_named(tmp_path):
    write_shards(tmp_path / "own", 8, maxcount=4)
    cfg = LoaderConfig(shards=str(tmp_path / "own"), replay=str(tmp_path / "gone"), batch_size=2)
    with pytest.raises(FileNotFoundError, match="gone: no such shard folder"):
        make_loader(cfg)


# -- a shard folder is data: its manifest names files inside it, and is checked before anything runs --


@pytest.mark.parametrize(
    "name",
    [
        "pipe:touch PWNED",  # webdataset would run it through a shell
        "https://example.com/s.tar",
        "/dev/zero",
        "../elsewhere/shard-000000.tar",
        "sub/shard-000000.tar",
        "shard-000000.png",
        "two\nlines.tar",
    ],
)
def test_manifest_names_are_plain_tar_files_inside_the_folder(tmp_path, monkeypatch, name):
    write_shards(tmp_path / "s", 4, maxcount=4)
    edit_manifest(tmp_path / "s", lambda m: m["shards"][0].update(name=name))
    monkeypatch.chdir(tmp_path / "s")  # `Path(".") / "pipe:..."` is "pipe:...": the worst case
    with pytest.raises(ValueError, match=r"manifest\.json: shards\[0\]\.name .* is not a plain \.tar") as e:
        L.resolve_shards(".")
    assert repr(name)[:30] in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s" / "PWNED").exists()


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("shard-000000.tar", "shards[0] must be an object with a name and a count"),
        ({"count": 4}, "shards[0] lacks 'name'"),
        ({"name": 3, "count": 4}, "shards[0].name must be a string, got 3"),
        ({"name": "shard-000000.tar"}, "shards[0] lacks 'count'"),
        ({"name": "shard-000000.tar", "count": -1}, "shards[0].count must be a whole number >= 0"),
    ],
)
def test_manifest_entries_get_one_line_naming_the_key(tmp_path, entry, says):
    write_shards(tmp_path / "s", 4, maxcount=4)
    edit_manifest(tmp_path / "s", lambda m: m["shards"].__setitem__(0, entry))
    with pytest.raises(ValueError) as e:
        make_loader(LoaderConfig(shards=str(tmp_path / "s"), num_workers=0))
    assert str(e.value).startswith(f"{tmp_path / 's' / 'manifest.json'}: {says}"), e.value


def test_a_manifest_that_is_not_an_object_gets_one_line(tmp_path):
    write_shards(tmp_path / "s", 4, maxcount=4)
    (tmp_path / "s" / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="manifest.json"):
        make_loader(LoaderConfig(shards=str(tmp_path / "s"), num_workers=0))


def test_a_missing_or_special_shard_is_named_before_anything_is_read(tmp_path):
    write_shards(tmp_path / "s", 8, maxcount=4)
    shard = tmp_path / "s" / "shard-000001.tar"
    shard.unlink()
    cfg = LoaderConfig(shards=str(tmp_path / "s"), num_workers=0, batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json: lists shard-000001\.tar, which is not in"):
        make_loader(cfg)
    shard.symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(ValueError, match=r"manifest\.json: shard-000001\.tar is not a regular file"):
        make_loader(cfg)


def test_empty_and_zero_byte_shards_are_skipped_with_a_warning(tmp_path):
    write_shards(tmp_path / "s", 12, maxcount=4)
    tarfile.open(tmp_path / "s" / "shard-000001.tar", "w").close()  # a valid tar with no member
    (tmp_path / "s" / "shard-000002.tar").write_bytes(b"")
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=32, batch_size=2, num_workers=0)
    with pytest.warns(UserWarning, match="skipped 2 empty shard.*: shard-000001.tar, shard-000002.tar"):
        loader = make_loader(cfg)
    batches = list(loader)
    assert len(batches) == len(loader) == 2 and set(_keys(batches)) <= {"t0", "t1", "t2", "t3"}
    tarfile.open(tmp_path / "s" / "shard-000000.tar", "w").close()
    with pytest.raises(L.NoDataError, match="all 3 shards are empty"):
        make_loader(cfg)


def test_16bit_png_members_are_scaled_not_clipped(tmp_path):
    from glyphgen.data.shards import Sample, ShardOutput

    values = np.array([0, 16384, 32768, 49152, 65535], dtype=np.uint16)
    img = Image.fromarray(np.tile(values.repeat(8), (40, 1)))
    with ShardOutput(tmp_path / "s", maxcount=4) as out:
        out.write(Sample("k0", png_bytes(img), "gradient"))
    for channels in (1, 3):
        cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=40, channels=channels, batch_size=1)
        cfg.num_workers, cfg.shuffle_buffer = 0, 0
        image = next(iter(make_loader(cfg)))["image"][0]
        assert image.shape == (channels, 40, 40)
        assert image[0, 0, ::8].tolist() == [0, 64, 128, 191, 255]  # v / 65535 * 255, rounded


# -- check-shards: what the shards really hold, read once --


def test_check_shards_counts_what_it_read_once(tmp_path):
    from glyphgen.data.check import check_shards

    write_shards(tmp_path / "s", 8, maxcount=8)
    edit_manifest(tmp_path / "s", lambda m: m["shards"][0].update(count=80))
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=32, batch_size=4, num_workers=0)
    with pytest.warns(UserWarning, match="the manifest lists 80 samples, the shards hold 8"):
        summary = check_shards(cfg)
    assert summary.startswith(f"{tmp_path / 's'}: 8 images in 1 shards") and "skipped: none" in summary
    shard = tmp_path / "s" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:6000])  # cut inside a later sample
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        summary = check_shards(cfg)
    images = int(summary.split(": ")[1].split()[0])
    assert 0 < images < 8 and "skipped: 1 " in summary


def test_check_shards_reports_skips_counted_in_workers(tmp_path):
    from glyphgen.data.check import check_shards

    write_shards(tmp_path / "s", 8, maxcount=4)
    for i in (0, 1):
        rewrite_members(
            tmp_path / "s" / f"shard-00000{i}.tar",
            lambda name, data: b"junk" if name in ("k00001.png", "k00005.png") else data,
        )
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=32, num_workers=2)
    with pytest.warns(UserWarning, match="skipped 2 UnidentifiedImageError"):
        summary = check_shards(cfg)
    assert "6 images in 2 shards" in summary and "with 2 workers" in summary
    assert summary.endswith("skipped: 2 UnidentifiedImageError")
    for i in (0, 1):
        rewrite_members(tmp_path / "s" / f"shard-00000{i}.tar", lambda name, data: b"junk")
    with pytest.raises(L.NoDataError, match="no readable sample in its 2 shards"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_shards(cfg)
