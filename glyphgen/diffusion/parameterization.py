"""What the network predicts: epsilon, v or x0, and how its training loss is weighted over timesteps.

With a = sqrt(abar_t) and s = sqrt(1 - abar_t), the forward process is x_t = a x0 + s eps. Each
parameterization names its own training target and turns a network output into (eps, x0) given x_t:

- "eps" (Ho et al. 2020): target eps; x0 = (x_t - s eps) / a. Near pure noise a -> 0, so an eps error
  is multiplied by s/a (about 20,000 at the cosine schedule's last step).
- "v" (Salimans & Ho 2022): target v = a eps - s x0; x0 = a x_t - s v, eps = s x_t + a v. Bounded at
  both ends, so it also works with a zero terminal SNR.
- "x0": target x0; eps = (x_t - a x0) / s.

Every map from output to (eps, x0) is affine in the output with x_t fixed, so classifier-free
guidance may combine raw outputs of any parameterization: it equals combining their epsilons.

Loss weighting. An error d in the predicted x0 is an error (a/s) d in eps and d/a in v, so the
per-step MSE of each target is the x0-space MSE times snr (eps), snr + 1 (v) or 1 (x0), with
snr = abar / (1 - abar). Min-SNR-gamma (Hang et al. 2023) wants x0-space weight min(snr, gamma);
dividing by that factor gives the weight in each target's own space. P2 (Choi et al. 2022, k = 1,
gamma = 1) divides eps's weight by 1 + snr: x0-space weight snr / (1 + snr), which takes weight off the
nearly clean steps and puts the middle of the schedule, where the content (here: the word) is
decided, first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from glyphgen.config import Choice


class Prediction(Choice):
    """What the network predicts (`DiffusionConfig.parameterization`); each has a `Parameterization`."""

    eps = "eps"
    v = "v"
    x0 = "x0"


class Weighting(Choice):
    """How the MSE is weighted over timesteps (`DiffusionConfig.loss_weighting`)."""

    uniform = "uniform"
    min_snr = "min_snr"
    p2 = "p2"


class Coefficients(Protocol):
    """What a parameterization reads from a diffusion (`GaussianDiffusion`): `coefficient(name, t,
    like)` broadcasts a schedule array at timesteps `t` against `like`; `predict_eps` inverts x0."""

    def coefficient(self, name: str, t: Tensor, like: Tensor) -> Tensor: ...

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Parameterization:
    """One parameterization; `name` is a `Prediction` (or its string)."""

    name: str

    def __post_init__(self):
        if self.name not in Prediction.values():
            raise ValueError(
                f"unknown parameterization {self.name!r} (expected one of {', '.join(Prediction.values())})"
            )

    def target(self, x0: Tensor, eps: Tensor, t: Tensor, c: Coefficients) -> Tensor:
        """What the network is trained to output for x_t = a x0 + s eps."""
        if self.name == "eps":
            return eps
        if self.name == "v":
            return (
                c.coefficient("sqrt_alphas_cumprod", t, x0) * eps
                - c.coefficient("sqrt_one_minus_alphas_cumprod", t, x0) * x0
            )
        return x0

    def x0(self, output: Tensor, x_t: Tensor, t: Tensor, c: Coefficients) -> Tensor:
        """x0 implied by a network output at x_t."""
        if self.name == "eps":  # 1/a and s/a precomputed in float64: the form of every earlier release
            return (
                c.coefficient("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - c.coefficient("sqrt_recipm1_alphas_cumprod", t, x_t) * output
            )
        if self.name == "v":
            return (
                c.coefficient("sqrt_alphas_cumprod", t, x_t) * x_t
                - c.coefficient("sqrt_one_minus_alphas_cumprod", t, x_t) * output
            )
        return output

    def eps(self, output: Tensor, x_t: Tensor, t: Tensor, c: Coefficients) -> Tensor:
        """eps implied by a network output at x_t."""
        if self.name == "eps":
            return output
        if self.name == "v":
            return (
                c.coefficient("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
                + c.coefficient("sqrt_alphas_cumprod", t, x_t) * output
            )
        return c.predict_eps(x_t, t, output)

    def snr_factor(self, snr: Tensor) -> Tensor:
        """The target's MSE over the x0-space MSE at this signal-to-noise ratio."""
        if self.name == "eps":
            return snr
        if self.name == "v":
            return snr + 1
        return torch.ones_like(snr)

    def loss_weight(self, snr: Tensor, weighting: str, gamma: float) -> Tensor:
        """Per-sample weight of this target's MSE: 1 ("uniform"), min-SNR-gamma ("min_snr") or P2
        ("p2": x0-space weight snr / (1 + snr))."""
        if weighting == "uniform":
            return torch.ones_like(snr)
        if weighting == "min_snr":
            return snr.clamp(max=gamma) / self.snr_factor(snr)
        if weighting == "p2":
            return snr / (1 + snr) / self.snr_factor(snr)
        raise ValueError(
            f"unknown loss weighting {weighting!r} (expected one of {', '.join(Weighting.values())})"
        )


def dynamic_threshold(x0: Tensor, quantile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): per sample, s = the `quantile` of |x0|,
    at least 1; clip x0 to [-s, s] and divide by s. quantile 0 is the static clip to [-1, 1]."""
    if quantile == 0:
        return x0.clamp(-1, 1)
    flat = x0.detach().abs().flatten(1).float()
    s = torch.quantile(flat, quantile, dim=1).clamp(min=1).to(x0.dtype)
    s = s.view(-1, *[1] * (x0.ndim - 1))
    return x0.clamp(-s, s) / s
