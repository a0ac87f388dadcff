"""The three training stages, thin LightningModules over `DiffusionCore` (docs/architecture.md,
"The three stages"; adding a stage: "Extension points").

1. `pretrain-synthetic`: the base model from scratch on synthetic font images.
2. `finetune-real`: the base warm-started (weights only, fresh optimizer, step 0) from stage 1's EMA.
3. `superres`: the super-resolution model sandwich-warm-started from stage 2's EMA; its low-res input
   is made on the fly by area-downsampling the training image (plus optional noise augmentation).

Warm start and resume are different things: warm start copies weights into a new run; resume (the
trainer's `ckpt_path`) restores everything, and always wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glyphgen.diffusion import augment_low_res
from glyphgen.diffusion.pixels import to_unit
from glyphgen.models.registry import SANDWICH_BASE
from glyphgen.models.unet import UNet
from glyphgen.models.warm_start import WarmStartReport, sandwich_warm_start
from glyphgen.training.config import Stage
from glyphgen.training.core import DiffusionCore, build_model_config


class PretrainSynthetic(DiffusionCore):
    """Stage 1: nothing to add to the core. Warm-started only as a later step of a curriculum
    (plain text first, then the full variety): it then loads the earlier step's EMA weights."""


class FinetuneReal(DiffusionCore):
    """Stage 2: the core, warm-started from the pretrained base."""


def downsample(x: torch.Tensor) -> torch.Tensor:
    """The low-res view of a training image: area downsampling by 2."""
    return F.interpolate(x, scale_factor=0.5, mode="area")


class SuperRes(DiffusionCore):
    """Stage 3: denoise the high-res image given its low-res version."""

    samples_from_batch = True

    def prepare_batch(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        x0 = to_unit(batch["image"])
        low, _ = augment_low_res(self.diffusion, downsample(x0), self.cfg.diffusion.noise_aug_max, generator)
        return x0, {"low_res": low}

    def sample_kwargs(self, texts: list[str], batch: dict | None) -> dict:
        if batch is None:
            raise ValueError("superres samples need low-res images: pass a batch")
        low = downsample(to_unit(batch["image"][: len(texts)]).to(self.device))
        return {**super().sample_kwargs(texts, batch), "low_res": low}

    def warm_start(self, path: str) -> str:
        base_size = self.cfg.init_model_size or SANDWICH_BASE.get(self.cfg.model_size)
        if base_size is None:
            raise ValueError(f"no base size is known for {self.cfg.model_size}: set init_model_size")
        with torch.device("meta"):
            base = UNet(build_model_config(self.cfg, size=base_size))
        report: WarmStartReport = sandwich_warm_start(self.model, self.warm_start_state(path), base)
        self.ema.load_state_dict(self.model.state_dict())
        return report.summary()


STAGE_CLASSES: dict[Stage, type[DiffusionCore]] = {
    Stage.pretrain_synthetic: PretrainSynthetic,
    Stage.finetune_real: FinetuneReal,
    Stage.superres: SuperRes,
}
"""The module of each `Stage` (looked up by the member or its name)."""
