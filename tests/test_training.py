"""Training stages, warm starts, resume after SIGKILL, the pipeline runner, DDP (gloo), precision, NaN.

Everything runs for real on the CPU: tiny models, real synthetic shards in a temporary folder, real
Lightning trainers and checkpoints. Steps are few; what is checked is behaviour, not quality.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import textwrap
from datetime import timedelta
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
from conftest import trainer_with_callback
from lightning.pytorch.callbacks import Timer
from torch.overrides import TorchFunctionMode

from glyphgen.config import ConfigError, load_config, to_dict
from glyphgen.data.build import build
from glyphgen.inference import export_bundle, load_bundle
from glyphgen.training.callbacks import read_metric
from glyphgen.training.checkpoints import AtomicCheckpointIO, network_state, read_checkpoint
from glyphgen.training.config import Stage, StageConfig
from glyphgen.training.core import DiffusionCore, NonFiniteLossError, build_model_config, lr_factor
from glyphgen.training.pipeline import run_pipeline
from glyphgen.training.stages import STAGE_CLASSES, FinetuneReal, PretrainSynthetic, SuperRes
from glyphgen.training.train import train_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Synthetic shards at 32 px (8 shards of 12) and 64 px (4 shards of 12)."""
    root = tmp_path_factory.mktemp("shards")
    for res, count in ((32, 96), (64, 48)):
        build(
            "synthetic",
            overrides=["shard_size=12"],
            values={"out": str(root / f"s{res}"), "resolution": res, "count": count, "workers": 1},
        )
    return root


def stage_overrides(stage: str, shards, steps: int = 4, **extra) -> list[str]:
    size, res = ("tiny-sr", 64) if stage == "superres" else ("tiny", 32)
    values = {
        "stage": stage,
        "model_size": size,
        "data.shards": str(shards / f"s{res}"),
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.shuffle_buffer": 8,
        "trainer.max_steps": steps,
        "trainer.checkpoint_every_n_steps": 2,
        "trainer.log_every_n_steps": 1,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "sample.every_n_steps": 0,
        "optim.lr": 1e-3,
        "optim.ema_decay": 0.9,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def stage_cfg(stage: str, shards, steps: int = 4, **extra) -> StageConfig:
    return load_config(StageConfig, overrides=stage_overrides(stage, shards, steps, **extra))


def network(ckpt_path, prefix: str) -> dict[str, torch.Tensor]:
    state = read_checkpoint(ckpt_path)["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def test_every_stage_has_a_module():
    assert set(STAGE_CLASSES) == set(Stage)
    assert all(issubclass(module, DiffusionCore) for module in STAGE_CLASSES.values())
    assert STAGE_CLASSES["superres"] is SuperRes  # the names in configs look them up


def test_data_resolution_is_the_models():
    assert load_config(StageConfig, overrides=["model_size=tiny-sr"]).data.resolution == 64
    assert load_config(StageConfig, overrides=["model_size=tiny", "data.resolution=32"]).data.resolution == 32
    grown = ["model_size=tiny", "model.resolution=64", "model.attention_resolutions=[16]"]
    assert load_config(StageConfig, overrides=[*grown, "model.text_resolutions=[16]"]).data.resolution == 64
    with pytest.raises(ConfigError) as e:
        load_config(StageConfig, overrides=["model_size=tiny", "data.resolution=64"])
    assert str(e.value).startswith("data.resolution: 64 is not the model's resolution 32")
    assert str(e.value).endswith("(set by override 'data.resolution=64')")


def test_the_networks_variance_outputs_follow_the_diffusion_config():
    assert build_model_config(load_config(StageConfig)).learn_sigma is True
    cfg = load_config(StageConfig, overrides=["diffusion.learn_sigma=false"])
    assert build_model_config(cfg).learn_sigma is False and cfg.model["learn_sigma"] is False
    with pytest.raises(ConfigError) as e:
        load_config(StageConfig, overrides=["diffusion.learn_sigma=false", "model.learn_sigma=true"])
    assert str(e.value).startswith("model.learn_sigma: is True but diffusion.learn_sigma is False")


def test_without_learned_variance_a_stage_trains_exports_and_samples(tmp_path, shards):
    """The learning rung trains no variance (its solver never reads it): the network has half the
    output channels, the loss is the MSE alone, and the bundle samples with every sampler."""
    cfg = stage_cfg("pretrain-synthetic", shards, steps=2, **{"diffusion.learn_sigma": False})
    final = train_stage(cfg, tmp_path / "run")
    assert network(final, "ema.")["out.2.weight"].shape[0] == 3
    log = tmp_path / "run" / "logs" / "metrics.csv"
    loss = read_metric(log, "train/loss")
    assert loss and loss == read_metric(log, "train/mse")
    bundle = load_bundle(export_bundle(final, tmp_path / "bundle"), device="cpu")
    for sampler in ("ddpm", "ddim", "dpmpp2m"):
        images = bundle.sample(["hi", "AB"], steps="3", sampler=sampler, seed=1)
        assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8


def test_pretrain_stage_writes_its_run_folder(tmp_path, shards):
    extra = {"sample.every_n_steps": 4, "sample.steps": "3", "sample.weights": "both", "localisation": 0.1}
    cfg = stage_cfg("pretrain-synthetic", shards, steps=4, **extra)
    final = train_stage(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert final == run / "checkpoints" / "final.ckpt"
    assert json.loads((run / "complete.json").read_text())["step"] == 4
    for name in ("last.ckpt", "step-0000002.ckpt", "step-0000004.ckpt"):
        assert (run / "checkpoints" / name).is_file()
    assert (run / "loss.png").is_file() and (run / "samples" / "step_0000004.png").is_file()
    assert (run / "samples" / "step_0000004-raw.png").is_file()  # sample.weights=both
    header = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "train/loss_q0" in header and "samples/cer" in header
    assert "train/localisation" in header  # synthetic shards carry character boxes
    assert "samples/raw_cer" in header and "samples/raw_exact" in header
    assert load_config(StageConfig, [run / "config.yaml"]) == cfg
    ema, live = network(final, "ema."), network(final, "model.")
    assert ema.keys() == live.keys() and any(not torch.equal(ema[k], live[k]) for k in ema)


def test_missing_data_is_named_before_the_run_folder_is_made(tmp_path, shards):
    gone = tmp_path / "gone"
    for key in ("data.shards", "data.replay"):
        cfg = stage_cfg("pretrain-synthetic", shards, **{key: str(gone)})
        with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(gone))}: no such shard folder"):
            train_stage(cfg, tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_sample_grids_follow_their_seed_and_batch_size(shards):
    def grid(step: int, **sample) -> torch.Tensor:
        extra = {"sample.steps": "3", **{f"sample.{k}": v for k, v in sample.items()}}
        module = PretrainSynthetic(to_dict(stage_cfg("pretrain-synthetic", shards, **extra)))
        return module.sample_images(["A", "BC", "D"], step=step)

    one_call = grid(0)
    assert one_call.shape == (3, 3, 32, 32) and one_call.dtype == torch.uint8
    assert grid(0, batch_size=2).shape == one_call.shape  # two sampler calls
    assert torch.equal(grid(5), grid(0, seed=5))  # a grid's seed is sample.seed + its step
    assert not torch.equal(grid(1), one_call)


class HostReads(TorchFunctionMode):
    """Counts the calls that bring a tensor's value to the host: on a GPU each waits for the device."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_training_step_reads_the_device_once_except_on_logging_steps(tmp_path, shards, monkeypatch):
    reads, ema_reads = {}, []
    training_step, update_ema = DiffusionCore.training_step, DiffusionCore.update_ema

    def counted(self, batch, batch_idx):
        with HostReads() as mode:
            out = training_step(self, batch, batch_idx)
        reads[self.global_step] = mode.count
        return out

    def counted_ema(self):
        with HostReads() as mode:
            update_ema(self)
        ema_reads.append(mode.count)

    monkeypatch.setattr(DiffusionCore, "training_step", counted)
    monkeypatch.setattr(DiffusionCore, "update_ema", counted_ema)
    cfg = stage_cfg("pretrain-synthetic", shards, steps=6, **{"trainer.log_every_n_steps": 3})
    train_stage(cfg, tmp_path / "run")
    assert ema_reads == [0] * 6
    assert {s: n for s, n in reads.items() if s not in (2, 5)} == {0: 1, 1: 1, 3: 1, 4: 1}
    assert reads[2] == reads[5] == 2  # plus the timestep quartiles present in the batch
    rows = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    quartile_steps = {int(r["step"]) for r in logged if any(r[f"train/loss_q{q}"] for q in range(4))}
    assert quartile_steps == {2, 5}


def test_checkpoint_reader_rejects_foreign_and_truncated_files(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a glyphgen training checkpoint"):
        read_checkpoint(tmp_path / "foreign.ckpt")
    final = train_stage(stage_cfg("pretrain-synthetic", shards, steps=2), tmp_path / "run")
    (tmp_path / "cut.ckpt").write_bytes(final.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt")


def test_atomic_checkpoint_write_never_leaves_a_broken_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, path)

    def crash(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


KILL_SCRIPT = """
import os, signal, sys
import lightning as L
import glyphgen.training.train as train
from glyphgen.config import load_config, to_dict
from glyphgen.training.config import StageConfig

class KillAt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == {kill_at}:
            os.kill(os.getpid(), signal.{signal})

{with_callback}train.train_stage(load_config(StageConfig, overrides={overrides!r}), {run!r})
"""


def test_sigkill_and_resume_matches_an_uninterrupted_run(tmp_path, shards):
    overrides = stage_overrides("pretrain-synthetic", shards, steps=8, **{"data.shuffle_buffer": 4})
    uninterrupted = train_stage(load_config(StageConfig, overrides=overrides), tmp_path / "straight")

    run = tmp_path / "killed"
    # SIGKILL: a hard crash, no cleanup, no final checkpoint.
    script = KILL_SCRIPT.format(
        with_callback=trainer_with_callback("KillAt"),
        kill_at=5,
        signal="SIGKILL",
        overrides=overrides,
        run=str(run),
    )
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not (run / "complete.json").exists()

    resumed = train_stage(load_config(StageConfig, overrides=overrides), run)
    a, b = read_checkpoint(uninterrupted), read_checkpoint(resumed)
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    adam_a, adam_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(adam_a[i]["exp_avg"], adam_b[i]["exp_avg"]) for i in adam_a)


# The signal arrives after step 3's callbacks: SIGTERM stops before step 4 runs, SIGUSR1 after it.
@pytest.mark.parametrize(("signal", "saved_at"), [("SIGTERM", 3), ("SIGUSR1", 4)])
def test_preemption_signal_saves_last_checkpoint(tmp_path, shards, signal, saved_at):
    overrides = stage_overrides(
        "pretrain-synthetic", shards, steps=8, **{"trainer.checkpoint_every_n_steps": 100}
    )
    run = tmp_path / "run"
    script = KILL_SCRIPT.format(
        with_callback=trainer_with_callback("KillAt"),
        kill_at=3,
        signal=signal,
        overrides=overrides,
        run=str(run),
    )
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=300)
    assert proc.returncode == 1, proc.stderr.decode()[-3000:]  # a clean exit with an error, not a kill
    assert not (run / "complete.json").exists()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == saved_at
    final = train_stage(load_config(StageConfig, overrides=overrides), run)
    assert read_checkpoint(final)["global_step"] == 8


def test_the_learning_rate_warms_up_holds_then_cools_down_to_zero():
    assert [lr_factor(s, 4, 0.0, 0.0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(100, 4, 0.5, 0.2) == 1.0  # before the last fifth: constant
    assert lr_factor(100, 4, 0.9, 0.2) == pytest.approx(0.5)
    assert lr_factor(100, 4, 1.0, 0.2) == 0.0 and lr_factor(100, 4, 1.5, 0.2) == 0.0
    assert lr_factor(100, 4, 0.99, 0.0) == 1.0  # no decay: constant to the end
    with pytest.raises(ConfigError, match="decay_fraction"):
        load_config(StageConfig, overrides=["optim.decay_fraction=1.5"])


def test_a_run_cools_down_over_its_steps_or_its_time_budget(tmp_path, shards):
    cfg = stage_cfg("pretrain-synthetic", shards, steps=4, **{"optim.decay_fraction": 0.5})
    final = read_checkpoint(train_stage(cfg, tmp_path / "run"))
    assert final["global_step"] == 4
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0  # the last step is the end

    # On a time budget the clock counts, resumed time included (a checkpoint's Timer state).
    timer = Timer(duration=timedelta(seconds=100))
    timer.load_state_dict({"time_elapsed": {"train": 75.0}})
    core = DiffusionCore(to_dict(cfg))
    trainer = SimpleNamespace(global_step=1, max_steps=1000, callbacks=[timer], world_size=1)
    with patch.object(DiffusionCore, "trainer", trainer):
        assert core.run_progress() == pytest.approx(0.75)
        trainer.global_step = 900  # steps run out before the clock
        assert core.run_progress() == pytest.approx(0.9)


def test_warm_starts_load_weights_not_optimizer(tmp_path, shards):
    stage1 = train_stage(stage_cfg("pretrain-synthetic", shards, steps=2), tmp_path / "s1")
    # The finetune adds the channel-mean path, which stage 1 lacks: it starts at zero (the same function).
    path = {"model.mean_path": "true"}
    cfg2 = stage_cfg("finetune-real", shards, steps=2, init_from=str(stage1), **path)
    # A later step of a synthetic curriculum warm-starts the same way as the finetune.
    curriculum = stage_cfg("pretrain-synthetic", shards, steps=2, init_from=str(stage1))
    finetune = FinetuneReal(to_dict(cfg2))
    for module in (finetune, PretrainSynthetic(to_dict(curriculum))):
        assert "loaded all" in module.warm_start(str(stage1))
        for key, value in network_state(read_checkpoint(stage1)).items():
            assert torch.equal(module.model.state_dict()[key], value) and torch.equal(
                module.ema.state_dict()[key], value
            )
    started = {k: v for k, v in finetune.model.state_dict().items() if k.startswith("mean_path.")}
    assert started and all((v == 0).all() for v in started.values())
    # A stage that draws the glyph canvas cannot start from one that did not: its input conv differs.
    glyphs = FinetuneReal(
        to_dict(stage_cfg("finetune-real", shards, steps=2, **{"model.glyph_canvas": "true"}))
    )
    with pytest.raises(
        ValueError, match=r"input_blocks\.0\.0\.weight is \[32, 3, 3, 3\] but this stage's is \[32, 4"
    ):
        glyphs.warm_start(str(stage1))

    stage2 = train_stage(cfg2, tmp_path / "s2")
    ckpt2 = read_checkpoint(stage2)
    assert ckpt2["global_step"] == 2  # a new run from step 0, not a continuation
    assert all(s["step"] == 2 for s in ckpt2["optimizer_states"][0]["state"].values())  # fresh AdamW

    cfg3 = stage_cfg("superres", shards, steps=2, init_from=str(stage2), **path)
    sr = SuperRes(to_dict(cfg3))
    summary = sr.warm_start(str(stage2))
    assert "loaded" in summary
    base = network_state(ckpt2)
    sr_state = sr.model.state_dict()
    assert torch.equal(sr_state["middle_block.0.in_conv.weight"], base["middle_block.0.in_conv.weight"])
    assert torch.equal(sr_state["input_blocks.3.0.in_conv.weight"], base["input_blocks.1.0.in_conv.weight"])
    assert torch.equal(
        sr.ema.state_dict()["text_encoder.relative_bias.table.weight"],
        base["text_encoder.relative_bias.table.weight"],
    )
    assert torch.equal(sr_state["mean_path.gain.1.weight"], base["mean_path.gain.1.weight"])
    final3 = train_stage(cfg3, tmp_path / "s3")
    assert read_checkpoint(final3)["global_step"] == 2


def write_pipeline(tmp_path, shards, extra: dict | None = None) -> str:
    stages = []
    for name, init in (
        ("pretrain-synthetic", None),
        ("finetune-real", "pretrain-synthetic"),
        ("superres", "finetune-real"),
    ):
        # The finetune replays other shards (another size) in every batch, as the tiny pipeline does.
        replay = {"data.replay": str(shards / "s64")} if name == "finetune-real" else {}
        overrides = stage_overrides(name, shards, steps=2, **replay, **(extra or {}))
        yaml = "\n".join(o.replace("=", ": ", 1) for o in overrides)
        (tmp_path / f"{name}.yaml").write_text(_nested(yaml))
        stages.append(
            f"  - name: {name}\n    config: {tmp_path / f'{name}.yaml'}"
            + (f"\n    init_from: {init}" if init else "")
        )
    (tmp_path / "p.yaml").write_text(
        f"name: p\nrun_root: {tmp_path / 'runs'}\nstages:\n" + "\n".join(stages) + "\n"
    )
    return str(tmp_path / "p.yaml")


def _nested(flat_yaml: str) -> str:
    """key.sub: v lines -> nested YAML."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(
        OmegaConf.from_dotlist([line.replace(": ", "=", 1) for line in flat_yaml.splitlines()])
    )


def test_pipeline_runs_in_order_then_skips_finished_stages(tmp_path, shards, capsys):
    # With the shipped configs' switches on: warm starts and the sandwich carry both across stages.
    path = write_pipeline(tmp_path, shards, {"model.glyph_canvas": "true", "model.mean_path": "true"})
    finals = run_pipeline(path)
    assert [f.parent.parent.name for f in finals] == ["pretrain-synthetic", "finetune-real", "superres"]
    stamps = [f.stat().st_mtime_ns for f in finals]
    assert run_pipeline(path) == finals
    assert [f.stat().st_mtime_ns for f in finals] == stamps
    assert capsys.readouterr().out.count("complete, skipped") == 3
    with pytest.raises(ValueError, match="no stage named 'nope'"):
        run_pipeline(path, only="nope")


def test_ddp_spawn_two_ranks_trains_every_stage(tmp_path, shards):
    # 8 shards over 2 ranks: 48 samples = 12 batches per rank per epoch; 14 steps cross an epoch
    # boundary, where a rank with fewer batches would leave the other waiting forever.
    extra = {"trainer.strategy": "ddp_spawn", "trainer.devices": 2}
    path = write_pipeline(tmp_path, shards, extra)
    (tmp_path / "pretrain-synthetic.yaml").write_text(
        (tmp_path / "pretrain-synthetic.yaml").read_text().replace("max_steps: 2", "max_steps: 14")
    )
    finals = run_pipeline(path)
    assert [read_checkpoint(f)["global_step"] for f in finals] == [14, 2, 2]


def test_bf16_mixed_on_cpu(tmp_path, shards):
    final = train_stage(
        stage_cfg("pretrain-synthetic", shards, steps=2, **{"trainer.precision": "bf16-mixed"}), tmp_path
    )
    assert all(torch.isfinite(v).all() for v in network_state(read_checkpoint(final)).values())


def test_channels_last_and_compile_change_speed_not_the_result(tmp_path, shards, monkeypatch):
    # Dynamo traces the network for real; inductor's code generation (minutes on two cores) is
    # swapped for the eager backend, which runs the captured graphs as they are.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    runs = {
        name: train_stage(stage_cfg("pretrain-synthetic", shards, steps=3, **extra), tmp_path / name)
        for name, extra in [
            ("plain", {}),
            ("compile", {"trainer.compile": True}),
            ("cl", {"trainer.channels_last": True}),
        ]
    }
    states = {name: read_checkpoint(final)["state_dict"] for name, final in runs.items()}
    start = PretrainSynthetic(to_dict(stage_cfg("pretrain-synthetic", shards))).state_dict()
    # One copy of the network and its EMA, under the same keys either way: checkpoints interchange.
    assert {k.split(".")[0] for k in start} == {"model", "ema", "ema_updates"}
    assert all(state.keys() == start.keys() for state in states.values())
    assert any(not torch.equal(states["plain"][k], start[k]) for k in start)  # training moved the weights
    assert all(torch.equal(states["compile"][k], v) for k, v in states["plain"].items())
    # Channels-last convolutions sum in another order: the same losses to float precision (Adam
    # magnifies such differences in near-zero gradients, so the weights are not compared).
    losses = {name: read_metric(tmp_path / name / "logs" / "metrics.csv", "train/loss") for name in runs}
    assert [s for s, _ in losses["cl"]] == [s for s, _ in losses["plain"]] == [0, 1, 2]
    assert [v for _, v in losses["cl"]] == pytest.approx([v for _, v in losses["plain"]], rel=1e-5)


def test_checkpoints_with_the_old_training_alias_still_load(shards):
    module = PretrainSynthetic(to_dict(stage_cfg("pretrain-synthetic", shards)))
    state = module.state_dict()
    old = {
        "state_dict": {**state, **{f"_net.{k[6:]}": v for k, v in state.items() if k.startswith("model.")}}
    }
    module.on_load_checkpoint(old)
    module.load_state_dict(old["state_dict"])  # strict: nothing unexpected left
    assert old["state_dict"].keys() == state.keys()


class NaNAtFirstBatch(PretrainSynthetic):
    def prepare_batch(self, batch, generator):
        x0, kwargs = super().prepare_batch(batch, generator)
        return (x0 * float("nan") if self.global_step == 0 else x0), kwargs


def test_nan_loss_stops_or_skips(tmp_path, shards, monkeypatch):
    import glyphgen.training.train as train

    monkeypatch.setitem(train.STAGE_CLASSES, "pretrain-synthetic", NaNAtFirstBatch)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 0, batch 0"):
        train_stage(stage_cfg("pretrain-synthetic", shards, steps=2), tmp_path / "stop")
    assert not (tmp_path / "stop" / "checkpoints" / "final.ckpt").exists()
    final = train_stage(
        stage_cfg("pretrain-synthetic", shards, steps=2, **{"trainer.nan_policy": "skip"}), tmp_path / "skip"
    )
    assert read_checkpoint(final)["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in network_state(read_checkpoint(final)).values())
