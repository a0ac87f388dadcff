"""The OCR engine on real renders: exact read-back, line order, corner and confidence filters."""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from pathlib import Path

import font_roboto
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from glyphgen.ocr import (
    ENGINE_MAX_SIDE,
    Detection,
    Ocr,
    OcrConfig,
    OcrError,
    OcrTimeout,
    group_lines,
    in_corner,
    layout,
    time_limit,
)
from glyphgen.ocr import engine as engines
from glyphgen.ocr.rapid import RapidOcr

ROBOTO = str(Path(font_roboto.__file__).parent / "files" / "Roboto-Regular.ttf")


def render(items: list[tuple[str, tuple[int, int], int]], size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Black text on white: each item is (text, top-left position, font size)."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for text, xy, px in items:
        draw.text(xy, text, font=ImageFont.truetype(ROBOTO, px), fill="black")
    return img


@pytest.fixture(scope="module")
def ocr():
    return Ocr()


_IN_PARENT: list[Ocr] = []


def _read_in_forked_child(_) -> str:
    text = _IN_PARENT[0].read(render([("Hello", (20, 90), 60)])).text
    _IN_PARENT.clear()  # dropping an Ocr whose engine was made before the fork must not hang either
    return text


def test_reads_a_word_back_exactly(ocr):
    result = ocr.read(render([("Diffusion", (30, 90), 56)]))
    assert result.text == "Diffusion"
    assert result.kept == 1 and result.confidence > 0.9 and result.seconds > 0
    x0, y0, x1, y1 = result.lines[0].box
    assert 20 <= x0 < x1 <= 300 and 80 <= y0 < y1 <= 170  # in the input image's pixels


def test_two_lines_come_back_in_order(ocr):
    img = render([("first line", (20, 40), 44), ("second line", (20, 130), 44)])
    result = ocr.read(img)
    assert result.text == "first line\nsecond line"
    assert [d.line for d in result.lines] == [0, 1]


def test_words_far_apart_on_one_line_are_joined_left_to_right(ocr):
    result = ocr.read(render([("right", (200, 100), 40), ("left", (15, 104), 40)]))
    assert result.text == "left right"


def test_arrays_and_small_images(ocr):
    img = render([("Hello", (20, 90), 60)])
    assert ocr.read(np.asarray(img)).text == "Hello"  # RGB array, not BGR
    small = render([("cat", (6, 20), 22)], size=(64, 64))  # upscaled to 256 before detection
    assert ocr.read(small).text == "cat"


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_forked_workers_do_not_hang_on_an_inherited_engine():
    _IN_PARENT.append(Ocr())  # the only reference, so the child really destroys it
    _IN_PARENT[0].read(render([("Hello", (20, 90), 60)]))  # its engine exists in this process
    try:
        with mp.get_context("fork").Pool(1) as pool:
            assert pool.map_async(_read_in_forked_child, [0]).get(timeout=60) == ["Hello"]
        assert _IN_PARENT[0].read(render([("Hello", (20, 90), 60)])).text == "Hello"  # parent unharmed
    finally:
        _IN_PARENT.clear()


def test_corner_detection_dropped(ocr):
    img = render([("Middle", (80, 100), 44), ("12", (282, 208), 24)])
    kept = Ocr(OcrConfig(corner_fraction=0.0)).read(img)
    assert kept.text == "Middle\n12"
    result = Ocr(OcrConfig(corner_fraction=0.2)).read(img)  # corner squares of 48 px
    assert result.text == "Middle" and result.dropped_corner == 1


def test_low_confidence_dropped_and_counted(ocr):
    strict = Ocr(OcrConfig(min_confidence=1.0))
    result = strict.read(render([("first line", (20, 40), 44), ("second line", (20, 130), 44)]))
    assert result.text == "" and result.kept == 0 and result.dropped_low_confidence == 2


def test_detect_finds_text_without_reading(ocr):
    boxes = ocr.detect(render([("Middle", (80, 100), 44)]))
    assert len(boxes) == 1 and 70 <= boxes[0][0] < boxes[0][2] <= 250
    assert ocr.detect(Image.new("RGB", (100, 100), "white")) == []


def test_blank_image_reads_as_empty(ocr):
    result = ocr.read(Image.new("L", (200, 100), 255))
    assert result.text == "" and result.kept == 0 and result.confidence == 0.0


def test_group_lines_by_vertical_overlap():
    def det(text, x0, y0, x1, y1):
        return Detection((x0, y0, x1, y1), text, 0.9)

    dets = [
        det("c", 0, 50, 30, 70),
        det("b", 60, 2, 90, 22),
        det("a", 0, 0, 40, 20),
        det("d", 50, 54, 80, 72),
    ]
    lines = group_lines(dets, overlap=0.5)
    assert [[d.text for d in line] for line in lines] == [["a", "b"], ["c", "d"]]
    # Barely touching boxes are separate lines.
    assert len(group_lines([det("x", 0, 0, 10, 20), det("y", 20, 18, 30, 38)], overlap=0.5)) == 2


def test_in_corner():
    assert in_corner((90, 90, 99, 99), 100, 100, 0.1)
    assert not in_corner((85, 90, 99, 99), 100, 100, 0.1)  # sticks out of the corner square
    assert not in_corner((40, 90, 60, 99), 100, 100, 0.1)  # bottom edge, not a corner


class FakeEngine:
    """Stands in for RapidOCR: records the input shape, sleeps like a slow page, and wraps every
    `Exception` in its own error the way RapidOCR wraps onnxruntime's."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, bgr, **kwargs):
        self.shapes.append(bgr.shape)
        try:
            time.sleep(self.seconds)
        except Exception as e:
            raise RuntimeError("engine error") from e
        return None, None


def with_engine(engine: FakeEngine) -> Ocr:
    """An `Ocr` on the RapidOCR engine, with `engine` standing in for RapidOCR itself."""
    ocr = Ocr()
    ocr._engine = RapidOcr(ocr.cfg)
    ocr._engine._rapid = engine
    return ocr


def test_thin_images_fail_with_one_line_naming_the_size(ocr):
    for size in [(3000, 20), (1, 8000)]:  # the second grew to 3.9 GB before the upscaling cap
        with pytest.raises(
            OcrError, match=r"^the OCR engine failed on this \d+x\d+ image \(ResizeImgError\)$"
        ):
            ocr.read(Image.new("RGB", size, "white"))
        with pytest.raises(OcrError, match=f"{size[0]}x{size[1]}"):
            ocr.detect(Image.new("RGB", size, "white"))


def test_upscaling_stops_at_the_engines_long_side():
    engine = FakeEngine()
    ocr = with_engine(engine)
    for size in [(600, 10), (64, 64), (5000, 100)]:
        ocr.read(Image.new("RGB", size, "white"))
    assert engine.shapes == [(33, ENGINE_MAX_SIDE, 3), (256, 256, 3), (100, 5000, 3)]


def test_time_limit_interrupts_an_engine_that_wraps_exceptions():
    ocr, handler = with_engine(FakeEngine(seconds=5.0)), signal.getsignal(signal.SIGALRM)
    for call in (ocr.read, ocr.detect):
        start = time.monotonic()
        with pytest.raises(OcrTimeout, match=r"^OCR took longer than the 0.05s time limit$"):
            call(Image.new("RGB", (64, 64), "white"), limit=0.05)
        assert time.monotonic() - start < 2
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0 and signal.getsignal(signal.SIGALRM) == handler


def test_time_limit_gives_back_an_alarm_set_by_someone_else():
    class Outer(Exception):
        pass

    def outer(signum, frame):
        raise Outer

    previous = signal.signal(signal.SIGALRM, outer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        with time_limit(1.0):
            pass
        assert 4 < signal.getitimer(signal.ITIMER_REAL)[0] <= 5 and signal.getsignal(signal.SIGALRM) is outer
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # due before the limit: it is the one that fires
        with pytest.raises(Outer), time_limit(5.0):
            time.sleep(2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_time_limit_is_not_applied_off_the_main_thread():
    done = []

    def work():
        with time_limit(0.01):
            time.sleep(0.1)
        done.append(True)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert done == [True]


def test_unknown_engine_is_one_line_naming_it_and_the_choices():
    with pytest.raises(
        ValueError, match=r"^engine: unknown OCR engine 'tesseract'; known engines: rapidocr$"
    ):
        OcrConfig(engine="tesseract")
    with pytest.raises(ValueError, match=r"^unknown OCR engine 'tesseract'; known engines: rapidocr$"):
        engines.resolve_engine("tesseract")
    cfg = OcrConfig()
    cfg.engine = "tesseract"  # changed after validation: caught when the engine is made
    with pytest.raises(ValueError, match="'tesseract'"):
        Ocr(cfg).read(Image.new("RGB", (64, 64), "white"))


class FixedEngine:
    """A second engine: finds the same detections in every image (in the pixels it is given)."""

    max_side = 1000

    def __init__(self, cfg: OcrConfig):
        self.cfg = cfg
        self.loads = 0
        self.sizes: list[tuple[int, int]] = []

    def load(self) -> None:
        self.loads += 1

    def read(self, rgb: np.ndarray) -> list[Detection]:
        self.sizes.append((rgb.shape[1], rgb.shape[0]))
        return [
            Detection((120, 100, 200, 140), "  world ", 0.8),
            Detection((20, 104, 100, 138), "hello", 0.9),
            Detection((20, 200, 90, 236), "again", 0.7),
            Detection((30, 300, 60, 320), "faint", 0.2),  # below min_confidence
            Detection((370, 370, 398, 398), "7", 0.9),  # in the bottom-right corner
            Detection((200, 300, 260, 330), "   ", 0.9),  # empty once whitespace is collapsed
        ]

    def detect(self, rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
        return [d.box for d in self.read(rgb)]


@pytest.fixture
def fixed_engine():
    engines.ENGINES["fixed"] = FixedEngine
    try:
        yield "fixed"
    finally:
        del engines.ENGINES["fixed"]


def test_a_registered_engine_is_used_and_its_detections_laid_out(fixed_engine):
    ocr = Ocr(OcrConfig(engine=fixed_engine, upscale_to=0))
    result = ocr.read(Image.new("RGB", (400, 400), "white"))
    assert isinstance(ocr.engine, FixedEngine) and ocr.engine.sizes == [(400, 400)]
    assert result.text == "hello world\nagain"
    assert [(d.text, d.line) for d in result.lines] == [("hello", 0), ("world", 0), ("again", 1)]
    assert result.dropped_low_confidence == 2 and result.dropped_corner == 1
    assert result.bounds == (20, 100, 200, 236)
    assert (370, 370, 398, 398) not in ocr.detect(Image.new("RGB", (400, 400), "white"))


def test_a_registered_engine_is_loaded_before_reading_and_its_boxes_scaled_back(fixed_engine):
    ocr = Ocr(OcrConfig(engine=fixed_engine, upscale_to=800, corner_fraction=0.0))
    result = ocr.read(Image.new("L", (200, 100), 255))  # upscaled 8x would be 1600 wide: capped at 1000
    assert ocr.engine.sizes == [(1000, 500)] and ocr.engine.loads >= 1
    assert result.lines[0].box == (4.0, 20.8, 20.0, 27.6)  # (20, 104, 100, 138) / 5


def test_engine_failures_are_one_line_errors_naming_the_size(fixed_engine):
    def broken(cfg):
        engine = FixedEngine(cfg)
        engine.read = lambda rgb: (_ for _ in ()).throw(RuntimeError("Traceback\n  deep\nbad input"))
        return engine

    engines.ENGINES[fixed_engine] = broken
    with pytest.raises(
        OcrError, match=r"^the OCR engine failed on this 30x20 image \(RuntimeError: bad input\)$"
    ):
        Ocr(OcrConfig(engine=fixed_engine)).read(Image.new("RGB", (30, 20), "white"))


def test_layout_without_an_engine():
    assert layout.box_of([(3, 9), (10, 2), (12, 8), (1, 7)]) == (1.0, 2.0, 12.0, 9.0)
    assert layout.box_of(np.array([[3, 9], [10, 2]])) == (3.0, 2.0, 10.0, 9.0)
    assert layout.scaled((10, 20, 30, 40), 2) == (5.0, 10.0, 15.0, 20.0)
    assert layout.union([]) is None
    assert layout.union([(0, 5, 10, 10), (4, 1, 8, 20)]) == (0, 1, 10, 20)
    assert layout.in_corner((2, 2, 8, 8), 100, 50, 0.2) and not layout.in_corner((2, 2, 12, 8), 100, 50, 0.2)
    lines = layout.group_lines(
        [Detection((50, 0, 60, 10), "b", 1.0), Detection((0, 2, 40, 12), "a", 1.0)], 0.5
    )
    assert [[d.text for d in line] for line in lines] == [["a", "b"]]
    result = layout.OcrResult("ab", (Detection((0, 0, 1, 1), "a", 1.0), Detection((0, 0, 1, 1), "bcd", 0.5)))
    assert result.kept == 2 and result.confidence == pytest.approx((1.0 + 3 * 0.5) / 4)
