"""Train the fast learned stage shipped in sidecar/guards/data/injection_ngram.bin (`make train`).

Offline only (numpy, scipy, scikit-learn: the `train` extra). The features are the runtime's
own (`sidecar.guards.injection_ngram.window_features`), so training and serving cannot drift.

One logistic regression (SGD, log loss) over hashed character 2-5-grams of 320-character
windows, fitted on: every trainable text as it comes (long texts contribute each window,
weighted so a text counts once); every trainable attack planted at the start, middle or end of
a benign carrier document (the window a scan sees around it); the carriers themselves; the
training folder's documents and tool results with and without embedded injections; and the
project's own generated rows. Over-defence is penalised: the own benign persona, role-play,
security-education, trigger-word, task-line and e-mail rows weigh OVERDEFENCE_WEIGHT times a
normal row. The artifact has two heads, `direct` (user turns) and `data` (tool results and
documents): they share these weights and differ in calibration.

Calibration: the offsets are set from leave-one-source-out logits of the visible benign rows
(never the frozen ones): `direct` flags at most TARGET_FPR of the benign user turns, `data` at
most DATA_TARGET_FPR of the benign documents and tool results (and is never laxer than direct).
Deterministic: fixed seeds, sorted inputs, SGD with a fixed order.

    python tools/train_injection.py [--data DIR] [--out FILE] [--no-calibrate]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import injection_corpus as corpus

from sidecar.guards.injection_ngram import (
    BITS,
    NgramHead,
    NgramModel,
    fold_text,
    window_features,
)

OUT = corpus.ROOT / "sidecar" / "guards" / "data" / "injection_ngram.bin"
ALPHA = 5e-6  # L2 strength of the logistic regression (SGD, log loss)
EPOCHS = 15
OVERDEFENCE_WEIGHT = 3.0
MAX_WINDOWS_PER_TEXT = 8
TARGET_FPR = 0.004
DATA_TARGET_FPR = 0.01
OOF_DUMP = corpus.ROOT / ".eval" / "out" / "oof_logits.json"  # for inspection, when .eval exists
PLANT_CONTEXT = 220  # carrier characters kept on each side of a planted text
SEED = 7


class Examples:
    """A growing sparse design matrix: one row per window, with label, weight and group."""

    def __init__(self) -> None:
        self.indptr = [0]
        self.indices: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.labels: list[int] = []
        self.weights: list[float] = []
        self.groups: list[str] = []
        self._cache: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, text: str, label: int, group: str, weight: float = 1.0) -> None:
        feats = self._cache.get(text)
        if feats is None:
            feats = window_features(fold_text(text))
            if len(feats) > MAX_WINDOWS_PER_TEXT:
                step = len(feats) / MAX_WINDOWS_PER_TEXT
                feats = [feats[int(i * step)] for i in range(MAX_WINDOWS_PER_TEXT)]
            self._cache[text] = feats
        w = weight / len(feats)
        for idx, vals in feats:
            self.indices.append(idx)
            self.values.append(vals)
            self.indptr.append(self.indptr[-1] + len(idx))
            self.labels.append(label)
            self.weights.append(w)
            self.groups.append(group)

    def matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix(
            (np.concatenate(self.values), np.concatenate(self.indices), np.array(self.indptr)),
            shape=(len(self.labels), 1 << BITS),
        )


def _weight(row: corpus.Row) -> float:
    return OVERDEFENCE_WEIGHT if row.group.startswith("own:") and row.label == 0 else 1.0


def _snippet(doc: str, text: str, rng: random.Random) -> str:
    """The window a runtime scan sees around a text planted in a carrier document."""
    where = rng.choice(["start", "middle", "end"])
    planted = corpus.plant(doc, text, where)
    at = planted.find(text)
    return planted[max(0, at - PLANT_CONTEXT) : at + len(text) + PLANT_CONTEXT]


def build_examples(rows: Sequence[corpus.Row], carriers: Sequence[str]) -> Examples:
    """Training windows: every text as it comes, every attack planted into a carrier document,
    and the carriers themselves (benign)."""
    ex = Examples()
    rng = random.Random(SEED)  # noqa: S311 (reproducible sampling, not secrets)
    for row in rows:
        w = _weight(row)
        ex.add(row.text, row.label, row.group, w)
        if row.channel != "data" and row.label == 1 and len(row.text) <= corpus.MAX_PLANT and carriers:
            ex.add(_snippet(rng.choice(carriers), row.text, rng), 1, row.group, w)
    for doc in carriers:
        ex.add(doc, 0, "carrier", 1.0)
    return ex


def fit_head(ex: Examples, mask: np.ndarray | None = None) -> NgramHead:
    x = ex.matrix()
    y = np.array(ex.labels)
    sw = np.array(ex.weights)
    if mask is not None:
        x, y, sw = x[mask], y[mask], sw[mask]
    pos = sw[y == 1].sum()
    neg = sw[y == 0].sum()
    sw = np.where(y == 1, sw * (neg / pos), sw)  # balance the classes by weight
    clf = SGDClassifier(loss="log_loss", alpha=ALPHA, max_iter=EPOCHS, tol=None, random_state=SEED)
    clf.fit(x, y, sample_weight=sw * (len(y) / sw.sum()))
    return NgramHead(clf.coef_[0].astype(np.float32), float(clf.intercept_[0]))


def offset_for(logits: Sequence[float], target: float = TARGET_FPR) -> float:
    """The offset that puts the threshold (logit 0) above all but `target` of benign logits."""
    if not logits:
        return 0.0
    ordered = sorted(logits, reverse=True)
    k = math.floor(target * len(ordered))
    return max(0.0, ordered[k] + 1e-3)


def load_training(data_dir: Path) -> tuple[list[corpus.Row], list[str]]:
    folder = corpus.load_folder(data_dir)
    rows = [r for r in folder if corpus.trainable(r)] + corpus.generated_rows()
    return rows, corpus.carriers_of(folder, frozen=False)


def loso_offsets(rows: Sequence[corpus.Row], ex: Examples) -> tuple[float, float]:
    """(user, data) offsets from out-of-fold logits of visible benign rows: user turns for the
    first, documents and tool results for the second (never below the first)."""
    groups = sorted({r.group for r in rows if not r.group.startswith("own:")})
    ex_groups = np.array(ex.groups)
    user_logits: list[float] = []
    data_logits: list[float] = []
    oof: list[tuple[str, str, float]] = []
    for g in groups:
        held = [r for r in rows if r.group == g and r.label == 0]
        if not held:
            continue
        head = fit_head(ex, ex_groups != g)
        for r in held:
            z = head.text_logit(r.text)
            (data_logits if r.channel == "data" else user_logits).append(z)
            oof.append((g, r.channel, z))
        print(f"  fold {g}: {len(held)} benign", file=sys.stderr)
    if OOF_DUMP.parent.is_dir():
        OOF_DUMP.write_text(json.dumps(oof))
    user = offset_for(user_logits)
    return user, max(user, offset_for(data_logits, DATA_TARGET_FPR))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=corpus.DATA_DIR)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-calibrate", action="store_true")
    args = ap.parse_args(argv)
    rows, carriers = load_training(args.data)
    print(f"{len(rows)} rows, {len(carriers)} carriers", file=sys.stderr)
    ex = build_examples(rows, carriers)
    d_off, a_off = (0.0, 0.0) if args.no_calibrate else loso_offsets(rows, ex)
    head = fit_head(ex)
    model = NgramModel(
        NgramHead(head.weights, head.bias, round(d_off, 4)),
        NgramHead(head.weights, head.bias, round(a_off, 4)),
    )
    raw = model.to_bytes()
    args.out.write_bytes(raw)
    print(
        f"wrote {args.out} ({len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}); "
        f"offsets direct {d_off:.3f} data {a_off:.3f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
