"""Noise schedules, timestep respacing, and the diffusion config (docs/architecture.md, "Diffusion").

Schedules follow improved DDPM (Nichol & Dhariwal 2021): the cosine schedule defines
alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) and takes beta_t = 1 - alpha_bar(t+1)/alpha_bar(t),
clipped at 0.999 so the last steps do not become singular; the linear schedule of DDPM is rescaled
so any step count spans the same noise range as 1000 steps. Everything is float64: alphas_cumprod
reaches ~1e-8 and the respaced betas are ratios of neighbouring values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from glyphgen.config import Choice, require
from glyphgen.diffusion.parameterization import Prediction, Weighting


class Schedule(Choice):
    """Noise schedules (`make_betas`)."""

    cosine = "cosine"
    linear = "linear"


class Sampler(Choice):
    """Samplers; `sampling.SAMPLE_LOOPS` holds the loop of each."""

    ddpm = "ddpm"
    ddim = "ddim"
    dpmpp2m = "dpmpp2m"


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule, float64 [steps]."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def linear_betas(steps: int) -> torch.Tensor:
    """Betas of the DDPM linear schedule (1e-4 .. 0.02 at 1000 steps), float64 [steps]."""
    scale = 1000 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024: shift and scale sqrt(alpha_bar) so the last step is pure noise (alpha_bar = 0,
    beta = 1) while the first step keeps its value. The linear schedule ends at alpha_bar ~ 4e-5, so
    training never sees the pure noise that sampling starts from; this closes that gap. Only a
    parameterization that stays finite at alpha_bar = 0 (v or x0) can be trained on it."""
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_betas(schedule: str, steps: int, zero_terminal_snr: bool = False) -> torch.Tensor:
    """Betas for a `Schedule` (or its name), optionally rescaled to a zero terminal SNR."""
    if schedule == "cosine":
        betas = cosine_betas(steps)
    elif schedule == "linear":
        betas = linear_betas(steps)
    else:
        raise ValueError(
            f"unknown noise schedule {schedule!r} (expected one of {', '.join(Schedule.values())})"
        )
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


def space_timesteps(num_steps: int, spec: str) -> list[int]:
    """The timesteps of a `num_steps` diffusion to keep when sampling, sorted ascending.

    `spec` is either "ddimN" (N >= 2 evenly spaced steps, the last being num_steps - 1, at a
    possibly fractional stride num_steps / N, rounded) or comma-separated counts: the steps are cut into that many equal sections and each
    section keeps its count of evenly spaced steps, both ends included ("50" keeps 0, ..., 999;
    "90,60,60,20,20" spends more steps at low noise). A section keeping a single step keeps its last
    (noisiest) one. Every spec keeps step num_steps - 1, so every sampler starts from the noise level
    that training ends at. Bad specs raise a one-line ValueError.
    """

    def bad(reason: str) -> ValueError:
        return ValueError(f"invalid timestep spec {spec!r} for {num_steps} steps: {reason}")

    spec = spec.strip()
    if spec.startswith("ddim"):
        try:
            count = int(spec[len("ddim") :])
        except ValueError:
            raise bad("expected ddimN with an integer N") from None
        if not 2 <= count <= num_steps:
            raise bad(f"N must be between 2 and {num_steps}")
        # N evenly spaced steps ending at the last one, so sampling starts from pure noise.
        return sorted({round((j + 1) * num_steps / count) - 1 for j in range(count)})

    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise bad('expected step counts like "50" or "90,60,60,20,20", or "ddimN"') from None
    if len(counts) > num_steps:
        raise bad(f"more sections than steps ({len(counts)})")
    size, extra = divmod(num_steps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        section = size + (1 if i < extra else 0)
        if not 1 <= count <= section:
            raise bad(f"section {i} has {section} steps, cannot keep {count}")
        if count == 1:
            kept.append(start + section - 1)
        else:
            stride = (section - 1) / (count - 1)
            kept.extend(start + round(j * stride) for j in range(count))
        start += section
    return kept


MAX_STEPS = 10_000
"""Most diffusion steps a config may ask for (1000 is usual)."""


def check_guidance(scale: float) -> bool:
    """A usable guidance scale: finite and >= 0 (NaN would give black images, negative the opposite
    of the prompt)."""
    return math.isfinite(scale) and scale >= 0


@dataclass
class DiffusionConfig:
    steps: int = 1000
    """Diffusion steps T the model is trained on."""
    schedule: Schedule = Schedule.cosine
    """Noise schedule: "cosine" (improved DDPM) or "linear" (DDPM, rescaled to `steps`)."""
    zero_terminal_snr: bool = False
    """Rescale the schedule so its last step is pure noise (Lin et al. 2024); needs parameterization
    v or x0. Most useful with the linear schedule, whose last step keeps some signal."""
    parameterization: Prediction = Prediction.eps
    """What the network predicts: "eps" (the noise), "v" (Salimans & Ho 2022) or "x0" (the image)."""
    loss_weighting: Weighting = Weighting.uniform
    """Per-timestep weight of the MSE: "uniform" in the target's own space, "min_snr" (Hang et al.
    2023: x0-space weight min(SNR, gamma)) or "p2" (Choi et al. 2022: x0-space weight
    SNR / (1 + SNR)), each expressed for the parameterization's target."""
    min_snr_gamma: float = 5.0
    """Gamma of min-SNR weighting: the SNR above which steps stop gaining weight."""
    learn_sigma: bool = True
    """The model also outputs a variance interpolation (2*C output channels) trained by the VLB."""
    vlb_weight: float = 0.001
    """Lambda of the hybrid loss MSE(eps) + lambda * L_vlb, with L_vlb the full sum over the T steps."""
    p_uncond: float = 0.1
    """Probability that training replaces a transcript with the null text (classifier-free guidance)."""
    sample_steps: str = "50"
    """Default timestep respacing for sampling: "250", "50", section counts "90,60,60,20,20", "ddim50"."""
    sampler: Sampler = Sampler.ddim
    """Default sampler: "ddpm" (ancestral), "ddim" or "dpmpp2m" (DPM-Solver++(2M), Lu et al. 2022)."""
    guidance: float = 3.0
    """Default classifier-free guidance scale: eps_c + scale * (eps_c - eps_null); 0 = no guidance."""
    guidance_rescale: float = 0.0
    """CFG rescale phi (Lin et al. 2024): blend the guided output with itself rescaled to the
    conditional output's per-sample std; 0 is plain guidance, 0.7 the paper's value."""
    threshold: float = 0.0
    """Predicted-x0 clipping: 0 clips to [-1, 1]; a quantile in (0, 1) such as 0.995 is Imagen's
    dynamic thresholding (per sample, clip at that quantile of |x0| if above 1, then rescale)."""
    ddim_eta: float = 0.0
    """DDIM stochasticity: 0 is deterministic given the starting noise, 1 matches DDPM's variance."""
    noise_aug_max: float = 0.0
    """Superres: noise the low-res conditioning image to a random timestep up to this fraction of T
    during training (Imagen noise-conditioning augmentation); 0 disables it."""

    def __post_init__(self):
        # The upper bound keeps a typo (or a crafted bundle) from allocating schedules of any size.
        require(2 <= self.steps <= MAX_STEPS, "steps", f"must be in [2, {MAX_STEPS}], got {self.steps}")
        self.schedule = Schedule.parse(self.schedule, "schedule")
        self.parameterization = Prediction.parse(self.parameterization, "parameterization")
        require(
            not (self.zero_terminal_snr and self.parameterization == "eps"),
            "zero_terminal_snr",
            "needs parameterization v or x0 (eps cannot give x0 where the signal is zero)",
        )
        self.loss_weighting = Weighting.parse(self.loss_weighting, "loss_weighting")
        require(self.min_snr_gamma > 0, "min_snr_gamma", f"must be > 0, got {self.min_snr_gamma}")
        require(self.vlb_weight >= 0, "vlb_weight", f"must be >= 0, got {self.vlb_weight}")
        require(0 <= self.p_uncond <= 1, "p_uncond", f"must be in [0, 1], got {self.p_uncond}")
        try:
            space_timesteps(self.steps, self.sample_steps)
        except ValueError as err:
            require(False, "sample_steps", str(err))
        self.sampler = Sampler.parse(self.sampler, "sampler")
        require(
            check_guidance(self.guidance), "guidance", f"must be a finite number >= 0, got {self.guidance}"
        )
        require(
            0 <= self.guidance_rescale <= 1,
            "guidance_rescale",
            f"must be in [0, 1], got {self.guidance_rescale}",
        )
        require(0 <= self.threshold < 1, "threshold", f"must be in [0, 1), got {self.threshold}")
        require(self.ddim_eta >= 0, "ddim_eta", f"must be >= 0, got {self.ddim_eta}")
        require(
            0 <= self.noise_aug_max <= 1,
            "noise_aug_max",
            f"must be in [0, 1], got {self.noise_aug_max}",
        )
