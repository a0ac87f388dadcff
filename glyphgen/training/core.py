"""The LightningModule core every stage shares: the network, the diffusion loss, classifier-free-
guidance text dropout, an EMA of the weights, NaN handling, logging and sampling hooks
(docs/architecture.md, "The three stages").

Per-step randomness (timesteps, noise, text dropout) comes from a generator seeded by (seed, global
step, rank, batch index), not from global RNG state, so a run resumed from a checkpoint draws the
same numbers as one that was never interrupted (on the same kind of device).

The training step reads one value back from the accelerator, the non-finite check, which must be
decided before the optimizer steps. Everything else stays on the device between logging steps, so
the host can queue the next kernels while the device works.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from glyphgen.config import load_config
from glyphgen.data.loader import LoaderConfig, make_loader
from glyphgen.diffusion import create_diffusion, drop_text, randn_from, sample, with_options
from glyphgen.diffusion.pixels import to_uint8, to_unit
from glyphgen.models.glyphs import text_box
from glyphgen.models.localisation import localisation_loss, recording_attention
from glyphgen.models.registry import sized_model_config
from glyphgen.models.unet import ZERO_STARTED, UNet, UNetConfig
from glyphgen.text.alphabet import NULL
from glyphgen.text.tokenizer import CharTokenizer, TokenizerConfig
from glyphgen.training.checkpoints import network_state, read_checkpoint
from glyphgen.training.config import StageConfig

QUARTILES = [f"train/loss_q{q}" for q in range(4)]
"""The logged loss of each quarter of the timesteps (q0: the least noisy), drawn in `loss.png`."""


def lr_factor(step: int, warmup_steps: int, progress: float, decay_fraction: float) -> float:
    """The learning rate's multiplier after `step` optimizer steps: a linear warm-up, then 1, then a
    linear fall to 0 over the last `decay_fraction` of the run (`progress` in [0, 1] is how much
    of it is done)."""
    ramp = min(1.0, (step + 1) / max(1, warmup_steps))
    if decay_fraction == 0:
        return ramp
    return ramp * min(1.0, max(0.0, (1 - progress) / decay_fraction))


def ema_decay(updates: int, cap: float) -> float:
    """The EMA's decay at its update number `updates`: it ramps up with the count (so a short run
    averages recent weights, not its initial ones) until it reaches the configured `cap`."""
    return min(cap, (1 + updates) / (10 + updates))


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite and the stage's nan_policy is "stop" (or skipping went on too long)."""


MAX_SKIPPED_IN_A_ROW = 20
"""With nan_policy=skip, this many non-finite batches in a row stop the run: the weights are broken."""


def stage_config(config: dict | StageConfig) -> StageConfig:
    """A StageConfig from its plain-dict form (as stored in checkpoints), validated."""
    return config if isinstance(config, StageConfig) else load_config(StageConfig, values=config)


def build_model_config(cfg: StageConfig, size: str | None = None) -> UNetConfig:
    """The named size with the stage's `model` overrides applied (validated, errors name the key)."""
    return sized_model_config(size or cfg.model_size, cfg.model)


class DiffusionCore(L.LightningModule):
    """Trains `model` with the hybrid diffusion loss; keeps `ema`, the averaged copy that sampling
    and export use. Stages override `prepare_batch` (what x0 and the extra conditioning are)."""

    samples_from_batch = False
    """Whether sample grids need a training batch (superres: its low-res images)."""

    def __init__(self, config: dict):
        super().__init__()
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"config": config})
        self.cfg = stage_config(config)
        self.model_cfg = build_model_config(self.cfg)
        torch.manual_seed(self.cfg.trainer.seed)
        self.model = UNet(self.model_cfg)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.diffusion = create_diffusion(self.cfg.diffusion)
        self.tokenizer = CharTokenizer(TokenizerConfig(max_length=self.model_cfg.text.max_length))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.data_position: tuple[int, int] | None = None
        self._skipped_in_a_row = 0
        self._ema_count = 0  # ema_updates mirrored on the host: the decay needs it every step
        object.__setattr__(self, "_net", self.model)  # the network as training calls it (see configure_model)
        self._loader = None

    # -- setup ----------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.cfg.trainer.channels_last:
            self.model.to(memory_format=torch.channels_last)
        net = torch.compile(self.model) if self.cfg.trainer.compile else self.model
        # Set past nn.Module's registration: as a submodule this alias would put a second copy of
        # every weight in the state dict, under keys that differ with and without compile.
        object.__setattr__(self, "_net", net)

    def loader_config(self) -> LoaderConfig:
        """The stage's data stream (at the model's resolution: `StageConfig` sees to it)."""
        return dataclasses.replace(
            self.cfg.data,
            char_boxes=self.cfg.data.char_boxes or self.cfg.localisation > 0 or self.cfg.align_glyphs,
        )

    def train_dataloader(self):
        self._loader = make_loader(
            self.loader_config(), self.tokenizer, epoch_fn=lambda: self.trainer.current_epoch
        )
        if self.data_position is not None:  # resuming: skip what this epoch already trained on
            epoch, index = self.data_position
            self._loader.resume(epoch, index + 1)
        return self._loader

    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda step: lr_factor(
                step, o.warmup_steps, self.run_progress() if o.decay_fraction else 0.0, o.decay_fraction
            ),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def run_progress(self) -> float:
        """How much of the run is done, in [0, 1]: steps against max_steps, or the wall clock against
        the max_time budget (counted across resumes), whichever is further. The clock is rank 0's,
        so every rank steps with the same learning rate."""
        trainer = self.trainer
        done = trainer.global_step / trainer.max_steps if trainer.max_steps > 0 else 0.0
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        remaining = timer.time_remaining("train") if timer is not None else None
        if remaining is not None:
            elapsed = timer.time_elapsed("train")
            clock = elapsed / max(elapsed + remaining, 1e-9)
            done = max(done, trainer.strategy.broadcast(clock) if trainer.world_size > 1 else clock)
        return min(1.0, done)

    # -- training -------------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._ema_count = int(self.ema_updates)  # after any checkpoint restore

    def step_generator(self, batch_idx: int) -> torch.Generator:
        """This step's generator, on the training device: numbers drawn on the host would each cost a
        blocking copy (and a stream synchronisation) on the way to a GPU."""
        seed = hash((self.cfg.trainer.seed, self.global_step, self.global_rank, batch_idx)) % (2**63)
        return torch.Generator(device=self.device).manual_seed(seed)

    def prepare_batch(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """(x0 in [-1, 1], extra model kwargs) from a loader batch. The base stages use the image as is."""
        return to_unit(batch["image"]), {}

    def training_step(self, batch: dict, batch_idx: int):
        g = self.step_generator(batch_idx)
        x0, kwargs = self.prepare_batch(batch, g)
        if self.cfg.trainer.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        tokens, mask = drop_text(batch["tokens"], batch["mask"], self.cfg.diffusion.p_uncond, g)
        t = self.diffusion.sample_t(x0.shape[0], x0.device, g)
        noise = randn_from(x0.shape, g, x0.device, x0.dtype)
        if self.cfg.align_glyphs and "boxes" in batch:
            kwargs["text_box"] = text_box(batch["boxes"])
        localise = self.cfg.localisation > 0 and "boxes" in batch
        with recording_attention(self.model) if localise else contextlib.nullcontext() as maps:
            terms = self.diffusion.training_losses(
                self._net, x0, t, {"tokens": tokens, "mask": mask, **kwargs}, noise=noise
            )
        if localise:
            terms["localisation"] = localisation_loss(maps, self._kept_boxes(batch, tokens))
            terms["loss"] = terms["loss"] + self.cfg.localisation * terms["localisation"]
        loss = terms["loss"].mean()
        self.data_position = batch.get("position")
        if self._non_finite(loss, batch_idx, batch):
            return None  # nan_policy=skip: no optimizer step for this batch, on every rank
        self._log_terms(terms, t, loss, x0.shape[0])
        return loss

    @staticmethod
    def _kept_boxes(batch: dict, tokens: torch.Tensor) -> torch.Tensor:
        """The batch's character boxes, padded to the trained tokens' length, zeroed where the
        transcript was dropped for guidance (the null text has no characters)."""
        boxes, length = batch["boxes"], batch["tokens"].shape[1]
        kept = tokens[:, 1] != NULL  # a dropped transcript is the null text, BOS NULL EOS
        boxes = torch.nn.functional.pad(boxes, (0, 0, 0, tokens.shape[1] - length))
        return boxes * kept[:, None, None]

    def _non_finite(self, loss: torch.Tensor, batch_idx: int, batch: dict) -> bool:
        bad = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")  # every rank decides the same
        if not bad.item():  # the step's one read from the device
            self._skipped_in_a_row = 0
            return False
        where = f"step {self.global_step}, batch {batch_idx} (position {batch.get('position')}, texts {batch['text'][:3]})"
        if self.cfg.trainer.nan_policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss at {where}; stopping with the last good checkpoint kept"
            )
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise NonFiniteLossError(
                f"{self._skipped_in_a_row} non-finite losses in a row, the last at {where}"
            )
        self.print(f"warning: non-finite loss at {where}; batch skipped")
        return True

    def _log_terms(self, terms: dict, t: torch.Tensor, loss: torch.Tensor, batch: int) -> None:
        # Tensors stay on the device; Lightning reads them back only on logging steps.
        self.log("train/loss", loss, prog_bar=True, batch_size=batch)
        self.log("train/mse", terms["mse"].mean(), batch_size=batch)
        self.log("train/vlb", terms["vlb"].mean(), batch_size=batch)
        if "localisation" in terms:
            self.log("train/localisation", terms["localisation"].mean(), batch_size=batch)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self._log_quartiles(terms["loss"].detach(), t)

    def _log_quartiles(self, losses: torch.Tensor, t: torch.Tensor) -> None:
        """The loss per quarter of the timestep range (where the model is learning), from this batch;
        only on logging steps, since which quarters are present must be read back from the device."""
        quartile = (t * 4) // self.diffusion.num_steps
        sums = torch.zeros(4, device=losses.device).index_add_(0, quartile, losses.float())
        counts = torch.bincount(quartile, minlength=4)
        for q, n in enumerate(counts.tolist()):
            if n:
                self.log(QUARTILES[q], sums[q] / n, batch_size=n)

    def optimizer_step(self, *args, **kwargs) -> None:
        # The EMA follows every optimizer step here, before any callback (ModelCheckpoint) saves it.
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        n = self._ema_count
        decay = ema_decay(n, self.cfg.optim.ema_decay)
        ema, live = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema, live, 1 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            b_ema.copy_(b)
        self.ema_updates += 1
        self._ema_count += 1

    # -- checkpoints ----------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["glyphgen"] = {
            "data_position": self.data_position,
            "kind": "stage",
            "stage": self.cfg.stage.value,  # a plain string: weights-only loads refuse other classes
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints written before the training alias stopped being a submodule carry it twice.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("_net.")]:
            del state[key]
        position = checkpoint.get("glyphgen", {}).get("data_position")
        valid = isinstance(position, list | tuple) and len(position) == 2
        if position is not None and not (valid and all(type(v) is int and v >= 0 for v in position)):
            raise ValueError(f"glyphgen.data_position: expected [epoch, index], got {position!r:.60}")
        self.data_position = tuple(position) if position is not None else None

    def warm_start_state(self, path: str) -> dict[str, torch.Tensor]:
        """The EMA weights of the checkpoint this stage starts from. Its network must predict what
        this stage trains to predict: eps weights read as v (or the reverse) are noise."""
        ckpt = read_checkpoint(path)
        stored = ckpt
        for key in ("hyper_parameters", "config", "diffusion"):
            stored = stored.get(key) if isinstance(stored, dict) else None
        # Checkpoints from before the choice existed (no key) were eps.
        theirs = stored.get("parameterization", "eps") if isinstance(stored, dict) else "eps"
        ours = self.cfg.diffusion.parameterization
        if theirs != ours:
            raise ValueError(
                f"{path}: its network predicts {theirs} but this stage's diffusion.parameterization is "
                f"{ours}; set it to {theirs} or train the source stage again"
            )
        return network_state(ckpt)

    def warm_start(self, path: str) -> str:
        """Start from an earlier stage of the same size: all of its EMA weights (superres overrides)."""
        state = self.warm_start_state(path)
        own = self.model.state_dict()
        for key, value in state.items():
            if key in own and own[key].shape != value.shape:
                raise ValueError(
                    f"{path}: its {key} is {list(value.shape)} but this stage's is {list(own[key].shape)}; "
                    "the two stages' model settings differ (model_size, or model keys such as glyph_canvas)"
                )
        self.load_weights(state)
        return f"warm start: loaded all {len(state)} tensors of {path} (EMA weights)"

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Warm start (weights only) of both the live and the EMA network from a network state dict.
        Zero-started tensors the source lacks (`ZERO_STARTED`) keep this network's zeros."""
        own = self.model.state_dict()
        state = {**{k: v for k, v in own.items() if k.startswith(ZERO_STARTED)}, **state}
        self.model.load_state_dict(state)
        self.ema.load_state_dict(state)

    # -- sampling -------------------------------------------------------------------------------------

    def sample_kwargs(self, texts: list[str], batch: dict | None) -> dict:
        """Conditioning for sampling `texts`; the superres stage adds the low-res images."""
        tokens, mask = self.tokenizer.batch(texts)
        return {"tokens": tokens.to(self.device), "mask": mask.to(self.device)}

    @torch.no_grad()
    def sample_images(
        self, texts: list[str], batch: dict | None = None, step: int = 0, weights: str = "ema"
    ) -> torch.Tensor:
        """Samples of the EMA (or, with `weights="raw"`, the trained) network for `texts` as uint8
        [B, C, H, W], with the grids' sampling options (by default the stage's diffusion config, as
        its exported bundle would draw them), `sample.batch_size` at a time, seeded with
        `sample.seed + step` so each grid draws new noise."""
        options = with_options(self.cfg.sample, seed=self.cfg.sample.seed + step).resolve(self.cfg.diffusion)
        r, size = self.model_cfg.resolution, options.batch_size
        kwargs = self.sample_kwargs(texts, batch)
        generator = torch.Generator().manual_seed(options.seed)
        net = self.ema if weights == "ema" else self.model
        training = net.training
        net.eval()  # dropout off while sampling; the raw network goes back to training after
        out = [
            sample(
                net,
                self.diffusion,
                (len(texts[start : start + size]), self.model_cfg.in_channels, r, r),
                **options.sampler_kwargs(),
                model_kwargs={k: v[start : start + size] for k, v in kwargs.items()},
                generator=generator,
                device=self.device,
            )
            for start in range(0, len(texts), size)
        ]
        net.train(training)
        return to_uint8(torch.cat(out))
