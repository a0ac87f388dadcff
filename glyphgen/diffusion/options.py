"""One set of sampling options, shared by every way of drawing samples: `Bundle.sample`/`evaluate`,
the cascade, the OCR rerank, the quality run, the training-time sample grids and the CLI.

A field left at None takes the model's own default (its diffusion config), so a bundle samples the
way it was trained to unless the caller says otherwise; `resolve` fills them in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from glyphgen.config import require
from glyphgen.diffusion.schedule import DiffusionConfig, Sampler, check_guidance, space_timesteps


@dataclass
class SamplingOptions:
    steps: str | None = None
    """Timestep respacing: "50", "ddim25", section counts "90,60,60,20,20"; None: the model's default."""
    sampler: Sampler | None = None
    """"ddpm", "ddim" or "dpmpp2m"; None: the model's default."""
    guidance: float | None = None
    """Classifier-free guidance scale (0: none); None: the model's default."""
    guidance_rescale: float | None = None
    """CFG rescale phi in [0, 1] (0: plain guidance); None: the model's default."""
    threshold: float | None = None
    """x0 clipping: 0 clips to [-1, 1], a quantile in (0, 1) is dynamic thresholding; None: the model's."""
    eta: float | None = None
    """DDIM stochasticity (0: deterministic); None: the model's default."""
    seed: int = 0
    """Same seed, prompts, n and batch size: the same images."""
    batch_size: int = 8
    """Images sampled at once."""

    def __post_init__(self):
        if self.sampler is not None:
            self.sampler = Sampler.parse(self.sampler, "sampler")
        require(
            self.guidance is None or check_guidance(self.guidance),
            "guidance",
            f"must be a finite number >= 0, got {self.guidance}",
        )
        require(
            self.guidance_rescale is None or 0 <= self.guidance_rescale <= 1,
            "guidance_rescale",
            f"must be in [0, 1], got {self.guidance_rescale}",
        )
        require(
            self.threshold is None or 0 <= self.threshold < 1,
            "threshold",
            f"must be in [0, 1), got {self.threshold}",
        )
        require(self.eta is None or self.eta >= 0, "eta", f"must be >= 0, got {self.eta}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")

    def resolve(self, defaults: DiffusionConfig) -> SamplingOptions:
        """These options with every None taken from `defaults`; the steps are checked against the
        model's number of diffusion steps."""
        given = sampling_fields(self)
        steps = given["steps"] or defaults.sample_steps
        try:
            space_timesteps(defaults.steps, steps)
        except ValueError as e:
            require(False, "steps", str(e))
        fallback = {
            "steps": steps,
            "sampler": defaults.sampler,
            "guidance": defaults.guidance,
            "guidance_rescale": defaults.guidance_rescale,
            "threshold": defaults.threshold,
            "eta": defaults.ddim_eta,
        }
        filled = {k: fallback[k] if v is None else v for k, v in given.items() if k in fallback}
        return SamplingOptions(**{**given, **filled})

    def sampler_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `glyphgen.diffusion.sample` these (resolved) options set."""
        return {
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance": self.guidance,
            "guidance_rescale": self.guidance_rescale,
            "threshold": self.threshold,
            "eta": self.eta,
        }


def sampling_fields(options: SamplingOptions) -> dict[str, Any]:
    """The SamplingOptions fields of `options` (or of a config that extends them), as a dict."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(SamplingOptions)}


def with_options(options: SamplingOptions | None, **changes: Any) -> SamplingOptions:
    """`options` (default: all defaults) as a plain SamplingOptions with the `changes` that are not
    None applied (keyword shortcuts such as `bundle.sample(texts, seed=3)`)."""
    base = sampling_fields(options) if options is not None else {}
    return SamplingOptions(**{**base, **{k: v for k, v in changes.items() if v is not None}})
