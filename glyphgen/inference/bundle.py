"""Loading an inference bundle and sampling from it, without Lightning or the training config.

    bundle = glyphgen.load_bundle("runs/tiny/bundles/base")      # glyphgen export wrote it
    images = bundle.sample(["hello\\nworld"], n=4, seed=0)          # uint8 [4, 3, 32, 32]
    images = bundle.sample(["hi"], n=2, options=SamplingOptions(steps="ddim25", guidance=2))
    report = bundle.evaluate(read_prompts("words"), n=2)       # from glyphgen.eval.prompts

A base followed by super-resolution bundles is a `Cascade` (cascade.py).

Reproducibility: one `torch.Generator` seeded with `seed` (on the CPU, so CPU and GPU runs start
from the same noise) feeds every batch of a call in order, so the same seed, prompts, `n` and
`batch_size` give the same images. Images are ordered prompt by prompt: `n` of the first prompt,
then `n` of the second, ...

Weights load in the dtype they are stored in on a GPU; on the CPU, where half-precision kernels are
slow or missing, in float32 unless `dtype` says otherwise. A network held in half precision runs
under autocast, so the diffusion arithmetic around it stays in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from glyphgen.checkpoint_io import DTYPES, check_tensors
from glyphgen.diffusion import (
    GaussianDiffusion,
    Progress,
    SamplingOptions,
    create_diffusion,
    with_options,
)
from glyphgen.diffusion import sample as draw_chain
from glyphgen.diffusion.pixels import to_uint8, to_unit
from glyphgen.eval.evaluate import EvalReport, evaluate
from glyphgen.inference.format import WEIGHTS, BundleConfig, read_config
from glyphgen.inference.sample import ImagesIn, check_prompts, from_pil, to_pil
from glyphgen.models.unet import UNet
from glyphgen.text.tokenizer import CharTokenizer

if TYPE_CHECKING:
    from glyphgen.ocr import Ocr


@dataclass
class Bundle:
    """A loaded bundle: the network (eval mode, on its device, in its dtype), the diffusion process
    it was trained with, its tokenizer and its config."""

    model: UNet
    diffusion: GaussianDiffusion
    tokenizer: CharTokenizer
    config: BundleConfig
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"{self.config.stage} bundle"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def resolution(self) -> int:
        return self.config.model.resolution

    def options(self, options: SamplingOptions | None = None, **changes) -> SamplingOptions:
        """`options` with `changes` applied (those not None) and every unset field taken from the
        bundle's diffusion config: the settings a sample is actually drawn with."""
        return with_options(options, **changes).resolve(self.config.diffusion)

    def net(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The network as the samplers call it: float32 in and out whatever dtype it is held in."""
        if self.dtype == torch.float32:
            return self.model(x, t, **kwargs)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.model(x, t, **kwargs).float()

    def sample(
        self,
        texts: str | Sequence[str],
        n: int = 1,
        options: SamplingOptions | None = None,
        low_res: ImagesIn | None = None,
        as_pil: bool = False,
        progress: Progress | None = None,
        **changes,
    ) -> torch.Tensor | list[Image.Image]:
        """`n` images per prompt (prompt by prompt), as uint8 [N, C, H, W] or PIL images, drawn with
        `options` (unset fields: the bundle's diffusion config); keyword `changes` such as `seed=3`
        or `steps="ddim25"` override single fields. A superres bundle needs `low_res`: one base
        image per output."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        with torch.no_grad():
            x = self.generate(texts, n, self.options(options, **changes), low_res, progress)
        images = to_uint8(x)
        return to_pil(images) if as_pil else images

    def generate(
        self,
        texts: Sequence[str],
        n: int = 1,
        options: SamplingOptions | None = None,
        low_res: ImagesIn | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """`n` images per prompt as float [-1, 1] [len(texts) * n, C, H, W], on the bundle's device,
        drawn with `options` (unset fields: the bundle's diffusion config); `sample` without the
        conversion to uint8."""
        check_prompts(texts, self.tokenizer)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        chosen = self.options(options)
        diffusion = self.diffusion.respace(chosen.steps)
        expanded = [t for t in texts for _ in range(n)]
        lows = self.check_low_res(low_res, len(expanded))
        cfg, device = self.config.model, self.device
        generator = torch.Generator().manual_seed(chosen.seed)
        batches = range(0, len(expanded), chosen.batch_size)
        total = len(batches) * diffusion.num_steps
        out = []
        for b, start in enumerate(batches):
            chunk = expanded[start : start + chosen.batch_size]
            tokens, mask = self.tokenizer.batch(chunk)
            kwargs = {"tokens": tokens.to(device), "mask": mask.to(device)}
            if lows is not None:
                kwargs["low_res"] = to_unit(lows[start : start + len(chunk)]).to(device)
            done = b * diffusion.num_steps
            out.append(
                draw_chain(
                    self.net,
                    diffusion,
                    (len(chunk), cfg.in_channels, cfg.resolution, cfg.resolution),
                    **{**chosen.sampler_kwargs(), "steps": None},  # respaced above, once for every batch
                    model_kwargs=kwargs,
                    generator=generator,
                    device=device,
                    progress=None if progress is None else lambda i, _t, done=done: progress(done + i, total),
                )
            )
        return torch.cat(out)

    def check_low_res(self, low_res: ImagesIn | None, count: int) -> torch.Tensor | None:
        """The low-res images a superres bundle upsamples, as uint8 [count, C, h, w]; one-line errors
        when they are missing, unexpected, too few or too many, or of the wrong size."""
        cfg = self.config.model
        if not cfg.superres:
            if low_res is not None:
                raise ValueError(
                    f"{self.name} is a base model ({self.config.stage}): it takes no low-res images"
                )
            return None
        if low_res is None:
            raise ValueError(f"{self.name} is a super-resolution model: it needs the base model's images")
        images = low_res if isinstance(low_res, torch.Tensor) else from_pil(low_res)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"low-res images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != count:
            raise ValueError(f"{count} images to upsample but {len(images)} low-res images given")
        side = cfg.resolution // 2
        if tuple(images.shape[-2:]) != (side, side):
            raise ValueError(
                f"{self.name} upsamples {side} px images to {cfg.resolution} px, "
                f"got {images.shape[-1]}x{images.shape[-2]} px"
            )
        return images

    def evaluate(
        self,
        prompts: Sequence[str],
        n: int = 2,
        options: SamplingOptions | None = None,
        ocr: Ocr | None = None,
        progress: Progress | None = None,
        **changes,
    ) -> EvalReport:
        """Sample `n` images per prompt, read them with the OCR and score them against the prompts;
        see `glyphgen.eval.evaluate`. `Cascade.evaluate` scores a base with super-resolution stages."""
        options = with_options(options, **changes)
        return score_samples(
            lambda texts, k: self.sample(texts, k, options, progress=progress),
            [self],
            prompts,
            n,
            options,
            ocr,
        )


def score_samples(
    draw: Callable[[list[str], int], torch.Tensor],
    stages: Sequence[Bundle],
    prompts: Sequence[str],
    n: int,
    options: SamplingOptions,
    ocr: Ocr | None,
    **settings,
) -> EvalReport:
    """Score `draw(texts, k)` (uint8 images, k per text) with the OCR; the report's settings name the
    bundles of `stages` (the base first) and what they sampled with, plus `settings`."""
    base = stages[0]
    about = {"bundle": base.name, "superres": [stage.name for stage in stages[1:]], "n": n}
    about |= {**dataclasses.asdict(base.options(options)), **settings, "device": str(base.device)}
    return evaluate(lambda texts, k: to_pil(draw(texts, k)), list(prompts), n, ocr=ocr, settings=about)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no {WEIGHTS}, not a complete glyphgen bundle")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:200]})"
        ) from None


def load_bundle(
    path: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> Bundle:
    """Load the bundle in folder `path` onto `device` (default: CUDA if available, else CPU) in
    `dtype` ("fp32", "fp16", "bf16" or a torch dtype; default: see the module docstring)."""
    path = Path(path)
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but no CUDA GPU is available")
    cfg = read_config(path)
    dtype = _dtype(dtype, cfg.dtype, device)
    state = load_weights(path / WEIGHTS)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = UNet(cfg.model)
    check_tensors(model.state_dict(), state, path / WEIGHTS)
    model.load_state_dict(state, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Bundle(model, create_diffusion(cfg.diffusion), CharTokenizer(cfg.tokenizer), cfg, path)


def _dtype(asked: str | torch.dtype | None, stored: str, device: torch.device) -> torch.dtype:
    if isinstance(asked, torch.dtype):
        return asked
    if asked is not None:
        if asked not in DTYPES:
            raise ValueError(f"unknown dtype {asked!r}; choose one of {', '.join(DTYPES)}")
        return DTYPES[asked]
    return DTYPES[stored] if device.type != "cpu" else torch.float32
