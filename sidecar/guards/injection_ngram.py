"""The fast learned stage: hashed character n-grams under a small logistic regression.

Why character n-grams: they need no tokenizer or vocabulary (Chinese and Thai are read like
English) and tolerate spelling tricks, and hashing them with numpy costs microseconds per
hundred characters, so every slot of every request can afford it. They learn wording, though:
docs/injection-eval.md measures how little of it carries to sources the model never saw.

Features of a window of text: the hashed 2- to 5-grams of its folded form (NFKC, casefold,
whitespace runs collapsed) as frequencies over at least MIN_NGRAMS n-grams, so the linear
score is about the mean weight of the window's n-grams, and a text of a few words cannot swing
it on one n-gram. A text of one window counts each distinct n-gram once; a longer text is read
in windows of counts. Either way, repeating a text ("You are welcome. " x 10) scores like the
text once: scores do not grow with repetition. Serving needs one hashing pass (and prefix sums
for the windows of a long text).
Long texts are scored in overlapping windows and the highest window wins, so an instruction
planted in the middle of a long document is not diluted by the text around it.

Two heads, `direct` for user turns and `data` for text that arrives as data (tool results,
documents); the shipped file gives both the same weights and a calibration each.
Weights: data/injection_ngram.bin, built by `make train` (tools/train_injection.py); the model
card is data/MODEL_CARD_injection.md. Pure: the file is read once, on first use.
"""

from __future__ import annotations

import functools
import json
import math
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

BITS = 18
NGRAMS = (2, 3, 4, 5)
WINDOW = 320  # characters per window
STRIDE = 96
MAX_WINDOWS = 4096  # a longer text is scored on evenly spread windows (bounded cost)
SCALE = 32.0  # features are n-gram frequencies x SCALE (keeps the L2 penalty in a useful range)
MIN_NGRAMS = 300  # frequencies of a short text are taken over at least this many n-grams
REPEAT_SAMPLE = 2048  # characters sampled to tell a repetitive long text
REPEAT_RATIO = 0.25  # fewer distinct n-grams than this share of the sample: repetitive
MAX_DISTINCT_CODES = 65_536  # a repetitive text's distinct n-grams are read from this prefix
_MUL = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(64 - BITS)
_SALTS = {n: np.uint64((n * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF) for n in NGRAMS}
ARTIFACT = "data/injection_ngram.bin"
FORMAT = "sidecar-ngram-1"

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def fold_text(text: str) -> str:
    """The form features are read from: NFKC, casefold, whitespace runs as one space."""
    if not text.isascii():
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
        text = text.casefold()
    else:
        text = text.lower()
    return " " + " ".join(text.split()) + " "


def _codes(text: str) -> npt.NDArray[np.uint64]:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.uint64)


def _hash_arrays(codes: npt.NDArray[np.uint64]) -> list[Ints]:
    """Bucket ids of the n-grams starting at each position, one array per n (shorter for larger n).

    Rolling: the (n+1)-gram hash extends the n-gram hash by one code point, so each size costs
    one multiply-add; a per-size salt and a multiplicative mix pick the bucket.
    """
    parts: list[Ints] = []
    with np.errstate(over="ignore"):
        h = codes
        for n in range(2, NGRAMS[-1] + 1):
            if len(codes) < n:
                break
            h = h[:-1] * _MUL + codes[n - 1 :]
            if n >= NGRAMS[0]:
                parts.append(((h ^ _SALTS[n]) * _MUL >> _SHIFT).astype(np.int64))
    return parts


def _starts(n: int) -> list[int]:
    if n <= WINDOW:
        return [0]
    last = n - WINDOW
    starts = [*range(0, last, STRIDE), last]
    if len(starts) > MAX_WINDOWS:
        step = (len(starts) - 1) / (MAX_WINDOWS - 1)
        starts = [starts[round(i * step)] for i in range(MAX_WINDOWS)]
    return starts


def _repetitive(codes: npt.NDArray[np.uint64]) -> bool:
    """A long text whose first REPEAT_SAMPLE characters are mostly repeats ("ignore " x 100).

    Such a text is read like a short one, by its distinct n-grams, so repeating a phrase past
    one window cannot raise its score.
    """
    sample = _hash_arrays(codes[:REPEAT_SAMPLE])
    if not sample:
        return False
    allh = np.concatenate(sample)
    return len(np.unique(allh)) < REPEAT_RATIO * len(allh)


def window_features(folded: str) -> list[tuple[Ints, Floats]]:
    """(bucket ids, values) of each window of a folded text (training; see `window_logits`)."""
    codes = _codes(folded)
    if len(codes) <= WINDOW or _repetitive(codes):
        parts = _hash_arrays(codes[:MAX_DISTINCT_CODES])
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        return [(ids, np.full(len(ids), SCALE / max(len(ids), MIN_NGRAMS), dtype=np.float32))]
    out: list[tuple[Ints, Floats]] = []
    for s in _starts(len(codes)):
        idx, counts = np.unique(np.concatenate(_hash_arrays(codes[s : s + WINDOW])), return_counts=True)
        out.append((idx, counts.astype(np.float32) * np.float32(SCALE / max(counts.sum(), MIN_NGRAMS))))
    return out


def window_logits(weights: Floats, folded: str) -> list[float]:
    """The linear score of every window (serving), equal to `weights @ window_features(...)`.

    A text of one window: the sum of the weights of its distinct n-grams over their number (at
    least MIN_NGRAMS, so a text of a few words cannot swing the score on one n-gram). Distinct
    n-grams make repeating a short text change nothing. Longer texts: each window's mean weight
    over its n-gram occurrences, from one hashing pass and prefix sums (up to the few n-grams
    that straddle a window's end).
    """
    codes = _codes(folded)
    n = len(codes)
    if n <= WINDOW or _repetitive(codes):
        parts = _hash_arrays(codes[:MAX_DISTINCT_CODES])
        if not parts:
            return [0.0]
        ids = np.unique(np.concatenate(parts))
        return [float(weights[ids].sum()) * SCALE / max(len(ids), MIN_NGRAMS)]
    parts = _hash_arrays(codes)
    per_pos = np.zeros(n + 1, dtype=np.float64)
    count = np.zeros(n + 1, dtype=np.float64)
    for h in parts:
        per_pos[1 : len(h) + 1] += weights[h]
        count[1 : len(h) + 1] += 1.0
    csum = np.cumsum(per_pos)
    ccount = np.cumsum(count)
    starts = np.array(_starts(n))
    ends = starts + WINDOW
    counts = np.maximum(ccount[ends] - ccount[starts], MIN_NGRAMS)
    return list(((csum[ends] - csum[starts]) / counts * SCALE).tolist())


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class NgramHead:
    """One logistic-regression head: weights per bucket, bias, and a calibration offset."""

    weights: Floats
    bias: float
    offset: float = 0.0

    def logit(self, feats: list[tuple[Ints, Floats]]) -> float:
        """Highest logit over precomputed windows (calibrated: the offset is subtracted)."""
        w = self.weights
        best = max(float(np.dot(w[idx], vals)) for idx, vals in feats) if feats else 0.0
        return best + self.bias - self.offset

    def text_logit(self, text: str) -> float:
        """Highest calibrated logit over the windows of a text (the serving path)."""
        return max(window_logits(self.weights, fold_text(text))) + self.bias - self.offset

    def probability(self, text: str) -> float:
        """Calibrated probability that `text` is an injection, for this head."""
        return _sigmoid(self.text_logit(text))


@dataclass(frozen=True, slots=True)
class NgramModel:
    """The two heads; `score(texts, as_data)` gives probabilities in [0, 1]."""

    direct: NgramHead
    data: NgramHead

    def score(self, texts: Sequence[str], as_data: bool = False) -> list[float]:
        """Probabilities for a batch of texts, with one head."""
        head = self.data if as_data else self.direct
        return [head.probability(t) for t in texts]

    def to_bytes(self) -> bytes:
        """Deterministic serialisation: a JSON header line, then zlib(float16 weights)."""
        head = {
            "format": FORMAT,
            "bits": BITS,
            "ngrams": list(NGRAMS),
            "window": WINDOW,
            "stride": STRIDE,
            "direct": {"bias": self.direct.bias, "offset": self.direct.offset},
            "data": {"bias": self.data.bias, "offset": self.data.offset},
        }
        body = self.direct.weights.astype("<f2").tobytes() + self.data.weights.astype("<f2").tobytes()
        return json.dumps(head, sort_keys=True).encode() + b"\n" + zlib.compress(body, 9)

    @classmethod
    def from_bytes(cls, raw: bytes) -> NgramModel:
        line, _, packed = raw.partition(b"\n")
        try:
            head = json.loads(line)
            body = zlib.decompress(packed)
        except (ValueError, zlib.error) as exc:
            raise ValueError("the n-gram artifact is damaged") from exc
        if (head.get("format"), head.get("bits"), tuple(head.get("ngrams", ())), head.get("window")) != (
            FORMAT,
            BITS,
            NGRAMS,
            WINDOW,
        ):
            raise ValueError("the n-gram artifact does not match this version's features")
        w = np.frombuffer(body, dtype="<f2").astype(np.float32)
        size = 1 << BITS
        if len(w) != 2 * size:
            raise ValueError("the n-gram artifact is truncated")
        direct = NgramHead(w[:size], float(head["direct"]["bias"]), float(head["direct"]["offset"]))
        data = NgramHead(w[size:], float(head["data"]["bias"]), float(head["data"]["offset"]))
        return cls(direct, data)


@functools.cache
def load_ngram_model() -> NgramModel:
    """The packaged model, read once."""
    raw = resources.files("sidecar.guards").joinpath(ARTIFACT).read_bytes()
    return NgramModel.from_bytes(raw)
