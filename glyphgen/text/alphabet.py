"""The default alphabet and the special token ids, without importing torch (data workers use them)."""

from __future__ import annotations

import string

# Printable ASCII with case kept, plus the newline that separates lines of a transcript.
DEFAULT_ALPHABET = "\n" + "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")
PAD, BOS, EOS, UNK, NULL = range(5)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<null>")
