"""Random transcripts for synthetic images, mixed from several sources by weight
(docs/architecture.md, "Synthetic shards (stage 1)"; adding a source: "Extension points").

Sources: dictionary words (wordfreq's frequency list, shipped inside its wheel), random character
strings (so the model must learn to spell rather than memorise a vocabulary), numbers / dates /
times / prices, punctuation-heavy phrases, and multi-line "posts" built from the others. Each line
then gets a case variant. Everything depends only on the `random.Random` passed in, so a sample is
reproducible from its seed. Words listed in `exclude_words_file` never appear (held-out prompts).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from glyphgen.config import require, require_path
from glyphgen.eval.prompts import HELD_OUT_WORDS

CASES = ("as_is", "lower", "upper", "title")
_MAX_RANDOM_CHARS = 12
_LINE_TRIES = 20  # redraws of a line from one source before the whole text is redrawn
_MONTHS = "January February March April May June July August September October November December".split()
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Punctuation-heavy templates; each {} is filled with a dictionary word.
_PHRASES = (
    "{}!", "{}?", "{}...", "{}?!", "{}, {}.", "{}, {}!", "{}; {}", "{}: {}", '"{}"', '"{} {}"',
    "'{}'", "({})", "[{}]", "{} ({})", "{}-{}", "{}/{}", "#{}", "#{}{}", "@{}", "{}@{}.com",
    "www.{}.org", "*{}*", "{} & {}", "{} - {}", "{}'s {}", "{}, {} & {}", "{}? {}!", "<{}>",
)  # fmt: skip


def _check_weights(obj) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        require(value >= 0, f.name, f"weight must be >= 0, got {value}")


@dataclass
class SourceWeights:
    """One weight per source, in the order sources are drawn. Every field but `posts` names a line
    source, made by the `TextSampler` method `_NAME`; adding a field adds the source."""

    words: float = 0.3
    """1-4 dictionary words from the top `vocab_size` English words, common ones more often."""
    random_chars: float = 0.2
    """Random strings of letters/digits/punctuation, 1-12 characters: forces spelling."""
    numbers: float = 0.15
    """Integers, decimals, prices, percentages, dates, times and phone numbers."""
    punctuation: float = 0.15
    """Words wrapped in punctuation: quotes, brackets, hashtags, e-mails, exclamations."""
    posts: float = 0.2
    """Multi-line texts: 2-5 lines (at most `max_lines`), each drawn from the other sources."""

    def __post_init__(self):
        _check_weights(self)


SOURCES = tuple(f.name for f in fields(SourceWeights))
"""Every source, in the order of `SourceWeights`."""
POSTS = "posts"
"""The multi-line source: its lines come from the others."""
LINE_SOURCES = tuple(s for s in SOURCES if s != POSTS)
"""The sources that make one line each (posts draw their lines from these)."""
POSTS_FALLBACK = "words"
"""Where posts draw their lines from when every line source weighs 0."""


@dataclass
class CaseWeights:
    as_is: float = 0.4
    """Keep the source's own case (dictionary words are lower case)."""
    lower: float = 0.15
    """All lower case."""
    upper: float = 0.2
    """ALL UPPER CASE."""
    title: float = 0.25
    """First Letter Of Each Word Upper Case."""

    def __post_init__(self):
        _check_weights(self)


@dataclass
class RandomPoolWeights:
    """Which characters a random string is drawn from, weighted, one pool per string."""

    letters: float = 0.4
    """Letters only."""
    alnum: float = 0.3
    """Letters and digits."""
    visible: float = 0.3
    """Every visible character of the alphabet, punctuation included."""

    def __post_init__(self):
        _check_weights(self)


@dataclass
class TextConfig:
    sources: SourceWeights = field(default_factory=SourceWeights)
    """Relative weight of each text source."""
    case: CaseWeights = field(default_factory=CaseWeights)
    """Relative weight of each case variant, drawn per line."""
    max_chars: int = 32
    """Longest line a source may produce, in characters (the renderer may wrap it further)."""
    random_min_chars: int = 1
    """Shortest random string (the longest is max_chars, at most 12)."""
    random_pools: RandomPoolWeights = field(default_factory=RandomPoolWeights)
    """The character pools of the random strings."""
    max_lines: int = 5
    """Most lines in one transcript before wrapping."""
    vocab_size: int = 20000
    """How many of wordfreq's most frequent English words the word sources draw from."""
    word_skew: float = 2.0
    """How much more often common words are drawn: the word of rank r (0 the most common) is the one
    at N * u**word_skew for uniform u, so p(r) ~ r^(1/word_skew - 1). 2 gives p(r) ~ r^-1/2; 1 draws
    every word equally often (a vocabulary that is scored word by word, as the learning check is)."""
    exclude_words_file: str | None = HELD_OUT_WORDS
    """Text file with one word per line (`#` lines are comments); those words (any case) never appear
    in a transcript. Default: the evaluator's held-out word set (glyphgen/eval/prompts/words.txt), so
    it stays unseen in training; null excludes nothing."""

    def __post_init__(self):
        require(sum(vars(self.sources).values()) > 0, "sources", "all source weights are zero")
        require(sum(vars(self.case).values()) > 0, "case", "all case weights are zero")
        require(self.max_chars >= 1, "max_chars", f"must be >= 1, got {self.max_chars}")
        require(
            1 <= self.random_min_chars <= min(self.max_chars, _MAX_RANDOM_CHARS),
            "random_min_chars",
            f"must be between 1 and {min(self.max_chars, _MAX_RANDOM_CHARS)}, got {self.random_min_chars}",
        )
        require(sum(vars(self.random_pools).values()) > 0, "random_pools", "all pool weights are zero")
        require(self.max_lines >= 1, "max_lines", f"must be >= 1, got {self.max_lines}")
        require(self.vocab_size >= 1, "vocab_size", f"must be >= 1, got {self.vocab_size}")
        require(self.word_skew >= 1, "word_skew", f"must be >= 1, got {self.word_skew}")
        require_path(self.exclude_words_file, "exclude_words_file")


_VOCAB_CACHE: dict[tuple, list[str]] = {}


def load_vocab(vocab_size: int, alphabet: str, exclude: frozenset[str]) -> list[str]:
    """wordfreq's top English words (rank order) that the alphabet can spell, minus `exclude`."""
    key = (vocab_size, alphabet, exclude)
    if key not in _VOCAB_CACHE:
        import wordfreq  # loads its word list lazily: only processes that draw words pay for it

        allowed = set(alphabet)
        _VOCAB_CACHE[key] = [
            w
            for w in wordfreq.top_n_list("en", vocab_size)
            if any(c.isalpha() for c in w) and allowed.issuperset(w) and w not in exclude
        ]
    return _VOCAB_CACHE[key]


def read_word_list(path: str | None) -> frozenset[str]:
    """Lower-cased words of a one-word-per-line file (blank lines and `#` comments ignored)."""
    if path is None:
        return frozenset()
    lines = (w.strip().lower() for w in Path(path).read_text(encoding="utf-8").splitlines())
    return frozenset(w for w in lines if w and not w.startswith("#"))


def apply_case(line: str, case: str) -> str:
    if case == "lower":
        return line.lower()
    if case == "upper":
        return line.upper()
    if case == "title":  # not str.title(), which would write "Don'T"
        return " ".join(w[:1].upper() + w[1:] for w in line.split(" "))
    return line


class TextSampler:
    """Draws transcripts: `sample(rng)` returns text using only characters of `alphabet`, with at
    most `cfg.max_lines` lines of at most `cfg.max_chars` characters each."""

    def __init__(self, cfg: TextConfig, alphabet: str):
        self.cfg = cfg
        self.alphabet = frozenset(alphabet)
        self.excluded = read_word_list(cfg.exclude_words_file)
        self.vocab = load_vocab(cfg.vocab_size, alphabet, self.excluded)
        if not self.vocab and (cfg.sources.words or cfg.sources.punctuation):
            raise ValueError(
                "no dictionary word can be spelled with this alphabet: set the words and punctuation weights to 0"
            )
        visible = sorted(c for c in alphabet if not c.isspace())
        self.letters = "".join(c for c in visible if c.isalpha())
        self.alnum = "".join(c for c in visible if c.isalnum())
        self.visible = "".join(visible)
        self._source_weights = [getattr(cfg.sources, s) for s in SOURCES]
        self._case_weights = [getattr(cfg.case, c) for c in CASES]
        self._line_weights = [getattr(cfg.sources, s) for s in LINE_SOURCES]
        if sum(self._line_weights) == 0:  # posts only
            self._line_weights = [float(s == POSTS_FALLBACK) for s in LINE_SOURCES]

    def sample(self, rng: random.Random) -> str:
        return self.sample_with_source(rng)[0]

    def sample_with_source(self, rng: random.Random) -> tuple[str, str]:
        """(text, name of the source that made it)."""
        for _ in range(100):
            source = rng.choices(SOURCES, self._source_weights)[0]
            if source == POSTS:
                n = rng.randint(min(2, self.cfg.max_lines), min(5, self.cfg.max_lines))
                kinds = rng.choices(LINE_SOURCES, self._line_weights, k=n)
                lines = [self._line(rng, kind) for kind in kinds]
            else:
                lines = [self._line(rng, source)]
            if None not in lines:
                return "\n".join(lines), source
        raise ValueError(
            "text sources cannot produce lines within the alphabet and max_chars; check the text config"
        )

    def _line(self, rng: random.Random, source: str) -> str | None:
        """One line from `source` with a case variant; a line that breaks a rule (too long, outside
        the alphabet, an excluded word) is redrawn from the same source, so the mix of sources
        stays as weighted. None when the source keeps failing."""
        for _ in range(_LINE_TRIES):
            raw = getattr(self, f"_{source}")(rng)
            if raw is None:
                return None
            line = apply_case(" ".join(raw.split()), rng.choices(CASES, self._case_weights)[0])
            if (
                line
                and len(line) <= self.cfg.max_chars
                and self.alphabet.issuperset(line)
                and not self._excludes(line)
            ):
                return line
        return None

    def _excludes(self, line: str) -> bool:
        return bool(self.excluded) and any(w in self.excluded for w in _WORD_RE.findall(line.lower()))

    def _word(self, rng: random.Random) -> str:
        # By default rank = N * u^2, i.e. p(rank) ~ rank^-1/2: common words come up more often than
        # rare ones, yet none dominates (by true frequency "the" would be every 20th word).
        return self.vocab[int(len(self.vocab) * rng.random() ** self.cfg.word_skew)]

    def _words(self, rng: random.Random) -> str | None:
        if not self.vocab:
            return None
        words = [self._word(rng) for _ in range(rng.randint(1, 4))]
        while len(words) > 1 and len(" ".join(words)) > self.cfg.max_chars:
            words.pop()
        return " ".join(words)

    def _random_chars(self, rng: random.Random) -> str | None:
        pools = self.cfg.random_pools
        weights = (pools.letters, pools.alnum, pools.visible)
        pool = rng.choices((self.letters, self.alnum, self.visible), weights)[0]
        if not pool:
            return None
        n = rng.randint(self.cfg.random_min_chars, min(_MAX_RANDOM_CHARS, self.cfg.max_chars))
        return "".join(rng.choices(pool, k=n))

    def _punctuation(self, rng: random.Random) -> str | None:
        if not self.vocab:
            return None
        template = rng.choice(_PHRASES)
        return template.format(*(self._word(rng) for _ in range(template.count("{}"))))

    def _numbers(self, rng: random.Random) -> str:
        kind = rng.choice(("int", "decimal", "price", "percent", "date", "time", "phone", "misc"))
        return getattr(self, f"_num_{kind}")(rng)

    @staticmethod
    def _num_int(rng: random.Random) -> str:
        n = int(10 ** rng.uniform(0, 7))
        text = f"{n:,}" if n >= 1000 and rng.random() < 0.5 else str(n)
        return ("-" if rng.random() < 0.1 else "") + text

    @staticmethod
    def _num_decimal(rng: random.Random) -> str:
        return f"{rng.uniform(-100, 1000) if rng.random() < 0.2 else 10 ** rng.uniform(-2, 4):.{rng.randint(1, 3)}f}"

    @staticmethod
    def _num_price(rng: random.Random) -> str:
        x = 10 ** rng.uniform(-1, 5)
        return rng.choice((f"${x:,.2f}", f"${x:.0f}", f"{x:.2f} USD", f"USD {x:,.2f}", f"-${x:.2f}"))

    @staticmethod
    def _num_percent(rng: random.Random) -> str:
        x = rng.uniform(0, 100)
        return rng.choice((f"{x:.0f}%", f"{x:.1f}%", f"+{x:.1f}%", f"-{x:.2f}%", f"{x:.0f} %"))

    @staticmethod
    def _num_date(rng: random.Random) -> str:
        y, m, d = rng.randint(1900, 2099), rng.randint(1, 12), rng.randint(1, 28)
        month = _MONTHS[m - 1]
        return rng.choice(
            (f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}", f"{d}.{m}.{y % 100:02d}", f"{month[:3]} {d}, {y}",
             f"{d} {month} {y}", f"{m}/{d}", f"'{y % 100:02d}")
        )  # fmt: skip

    @staticmethod
    def _num_time(rng: random.Random) -> str:
        h, m, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
        h12 = h % 12 or 12
        return rng.choice((f"{h:02d}:{m:02d}", f"{h12}:{m:02d} {'am' if h < 12 else 'pm'}", f"{h:02d}:{m:02d}:{s:02d}",
                           f"{h12}:{m:02d}{'AM' if h < 12 else 'PM'}", f"{h}h{m:02d}"))  # fmt: skip

    @staticmethod
    def _num_phone(rng: random.Random) -> str:
        a, b, c = rng.randint(200, 999), rng.randint(200, 999), rng.randint(0, 9999)
        return rng.choice(
            (f"{a}-{b}-{c:04d}", f"({a}) {b}-{c:04d}", f"+1 {a} {b} {c:04d}", f"{a}.{b}.{c:04d}")
        )

    @staticmethod
    def _num_misc(rng: random.Random) -> str:
        a, b = rng.randint(0, 99), rng.randint(1, 99)
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(a % 10 if a % 100 not in (11, 12, 13) else 0, "th")
        return rng.choice((f"{a}/{b}", f"{a}-{b}", f"{a}:{b}", f"v{a % 10}.{b}.{rng.randint(0, 9)}", f"{a}{suffix}",
                           f"#{a}{b}", f"{a}x{b}", f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(0, 255)}"))  # fmt: skip
