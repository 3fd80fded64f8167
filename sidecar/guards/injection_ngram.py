"""The fast learned stage: hashed character n-grams under two small logistic-regression heads.

Why character n-grams: they carry across wording, spelling tricks and languages (no tokenizer,
no vocabulary; Chinese and Thai work like English), and hashing them with numpy costs a few
microseconds per hundred characters, so every slot of every request can afford it.

Features of a window of text: the distinct hashed 2- to 5-grams of its folded form (NFKC,
casefold, whitespace runs collapsed), each counted, the count vector L2-normalised. Because the
vector is normalised, repeating a text ("You are welcome. " x 10) gives the same score as the
text once: scores do not grow with repetition. Long texts are scored in overlapping windows and
the highest window wins, so an instruction planted in the middle of a long document is not
diluted by the text around it.

Two heads share the features: `direct` judges a user turn, `data` judges text that arrives as
data (tool results, documents), where the signal is an instruction addressed to the assistant.
Weights: data/injection_ngram.bin, built by `make train` (tools/train_injection.py); the model
card is data/MODEL_CARD_injection.md. Pure: the file is read once, on first use.
"""

from __future__ import annotations

import functools
import json
import math
import unicodedata
import zlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

BITS = 18
NGRAMS = (2, 3, 4, 5)
WINDOW = 512  # characters per window
STRIDE = 256
MAX_WINDOWS = 64  # a longer text is scored on evenly spread windows (bounded cost)
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


def hashes(codes: npt.NDArray[np.uint64]) -> Ints:
    """Bucket ids of every 2- to 5-gram of the code points (with repeats), one array."""
    parts: list[Ints] = []
    n_codes = len(codes)
    with np.errstate(over="ignore"):
        for n in NGRAMS:
            if n_codes < n:
                break
            m = n_codes - n + 1
            h = codes[:m] ^ _SALTS[n]
            for k in range(1, n):
                h = h * _MUL + codes[k : k + m]
            parts.append(((h * _MUL) >> _SHIFT).astype(np.int64))
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts)


def window_features(folded: str) -> list[tuple[Ints, Floats]]:
    """(bucket ids, L2-normalised counts) of each window of a folded text."""
    codes = _codes(folded)
    n = len(codes)
    if n <= WINDOW:
        starts = [0]
    else:
        last = n - WINDOW
        starts = list(range(0, last, STRIDE)) + [last]
        if len(starts) > MAX_WINDOWS:
            step = (len(starts) - 1) / (MAX_WINDOWS - 1)
            starts = [starts[round(i * step)] for i in range(MAX_WINDOWS)]
    out: list[tuple[Ints, Floats]] = []
    for s in starts:
        idx, counts = np.unique(hashes(codes[s : s + WINDOW]), return_counts=True)
        vals = counts.astype(np.float32)
        norm = float(np.sqrt(np.dot(vals, vals))) or 1.0
        out.append((idx, vals / norm))
    return out


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
        """Highest logit over the windows (calibrated: the offset is subtracted)."""
        w = self.weights
        best = max(float(np.dot(w[idx], vals)) for idx, vals in feats) if feats else 0.0
        return best + self.bias - self.offset

    def probability(self, text: str) -> float:
        """Calibrated probability that `text` is an injection, for this head."""
        return _sigmoid(self.logit(window_features(fold_text(text))))


@dataclass(frozen=True, slots=True)
class NgramModel:
    """The two heads; `score(text, as_data)` is a probability in [0, 1]."""

    direct: NgramHead
    data: NgramHead

    def score(self, text: str, as_data: bool = False) -> float:
        feats = window_features(fold_text(text))
        return _sigmoid((self.data if as_data else self.direct).logit(feats))

    def score_both(self, text: str) -> tuple[float, float]:
        """(direct, data) probabilities from one feature pass."""
        feats = window_features(fold_text(text))
        return _sigmoid(self.direct.logit(feats)), _sigmoid(self.data.logit(feats))

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
        head = json.loads(line)
        if head.get("format") != FORMAT or head["bits"] != BITS or tuple(head["ngrams"]) != NGRAMS:
            raise ValueError("the n-gram artifact does not match this version's features")
        w = np.frombuffer(zlib.decompress(packed), dtype="<f2").astype(np.float32)
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
