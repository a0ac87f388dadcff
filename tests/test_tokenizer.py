"""Character-level tokenizer: round trip, special ids, padding mask, unknown characters."""

from __future__ import annotations

import torch

from glyphgen.text.tokenizer import BOS, EOS, NULL, PAD, UNK, CharTokenizer, TokenizerConfig


def test_round_trip_keeps_case_newlines_and_punctuation():
    tok = CharTokenizer()
    text = "the\nwhat string\ncommit\nString evolved\nLEGGED 3.14% (ok)!"
    ids = tok.encode(text)
    assert ids[0] == BOS and ids[-1] == EOS
    assert tok.decode(ids) == text
    assert tok.unknown_chars == 0


def test_special_ids_are_distinct_and_pad_is_never_a_character():
    tok = CharTokenizer()
    assert len({PAD, BOS, EOS, UNK, NULL}) == 5
    ids = tok.encode(tok.alphabet)
    assert PAD not in ids and len(set(ids[1:-1])) == len(tok.alphabet)
    assert tok.vocab_size == 5 + len(tok.alphabet)


def test_batch_pads_with_pad_and_mask_marks_real_tokens():
    tok = CharTokenizer()
    ids, mask = tok.batch(["ab", "abcd\nef"], pad_to=12)
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == torch.long
    assert mask.sum(1).tolist() == [4, 9]
    assert (ids[~mask] == PAD).all() and (ids[mask] != PAD).all()
    assert mask[:, 0].all()  # BOS is a real token, never masked
    assert tok.decode(ids[1]) == "abcd\nef"


def test_unknown_characters_map_to_unk_and_are_counted():
    tok = CharTokenizer()
    ids = tok.encode("naïve → ok")
    assert ids.count(UNK) == 2 and tok.unknown_chars == 2
    assert tok.decode(ids) == "na\ufffdve \ufffd ok"


def test_truncation_keeps_eos_and_is_counted():
    tok = CharTokenizer(TokenizerConfig(max_length=6))
    ids = tok.encode("abcdefgh")
    assert len(ids) == 6 and ids[-1] == EOS and tok.decode(ids) == "abcd"
    assert tok.truncated == 1


def test_custom_alphabet():
    tok = CharTokenizer(TokenizerConfig(alphabet="ab\n"))
    assert tok.decode(tok.encode("abc\nba")) == "ab\ufffd\nba"
    assert tok.null_ids() == [BOS, NULL, EOS]
