"""The OCR loss: RapidOCR's PP-OCRv4 text recogniser, frozen, as a differentiable critic of the
images a model predicts (after AnyText, Tuo et al. 2023, which trains with an OCR perceptual loss).

Training knows where each word is (the synthetic renderer stores character boxes), so the recogniser
reads only the word's crop, resized to the 48 px height it was trained on, and its CTC loss against
the transcript says how far the predicted image is from reading as that word. On the words-32 set's
own images the crops read at CER 0.05 (exact 0.91), so the critic can tell a right word from a wrong
one at the size we train.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glyphgen.ocr.onnx_graph import OnnxGraph

CROP_WIDTH = 64
"""Width of the word crops the OCR loss reads: 8 recogniser steps, enough for short words."""
HEIGHT = 48
"""Input height of the PP-OCR recognisers."""
STRIDE = 8
"""Input pixels per output step of the recogniser (its downsampling along the width)."""


def recogniser_path() -> Path:
    """The recogniser ONNX file shipped in the rapidocr-onnxruntime wheel (found without importing
    rapidocr, which would load onnxruntime)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the OCR loss needs the rapidocr-onnxruntime package")
    return Path(spec.origin).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"


def word_crops(images: Tensor, boxes: Tensor, width: int, margin: float = 0.15) -> Tensor:
    """Each image's word, cut out and resized to [HEIGHT, w] with its aspect kept (w <= `width`),
    then padded with 0 (mid grey, as RapidOCR pads) to [B, C, HEIGHT, width]. `boxes` [B, L, 4]
    holds character boxes as fractions of the side, (x0, y0, x1, y1); a character without a box has
    x1 <= x0. The word's box is their union, grown by `margin` of its height on every side.
    Differentiable in `images` (bilinear sampling)."""
    valid = boxes[..., 2] > boxes[..., 0]
    big, small = torch.finfo(boxes.dtype).max, torch.finfo(boxes.dtype).min
    x0 = torch.where(valid, boxes[..., 0], big).amin(1)
    y0 = torch.where(valid, boxes[..., 1], big).amin(1)
    x1 = torch.where(valid, boxes[..., 2], small).amax(1)
    y1 = torch.where(valid, boxes[..., 3], small).amax(1)
    grow = margin * (y1 - y0)
    x0, x1, y0, y1 = x0 - grow, x1 + grow, y0 - grow, y1 + grow
    # the crop's width in output pixels, as wide as its aspect asks and at least one output step
    kept = (HEIGHT * (x1 - x0) / (y1 - y0)).ceil().clamp(STRIDE, width)
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    # output u in [-1, 1] over `width` columns; the crop fills the first `kept` of them
    theta[:, 0, 0] = (x1 - x0) * width / kept
    theta[:, 0, 2] = 2 * x0 - 1 + theta[:, 0, 0]
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = 2 * y0 - 1 + theta[:, 1, 1]
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], HEIGHT, width], align_corners=False)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    columns = torch.arange(width, device=images.device)
    return crops * (columns < kept[:, None, None, None].to(columns.dtype))


class TextRecogniser(nn.Module):
    """PP-OCRv4's recogniser as a frozen torch module: `log_probs(crops)` [T, B, classes] and
    `ctc_loss(crops, texts)` per sample. Class 0 is the CTC blank."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        path = recogniser_path() if path is None else Path(path)
        self.net = OnnxGraph(path, drop_final_softmax=True)
        self.requires_grad_(False)
        self.eval()
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        # RapidOCR's convention: blank first, then the model's dictionary, then the space
        self.classes = ["", *meta["character"].splitlines(), " "]
        self.index = {c: i for i, c in enumerate(self.classes) if c}

    def encodable(self, text: str) -> bool:
        """Whether every character of `text` is one the recogniser can output."""
        return bool(text) and all(c in self.index for c in text)

    def log_probs(self, crops: Tensor) -> Tensor:
        """[T, B, classes] log-probabilities, from crops in [-1, 1] (RapidOCR's input range), RGB or
        BGR alike for the grey images glyphgen draws."""
        return F.log_softmax(self.net(crops).float(), dim=-1).transpose(0, 1)

    def ctc_loss(self, crops: Tensor, texts: list[str]) -> Tensor:
        """Per-sample CTC loss [B] of reading `texts` from `crops`, divided by each text's length;
        every text must be `encodable`."""
        log_probs = self.log_probs(crops)
        targets = [torch.tensor([self.index[c] for c in text]) for text in texts]
        lengths = torch.tensor([len(t) for t in targets])
        steps = torch.full((len(texts),), log_probs.shape[0], dtype=torch.long)
        loss = F.ctc_loss(
            log_probs,
            torch.cat(targets).to(crops.device),
            steps,
            lengths,
            reduction="none",
            zero_infinity=True,
        )
        return loss / lengths.to(loss.device)

    def read(self, crops: Tensor) -> list[str]:
        """Greedy CTC decoding: the best path with repeats merged and blanks removed."""
        best = self.log_probs(crops).argmax(-1).transpose(0, 1).tolist()
        texts = []
        for path in best:
            chars = [c for i, c in enumerate(path) if c and (i == 0 or c != path[i - 1])]
            texts.append("".join(self.classes[c] for c in chars))
        return texts


def ocr_loss(
    recogniser: TextRecogniser,
    pred_x0: Tensor,
    boxes: Tensor,
    texts: list[str],
    t: Tensor,
    window: list[float],
    samples: int,
) -> Tensor:
    """The training term [B]: the CTC loss of reading each transcript from the word's crop of the
    predicted x0, for the first `samples` samples whose timestep lies in [window[0], window[1]),
    with boxes (a dropped transcript has none) and one line of characters the recogniser knows; 0
    for every other sample. Choosing them reads `t` on the host once."""
    in_window = ((t >= window[0]) & (t < window[1]) & (boxes[..., 2] > boxes[..., 0]).any(1)).tolist()
    chosen = [
        i for i, ok in enumerate(in_window) if ok and "\n" not in texts[i] and recogniser.encodable(texts[i])
    ][:samples]
    term = pred_x0.new_zeros(pred_x0.shape[0], dtype=torch.float32)
    if not chosen:
        return term
    crops = word_crops(pred_x0[chosen].float(), boxes[chosen].float(), CROP_WIDTH)
    index = torch.tensor(chosen, device=term.device)
    return term.index_put((index,), recogniser.ctc_loss(crops, [texts[i] for i in chosen]))
