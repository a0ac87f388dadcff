"""The cascade: a base bundle followed by any number of super-resolution bundles, each upsampling
the previous stage's output by two (32 -> 64 px with the tiny models; the frank system's 64 -> 128
-> 256). Every superres stage is given the same prompts as the base and the previous stage's
images as its low-res input.

    cascade = Cascade(base, [superres_64, superres_128])
    images = cascade.sample(["hello"], n=4, seed=0)                  # uint8 [4, 3, 128, 128]
    report = cascade.evaluate(read_prompts("words"), n=2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from glyphgen.diffusion import Progress, SamplingOptions, with_options
from glyphgen.eval.evaluate import EvalReport
from glyphgen.inference.bundle import Bundle, score_samples

if TYPE_CHECKING:
    from glyphgen.ocr import Ocr

StageProgress = Callable[[str], Progress | None]
"""progress(stage name) -> a step callback for that stage ("base", "superres", "superres 2", ...), or None."""


def check_cascade(base: Bundle, superres: Sequence[Bundle]) -> None:
    """The base must be a base model, and each superres stage a superres model whose low-res input
    is the previous stage's output size; one-line errors otherwise."""
    if base.config.model.superres:
        raise ValueError(f"{base.name} is a super-resolution model; pass it as a superres bundle")
    previous = base
    for stage in superres:
        if not stage.config.model.superres:
            raise ValueError(
                f"{stage.name} is a base model ({stage.config.stage}), not a super-resolution one"
            )
        low, made = stage.config.model.resolution // 2, previous.config.model.resolution
        if low != made:
            raise ValueError(
                f"{stage.name} upsamples {low} -> {stage.config.model.resolution} px "
                f"but the stage before it, {previous.name}, makes {made} px images"
            )
        previous = stage


class Cascade:
    """`base`, then each bundle of `superres` in order. The superres stages sample with the base's
    options but their own guidance: `sr_guidance`, or when None each bundle's default."""

    def __init__(self, base: Bundle, superres: Sequence[Bundle] = (), sr_guidance: float | None = None):
        check_cascade(base, superres)
        self.base, self.superres, self.sr_guidance = base, list(superres), sr_guidance

    @property
    def resolution(self) -> int:
        return (self.superres[-1] if self.superres else self.base).resolution

    def stage_names(self) -> list[str]:
        """Progress names of the stages: "base", then "superres" (or "superres 1", "superres 2", ...)."""
        many = len(self.superres) > 1
        return ["base"] + [f"superres {i + 1}" if many else "superres" for i in range(len(self.superres))]

    def sr_options(self, options: SamplingOptions | None) -> SamplingOptions:
        """The base's options for a superres stage, with the superres guidance."""
        return dataclasses.replace(with_options(options), guidance=self.sr_guidance)

    def sr_guidances(self) -> list[float]:
        """The guidance each superres stage samples with."""
        return [stage.options(guidance=self.sr_guidance).guidance for stage in self.superres]

    def upsample(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        options: SamplingOptions | None = None,
        progress: StageProgress | None = None,
    ) -> torch.Tensor:
        """Base images (uint8, one per entry of `texts`) through every superres stage."""
        bar = progress or (lambda _name: None)
        names = self.stage_names()[1:]
        for stage, name in zip(self.superres, names, strict=True):
            images = stage.sample(
                list(texts), 1, self.sr_options(options), low_res=images, progress=bar(name)
            )
        return images

    def sample(
        self,
        texts: str | Sequence[str],
        n: int = 1,
        options: SamplingOptions | None = None,
        progress: StageProgress | None = None,
        **changes,
    ) -> torch.Tensor:
        """`n` images per prompt, prompt by prompt, at the last stage's resolution: uint8 [N, C, H, W].
        Keyword `changes` (e.g. `seed=3`) override single fields of `options`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        options = with_options(options, **changes)
        images = self.base.sample(texts, n, options, progress=(progress or (lambda _name: None))("base"))
        return self.upsample(images, [t for t in texts for _ in range(n)], options, progress)

    def evaluate(
        self,
        prompts: Sequence[str],
        n: int = 2,
        options: SamplingOptions | None = None,
        ocr: Ocr | None = None,
        progress: StageProgress | None = None,
        **changes,
    ) -> EvalReport:
        """Sample `n` images per prompt through the whole cascade, read them with the OCR and score
        them against the prompts; see `glyphgen.eval.evaluate`."""
        options = with_options(options, **changes)
        return score_samples(
            lambda texts, k: self.sample(texts, k, options, progress),
            [self.base, *self.superres],
            prompts,
            n,
            options,
            ocr,
            sr_guidance=self.sr_guidances(),
        )
