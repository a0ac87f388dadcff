"""Configuration of a training stage: what to train, on what data, how, and how long
(docs/architecture.md, "The three stages").

A stage YAML names a model size and overrides its fields; the trainer settings map one to one onto
Lightning's `Trainer`, so a run scales from one CPU to many GPUs and nodes by configuration alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from glyphgen.checkpoint_io import Networks
from glyphgen.config import Choice, require
from glyphgen.data.build import BUILDERS
from glyphgen.data.loader import LoaderConfig
from glyphgen.diffusion import DiffusionConfig, SamplingOptions
from glyphgen.models.registry import MODELS, sized_model_config


class Stage(Choice):
    """The training stages; `glyphgen.training.stages.STAGE_CLASSES` holds the LightningModule of each."""

    pretrain_synthetic = "pretrain-synthetic"
    finetune_real = "finetune-real"
    superres = "superres"


class NanPolicy(Choice):
    """What a non-finite loss does (`trainer.nan_policy`)."""

    stop = "stop"
    skip = "skip"


DEFAULT_PROMPTS = ["glyph", "Hello\nworld", "OPEN 24/7", "quartz\nzephyr"]


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """AdamW learning rate after warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimizer steps."""
    decay_fraction: float = 0.0
    """Share of the run, at its end, over which the learning rate falls linearly to zero after its
    constant stretch (warm-up, stable, decay); 0: constant to the end. The run's length is
    trainer.max_steps, or the trainer.max_time budget's wall clock when that runs out first, so a
    run on a time budget cools down in its last minutes whatever its speed."""
    ema_decay: float = 0.9999
    """Decay of the exponential moving average of the weights (what export and sampling use).
    Early on the decay is min(ema_decay, (1 + n) / (10 + n)) after n updates, so short runs average too."""

    def __post_init__(self):
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(
            0 <= self.decay_fraction <= 1, "decay_fraction", f"must be in [0, 1], got {self.decay_fraction}"
        )


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    """"cpu", "gpu" or "auto"."""
    devices: Any = "auto"
    """Devices per node: a count, a list of indices, or "auto"."""
    num_nodes: int = 1
    """Nodes (launch with Lightning, `torchrun` or SLURM; the environment is detected)."""
    strategy: str = "auto"
    """"auto", "ddp", "ddp_spawn" (tests on CPU), ... Lightning's strategy names."""
    precision: str | None = None
    """"bf16-mixed", "16-mixed" (loss scaling), "32"; default: bf16-mixed on GPU, 32 on CPU."""
    max_steps: int = 1000
    """Optimizer steps to train for (the stage is complete when they are done)."""
    max_time: str | None = None
    """Optional wall-clock budget "DD:HH:MM:SS"; the stage then ends early and counts as complete."""
    gradient_clip_val: float | None = 1.0
    """Clip the gradient norm to this value (None: no clipping)."""
    accumulate_grad_batches: int = 1
    """Batches per optimizer step."""
    log_every_n_steps: int = 10
    """How often metrics are logged (CSV and TensorBoard)."""
    checkpoint_every_n_steps: int = 500
    """How often a checkpoint (and `last.ckpt`) is written."""
    compile: bool = False
    """Wrap the network in torch.compile."""
    channels_last: bool = False
    """Use the channels-last memory format for the network (faster convolutions on GPUs)."""
    nan_policy: NanPolicy = NanPolicy.stop
    """On a NaN/inf loss: "stop" (report the step and batch, save nothing broken) or "skip" the batch."""
    seed: int = 0
    """Seeds the initial weights and the per-step noise, timesteps and text dropout."""

    def __post_init__(self):
        require(self.max_steps > 0, "max_steps", f"must be > 0, got {self.max_steps}")
        self.nan_policy = NanPolicy.parse(self.nan_policy, "nan_policy")
        require(self.checkpoint_every_n_steps > 0, "checkpoint_every_n_steps", "must be > 0")
        require(self.accumulate_grad_batches >= 1, "accumulate_grad_batches", "must be >= 1")


@dataclass
class SampleConfig(SamplingOptions):
    """The sample grids drawn while training. Their sampling options default, like an exported
    bundle's, to the stage's diffusion config: the grids show what the bundle will draw."""

    every_n_steps: int = 500
    """Write a sample grid (and OCR metrics) every this many steps, and at the end (0: never)."""
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    """Held-out prompts sampled for the grids; `\\n` starts a new line."""
    weights: Networks = Networks.ema
    """Which network the grids sample: "ema" (what export writes), "raw" (the trained weights as they
    are) or "both" (a grid and metrics each, `samples/raw_cer` beside `samples/cer`): early in a run
    the average lags the trained weights."""
    ocr: bool = True
    """Read the samples back with the OCR and log character error rate and exact matches."""

    def __post_init__(self):
        super().__post_init__()
        self.weights = Networks.parse(self.weights, "weights")


@dataclass
class ShardBuild:
    kind: str | None = None
    """How to build `data.shards` when it is missing: a kind of `glyphgen make-shards` (synthetic,
    demo-real or real; None: never build)."""
    config: str | None = None
    """The `glyphgen make-shards` YAML for it (its `out` and `resolution` are set by the stage)."""
    overrides: list[str] = field(default_factory=list)
    """Dotlist overrides for the shard build."""

    def __post_init__(self):
        require(
            self.kind is None or self.kind in BUILDERS,
            "kind",
            f"must be one of {', '.join(BUILDERS)}, got {self.kind!r}",
        )


@dataclass
class StageData(LoaderConfig):
    """The training data stream: a `LoaderConfig` whose image side is the stage's model's."""

    resolution: int | None = None
    """Leave unset: the stage fills in its model's resolution (shards of another size are resized and
    cropped to it). A value given here must equal it."""

    def __post_init__(self):
        if self.resolution is None:
            dataclasses.replace(self, resolution=8)  # LoaderConfig's checks of every other field
        else:
            super().__post_init__()


@dataclass
class StageConfig:
    stage: Stage = Stage.pretrain_synthetic
    """Which stage this is: pretrain-synthetic, finetune-real or superres."""
    model_size: str = "tiny"
    """A named model size (tiny, tiny-sr, base64, base128, sr256)."""
    model: dict = field(default_factory=dict)
    """Overrides of the named size's fields, e.g. {text_attention: glide}."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """The diffusion process and sampling defaults."""
    data: StageData = field(default_factory=StageData)
    """The training data stream (at the model's resolution)."""
    build_shards: ShardBuild = field(default_factory=ShardBuild)
    """How to build the training shards when they are missing."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and EMA."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning trainer settings."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Periodic sample grids and OCR metrics."""
    localisation: float = 0.0
    """Weight of the character localisation loss (0: off): each character token's image-to-text
    attention in the weave layers is pulled onto its ink box. Needs weave attention and shards that
    store `char_boxes` (synthetic ones do); samples without boxes add nothing."""
    align_glyphs: bool = False
    """With `model.glyph_canvas`, move each training sample's canvas onto its text's ink box (the
    union of the `char_boxes` synthetic shards store), so the network learns to draw over the
    letters it is shown; sampling draws the canvas where it always is. Samples without boxes keep
    the plain canvas."""
    init_from: str | None = None
    """Checkpoint to warm-start from (weights only; set by the pipeline for stages 2 and 3)."""
    init_model_size: str | None = None
    """Model size of `init_from` when it differs (superres: the base it is sandwiched from)."""

    def __post_init__(self):
        require(self.localisation >= 0, "localisation", f"must be >= 0, got {self.localisation}")
        self.stage = Stage.parse(self.stage, "stage")
        require(
            self.model_size in MODELS,
            "model_size",
            f"must be one of {', '.join(MODELS)}, got {self.model_size!r}",
        )
        # The variance outputs and the loss that trains them are one choice, made in `diffusion`.
        sigma = self.model.setdefault("learn_sigma", self.diffusion.learn_sigma)
        require(
            sigma == self.diffusion.learn_sigma,
            "model.learn_sigma",
            f"is {sigma} but diffusion.learn_sigma is {self.diffusion.learn_sigma}; set diffusion.learn_sigma "
            "alone (the network's outputs follow it)",
        )
        model = sized_model_config(self.model_size, self.model)
        require(
            self.localisation == 0 or model.text_attention == "weave",
            "localisation",
            "needs model.text_attention weave (the loss reads the weave layers' attention), "
            f"got {str(model.text_attention)!r}",
        )
        require(
            not self.align_glyphs or model.glyph_canvas,
            "align_glyphs",
            "moves the glyph canvas: set model.glyph_canvas too",
        )
        side = model.resolution
        require(
            self.data.resolution in (None, side),
            "data.resolution",
            f"{self.data.resolution} is not the model's resolution {side}: the stage streams images at "
            "its model's size; remove the setting",
        )
        self.data.resolution = side
