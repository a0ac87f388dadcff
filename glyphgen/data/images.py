"""Loading untrusted images safely and fitting them to a stage's resolution (docs/architecture.md,
"Safety").

`load_image` returns an 8-bit RGB image or raises `BadImage` whose `reason` is a short category that
shard builders count as a skip. It never lets Pillow guess: the pixel count is checked from the header
before any decoding (decompression bombs), the full image is decoded so truncated files fail here
rather than in a training worker, and every mode is converted explicitly (CMYK through its ICC
profile, 16-bit grayscale rescaled, transparency composited on white, EXIF rotation applied).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
# Errors Pillow raises from malformed files beyond OSError (plugins parse headers with struct etc.).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError)


class BadImage(Exception):
    """An image that cannot be used; `reason` is a short category ("truncated image", "too large")."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the size before anything is decoded."""
    if isinstance(source, bytes):
        if not source:
            raise BadImage("empty file", "0 bytes")
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise BadImage("missing file", "no such file")
        if path.stat().st_size == 0:
            raise BadImage("empty file", "0 bytes")
        fp = source
    with warnings.catch_warnings():
        # Pillow warns (then errors at 2x) past its own limit; both mean "too large" here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage("too large", str(e).split(" could be")[0]) from None
        except UnidentifiedImageError:
            raise BadImage("not an image", "unrecognised format") from None
        except _DECODE_ERRORS as e:
            raise BadImage("corrupt image", f"{type(e).__name__}: {e}") from None
    width, height = img.size
    if width * height > max_pixels or width == 0 or height == 0:
        img.close()
        if width * height > max_pixels:
            raise BadImage("too large", f"{width}x{height} exceeds max_pixels={max_pixels}")
        raise BadImage("corrupt image", f"{width}x{height}")
    return img


def _decode(img: Image.Image) -> None:
    """Force the full decode: Pillow is lazy, and a truncated file only fails when pixels are read."""
    try:
        img.load()
    except _DECODE_ERRORS as e:
        msg = str(e)
        reason = "truncated image" if "truncated" in msg or "broken data stream" in msg else "corrupt image"
        raise BadImage(reason, f"{type(e).__name__}: {msg}") from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        return img


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """Through the embedded ICC profile when there is one (Pillow's plain formula is naive)."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # unusable profile: fall back to the formula below
    return img.convert("RGB")


def _deep_gray_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale to 8 bits by scaling the range, never by clipping."""
    a = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and a.min() >= 0 and a.max() <= 65535):
        a = a / 65535.0  # a 16-bit source (PNG/TIFF decode 16-bit grayscale to I;16 or I)
    else:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.round(a * 255.0).astype(np.uint8), "L").convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded Pillow image as 8-bit RGB; transparent areas become white."""
    if img.mode == "CMYK":
        return _cmyk_to_rgb(img)
    if img.mode.startswith(("I", "F")):
        return _deep_gray_to_rgb(img)
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:  # e.g. LAB or multi-band modes Pillow cannot convert
        raise BadImage("unsupported mode", f"{img.mode}: {e}") from None


def load_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A fully decoded, upright, 8-bit RGB image from a file path or bytes, or `BadImage`.
    Animated images give their first frame."""
    with _open(source, max_pixels) as img:  # closes the file (multi-frame formats keep it open)
        _decode(img)
        try:
            return to_rgb(_upright(img))  # always a new image, independent of the file
        except BadImage:
            raise
        except _DECODE_ERRORS as e:  # conversions of exotic files can still fail
            raise BadImage("corrupt image", f"{type(e).__name__}: {e}") from None


def _place(centre: float, side: float, extent: int) -> float:
    """Start of a window of `side` around `centre`, kept inside [0, extent] when it fits there and
    centred on the image when it is larger (the rest is padding)."""
    if side >= extent:
        return (extent - side) / 2
    return min(max(centre - side / 2, 0.0), extent - side)


def square_window(width: int, height: int, keep=None, margin: float = 0.04):
    """The square (x0, y0, x1, y1), in source pixels, that becomes the output image.

    Without `keep`: the centred square on the short side. With `keep` (a box that must stay whole,
    e.g. the text): the short-side square placed over it, or, when `keep` is larger than that, a
    square just large enough for `keep` plus `margin` of its size (reaching beyond the image)."""
    side, cx, cy = float(min(width, height)), width / 2, height / 2
    if keep is not None:
        kx0, ky0, kx1, ky1 = keep
        span = max(kx1 - kx0, ky1 - ky0)
        side = side if span <= side else span * (1 + 2 * margin)
        cx, cy = (kx0 + kx1) / 2, (ky0 + ky1) / 2
    x0, y0 = _place(cx, side, width), _place(cy, side, height)
    return x0, y0, x0 + side, y0 + side


def fit_square(img: Image.Image, size: int, keep=None) -> tuple[Image.Image, bool]:
    """`img` as a `size` square taken from `square_window(..., keep)`, and whether it needed padding
    (filled with the image's mean colour). Lanczos with a reducing gap: anti-aliased and fast."""
    x0, y0, x1, y1 = square_window(img.width, img.height, keep)
    if x0 >= 0 and y0 >= 0 and x1 <= img.width and y1 <= img.height:
        return img.resize(
            (size, size), Image.Resampling.LANCZOS, box=(x0, y0, x1, y1), reducing_gap=3.0
        ), False
    scale = size / (x1 - x0)
    shrunk = img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
        Image.Resampling.LANCZOS,
        reducing_gap=3.0,
    )
    mean = shrunk.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    canvas = Image.new("RGB", (size, size), mean)
    canvas.paste(shrunk, (round(-x0 * scale), round(-y0 * scale)))
    return canvas, True


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is `size` and keep the centred `size` square."""
    return fit_square(img, size)[0]


def to_png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
