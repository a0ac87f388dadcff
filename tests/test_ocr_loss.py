"""The OCR loss: the shipped recogniser run as torch ops, the word crops it reads, and its CTC loss on
real rendered words and on a training step."""

from __future__ import annotations

import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from glyphgen.data.build import build
from glyphgen.data.loader import LoaderConfig, make_loader
from glyphgen.eval.metrics import ocr_metrics
from glyphgen.ocr.onnx_graph import OnnxGraph
from glyphgen.ocr.recogniser import HEIGHT, TextRecogniser, ocr_loss, recogniser_path, word_crops


@pytest.fixture(scope="module")
def recogniser() -> TextRecogniser:
    return TextRecogniser()


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """A batch of 32 px capital words as the learning check draws them: images, boxes, texts."""
    out = tmp_path_factory.mktemp("words") / "s"
    text = {"sources": {"words": 1, "random_chars": 0, "numbers": 0, "punctuation": 0, "posts": 0}}
    text |= {"case": {"as_is": 0, "lower": 0, "upper": 1, "title": 0}, "vocab_size": 14, "max_chars": 3}
    build("synthetic", values={"out": str(out), "resolution": 32, "count": 24, "workers": 1, "text": text})
    cfg = LoaderConfig(shards=str(out), resolution=32, batch_size=24, num_workers=0, char_boxes=True)
    cfg.shuffle_buffer = 0
    batch = next(iter(make_loader(cfg)))
    return batch["image"].float() / 127.5 - 1, batch["boxes"], batch["text"]


def test_the_torch_graph_matches_onnxruntime(recogniser):
    x = torch.randn(2, 3, HEIGHT, 64, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(recogniser_path()))
    expected = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        got = recogniser.log_probs(x).exp().transpose(0, 1)
    torch.testing.assert_close(got, torch.from_numpy(expected), atol=1e-4, rtol=1e-3)
    assert not any(p.requires_grad for p in recogniser.parameters())
    assert not recogniser.state_dict()  # frozen constants, never saved with a model


def test_an_unknown_op_is_a_one_line_error(tmp_path):
    node = helper.make_node("Tanh", ["x"], ["y"])
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    path = tmp_path / "tanh.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", io[:1], io[1:])), str(path))
    with pytest.raises(ValueError, match=r"tanh.onnx: ONNX op Tanh is not supported$"):
        OnnxGraph(path)


def test_word_crops_cut_the_word_out_and_keep_its_aspect():
    images = torch.full((2, 3, 32, 32), -1.0)
    images[:, :, 8:16, 4:28] = 1.0  # a white bar 24 wide, 8 high
    boxes = torch.zeros(2, 3, 4)
    boxes[0, 1] = torch.tensor([4, 8, 16, 16]) / 32
    boxes[0, 2] = torch.tensor([16, 8, 28, 16]) / 32  # two characters: their union is the bar
    boxes[1, 1] = torch.tensor([4, 8, 28, 16]) / 32
    crops = word_crops(images.requires_grad_(), boxes, width=256, margin=0.0)
    assert crops.shape == (2, 3, HEIGHT, 256)
    torch.testing.assert_close(crops[0], crops[1])
    # the bar is 3 times as wide as high: 144 columns of white, then the zero padding
    assert (crops[0, :, 4:-4, 6:138] > 0.9).all() and (crops[0, :, :, 146:] == 0).all()
    crops.sum().backward()
    assert images.grad.abs().sum() > 0


def test_the_recogniser_reads_rendered_words_and_scores_the_right_text_lowest(recogniser, words):
    images, boxes, texts = words
    crops = word_crops(images, boxes, 64)
    assert ocr_metrics(recogniser.read(crops), texts)["cer"] < 0.2
    wrong = texts[1:] + texts[:1]
    right_loss, wrong_loss = recogniser.ctc_loss(crops, texts), recogniser.ctc_loss(crops, wrong)
    differs = torch.tensor([a != b for a, b in zip(texts, wrong, strict=True)])
    assert (right_loss[differs] < wrong_loss[differs]).float().mean() > 0.8
    assert right_loss.mean() < 1.0 < wrong_loss[differs].mean()
    assert recogniser.encodable("THE") and not recogniser.encodable("") and not recogniser.encodable("\x07")


def test_gradient_descent_on_the_ocr_loss_makes_an_image_read_as_its_word(recogniser, words):
    images, boxes, texts = words
    target = texts[0]
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)  # a flat grey image where the word should be
    optimizer = torch.optim.Adam([x], lr=0.05)
    for _ in range(40):
        loss = recogniser.ctc_loss(word_crops(x, boxes[:1], 64), [target]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5


def test_the_training_term_reads_only_usable_samples(recogniser, words):
    images, boxes, texts = words
    kept = boxes[:6].clone()
    kept[2] = 0  # a dropped transcript has no boxes
    t = torch.tensor([100, 500, 600, 700, 900, 300])
    term = ocr_loss(recogniser, images[:6], kept, texts[:6], t, [200, 800], samples=2)
    assert (term > 0).tolist() == [False, True, False, True, False, False]  # in the window, boxed, 2
    multiline = [texts[0], "A\nB", *texts[2:6]]
    assert ocr_loss(recogniser, images[:6], boxes[:6], multiline, t, [0, 1000], 6)[1] == 0
