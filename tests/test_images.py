"""Loading untrusted images: every kind of bad file is a counted category, odd modes convert right."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from glyphgen.data.images import (
    BadImage,
    fit_square,
    load_image,
    resize_center_crop,
    square_window,
    to_png_bytes,
)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(w: int = 120, h: int = 90) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def reason(source, **kw) -> str:
    with pytest.raises(BadImage) as e:
        load_image(source, **kw)
    return e.value.reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_detected(tmp_path, fmt):
    data = encode(noise(), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert reason(path) == "truncated image"
    assert reason(data[: len(data) // 2]) == "truncated image"


def test_empty_missing_and_not_an_image(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is a text file, not a picture\n")
    assert reason(tmp_path / "zero.jpg") == "empty file"
    assert reason(b"") == "empty file"
    assert reason(tmp_path / "notes.png") == "not an image"
    assert reason(tmp_path / "absent.png") == "missing file"
    assert reason(tmp_path) == "missing file"  # a folder is not an image file


def test_too_many_pixels_rejected_from_the_header():
    assert reason(encode(noise(120, 90), "PNG"), max_pixels=120 * 90 - 1) == "too large"
    assert load_image(encode(noise(120, 90), "PNG"), max_pixels=120 * 90).size == (120, 90)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_caught_even_when_max_pixels_allows_it():
    # Pillow's own limit (~179 Mpx for an error) fires before ours; either way it is "too large".
    assert reason(_png_header_only(30_000, 30_000), max_pixels=10**12) == "too large"
    assert reason(_png_header_only(30_000, 30_000)) == "too large"


def test_cmyk_jpeg_converts_to_the_right_colour():
    red = Image.new("CMYK", (40, 30), (0, 255, 255, 0))
    img = load_image(encode(red, "JPEG", quality=95))
    assert img.mode == "RGB"
    r, g, b = img.getpixel((20, 15))
    assert r > 230 and g < 25 and b < 25


def test_16bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    src = Image.fromarray(values)
    assert src.mode.startswith("I;16")
    img = load_image(encode(src, "PNG"))
    row = [img.getpixel((x, 0)) for x in range(4)]
    assert row == [(0, 0, 0), (64, 64, 64), (128, 128, 128), (255, 255, 255)]


def test_32bit_integer_image_is_scaled():
    src = Image.fromarray(np.array([[0, 1000, 4000]] * 2, dtype=np.int32), "I")
    img = load_image(encode(src, "TIFF"))
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 4, 16]  # a 16-bit range: /257


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.paste((200, 0, 0, 255), (0, 0, 5, 10))
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.quantize(colors=4, method=Image.Quantize.FASTOCTREE)  # alpha kept as a tRNS chunk
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    out = load_image(data)
    assert out.mode == "RGB" and out.getpixel((9, 5)) == (255, 255, 255)
    assert out.getpixel((1, 5)) != (255, 255, 255)


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert load_image(encode(img, "JPEG", exif=exif.tobytes())).size == (20, 40)


def test_resize_center_crop_keeps_the_middle():
    img = Image.new("RGB", (300, 100), "blue")
    img.paste("red", (100, 0, 200, 100))  # the middle third
    out = resize_center_crop(img, 32)
    assert out.size == (32, 32)
    # Only red survives (the filter may blend a trace of the neighbouring blue into the edge pixels).
    assert all(out.getpixel((x, 16))[0] > 200 and out.getpixel((x, 16))[2] < 40 for x in range(32))


def test_fit_square_keeps_a_box_and_pads_when_it_must():
    assert square_window(300, 100) == (100, 0, 200, 100)
    assert square_window(300, 100, keep=(0, 10, 60, 40)) == (0, 0, 100, 100)  # slid to hold the box
    x0, y0, x1, y1 = square_window(300, 100, keep=(20, 30, 280, 70))  # wider than the short side
    assert x0 <= 20 and x1 >= 280 and x1 - x0 == pytest.approx(y1 - y0) and y0 < 0 and y1 > 100
    img = Image.new("RGB", (300, 100), "white")
    out, padded = fit_square(img, 64, keep=(20, 30, 280, 70))
    assert out.size == (64, 64) and padded
    out, padded = fit_square(img, 64, keep=(0, 10, 60, 40))
    assert out.size == (64, 64) and not padded


def test_png_bytes_round_trip():
    img = noise(20, 10)
    back = Image.open(io.BytesIO(to_png_bytes(img)))
    assert back.format == "PNG" and np.array_equal(np.asarray(back), np.asarray(img))
