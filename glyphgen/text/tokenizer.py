"""Character-level tokenizer: one id per character of an alphabet, plus special ids
(docs/architecture.md, "Tokenizer and text encoder").

Ids 0..4 are `pad`, `bos`, `eos`, `unk` and `null`; characters follow in alphabet order. Pad has an
id of its own so the key-padding mask can never hide a real token (frank's code reused BOS for
padding and lost BOS in the mask). `null` is the classifier-free-guidance "no text" transcript.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from glyphgen.config import require
from glyphgen.text.alphabet import BOS, DEFAULT_ALPHABET, EOS, NULL, PAD, SPECIALS, UNK

__all__ = [
    "BOS",
    "DEFAULT_ALPHABET",
    "EOS",
    "NULL",
    "PAD",
    "SPECIALS",
    "UNK",
    "CharTokenizer",
    "TokenizerConfig",
]


@dataclass
class TokenizerConfig:
    alphabet: str = DEFAULT_ALPHABET
    """Characters with an id of their own; anything else becomes `unk` (and is counted)."""
    max_length: int = 384
    """Context length in tokens, including BOS and EOS; longer transcripts are truncated (counted)."""

    def __post_init__(self):
        require(len(self.alphabet) > 0, "alphabet", "must not be empty")
        require(len(set(self.alphabet)) == len(self.alphabet), "alphabet", "has repeated characters")
        require(self.max_length >= 3, "max_length", f"must be >= 3, got {self.max_length}")


class CharTokenizer:
    """Maps transcripts to id tensors and back. Counts unknown characters and truncations."""

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        self.alphabet = self.config.alphabet
        self.max_length = self.config.max_length
        self._ids = {c: i + len(SPECIALS) for i, c in enumerate(self.alphabet)}
        self.vocab_size = len(SPECIALS) + len(self.alphabet)
        self.unknown_chars = 0
        self.truncated = 0

    def encode(self, text: str) -> list[int]:
        """BOS + one id per character + EOS, truncated to `max_length` (the EOS is kept)."""
        ids = [self._ids.get(c, UNK) for c in text]
        unknown = ids.count(UNK)
        if unknown:
            self.unknown_chars += unknown
        if len(ids) > self.max_length - 2:
            self.truncated += 1
            ids = ids[: self.max_length - 2]
        return [BOS, *ids, EOS]

    def decode(self, ids) -> str:
        """Characters of `ids`, skipping specials; `unk` decodes to U+FFFD so its place stays visible."""
        out = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if i == UNK:
                out.append("\ufffd")
            elif i >= len(SPECIALS):
                out.append(self.alphabet[i - len(SPECIALS)])
        return "".join(out)

    def batch(self, texts: list[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L] int64, mask [B, L] bool, True for real tokens), padded with PAD to the longest
        sequence or to `pad_to`."""
        seqs = [self.encode(t) for t in texts]
        length = max(pad_to or 0, max((len(s) for s in seqs), default=2))
        ids = torch.full((len(seqs), length), PAD, dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        return ids, ids != PAD

    def null_ids(self) -> list[int]:
        """The transcript used for classifier-free guidance's unconditional branch."""
        return [BOS, NULL, EOS]

    def warn_counts(self, where: str) -> None:
        """One warning summarising unknown characters and truncations seen so far."""
        if self.unknown_chars or self.truncated:
            warnings.warn(
                f"{where}: {self.unknown_chars} characters outside the alphabet mapped to <unk>, "
                f"{self.truncated} transcripts truncated to {self.max_length} tokens",
                stacklevel=2,
            )
