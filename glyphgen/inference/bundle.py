"""Loading an inference bundle (DESIGN 5) and sampling from it, without Lightning or the training config.

    bundle = glyphgen.load_bundle("runs/tiny/bundles/base")      # glyphgen export wrote it
    images = bundle.sample(["hello\\nworld"], n=4, seed=0)          # uint8 [4, 3, 32, 32]
    images = bundle.sample(["hi"], n=2, options=SamplingOptions(steps="ddim25", guidance=2))
    report = bundle.evaluate(read_prompts("words"), n=2)       # from glyphgen.eval.prompts
    best = glyphgen.rerank("hello", bundle, superres_bundle, n=8)  # OCR rejection sampling

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

from glyphgen.diffusion import GaussianDiffusion, Progress, SamplingOptions, create_diffusion, with_options
from glyphgen.inference.format import DTYPES, WEIGHTS, BundleConfig, check_tensors, read_config
from glyphgen.inference.sample import ImagesIn, generate, to_pil, to_uint8
from glyphgen.models.unet import UNet
from glyphgen.text.tokenizer import CharTokenizer

if TYPE_CHECKING:
    from glyphgen.eval.evaluate import EvalReport
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
            x = generate(self, texts, n, self.options(options, **changes), low_res, progress)
        images = to_uint8(x)
        return to_pil(images) if as_pil else images

    def evaluate(
        self,
        prompts: Sequence[str],
        n: int = 2,
        options: SamplingOptions | None = None,
        superres: Bundle | None = None,
        sr_guidance: float | None = None,
        ocr: Ocr | None = None,
        progress: Callable[[str], Progress | None] | None = None,
        **changes,
    ) -> EvalReport:
        """Sample `n` images per prompt (through `superres` too, if given, with its own guidance
        `sr_guidance`), read them with the OCR and score them against the prompts; see
        `glyphgen.eval.evaluate`. `progress(stage name)` may return a step callback for that stage,
        as in `cascade`."""
        from glyphgen.eval.evaluate import evaluate
        from glyphgen.inference.sample import cascade

        options = with_options(options, **changes)

        def draw(texts: list[str], k: int) -> list[Image.Image]:
            return to_pil(cascade(self, superres, texts, k, options, sr_guidance, progress))

        settings = {
            "bundle": self.name,
            "superres": superres.name if superres is not None else None,
            "n": n,
            **dataclasses.asdict(self.options(options)),
            "device": str(self.device),
        }
        return evaluate(draw, list(prompts), n, ocr=ocr, settings=settings)


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
