"""Train the injection classifier shipped in sidecar/guards/data/injection_weights.json.

Offline only (needs scikit-learn and numpy; the sidecar does not). Features are the runtime's
own tokens of the base detection view (sidecar.guards.normalize), as unigram and bigram
counts, so training and serving cannot drift apart. Logistic regression with L2; weights below
a small magnitude are dropped to keep the file small.

Data: /work/shared/data/injection/*.jsonl (override with --data). Files or categories that
may not train shipped weights are excluded here and used for evaluation only:
xsafety (README asks for research use only) and the Enron emails (no explicit license).

    python tools/train_injection.py [--data DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.guards.normalize import build_views  # noqa: E402

DATA_DIR = Path("/work/shared/data/injection")
SYNTHETIC = sorted((ROOT / "tests" / "guards" / "cases").glob("injection_train_*.jsonl"))
OUT = ROOT / "sidecar" / "guards" / "data" / "injection_weights.json"
EVAL_ONLY_FILES = frozenset({"xsafety_multilingual_goal_hijacking"})
EVAL_ONLY_CATEGORY_PREFIXES = ("benign_email:enron",)
WINDOW, STRIDE = 128, 64
C, MIN_DF, MIN_ABS_WEIGHT = 0.5, 2, 0.02
# The runtime subtracts this from the logit: a classifier probability of 0.99 maps to score 0.5.
# Chosen on the leave-source-out figures (docs/injection-eval.md), where the raw 0.5 cut-off
# gave 4.4% false positives on benign sources the model had not seen (0.99: under 1%).
LOGIT_OFFSET = round(math.log(0.99 / 0.01), 4)
SEED = 7


def load_rows(data_dir: Path, synthetic: bool = True) -> list[dict[str, Any]]:
    """All labelled rows, each with a `file` key (the group used for leave-source-out).

    With `synthetic`, the template-generated rows of tests/guards/cases/injection_train_*.jsonl
    are added (group "synthetic:<name>"); they train every fold and are never evaluated.
    """
    rows: list[dict[str, Any]] = []
    paths = sorted(data_dir.glob("*.jsonl")) + (SYNTHETIC if synthetic else [])
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                row["file"] = ("synthetic:" + path.stem) if path in SYNTHETIC else path.stem
                rows.append(row)
    return rows


def trainable(row: dict[str, Any]) -> bool:
    """May this row train the shipped weights (license and README caveats)?"""
    if row["file"] in EVAL_ONLY_FILES:
        return False
    return not str(row.get("category", "")).startswith(EVAL_ONLY_CATEGORY_PREFIXES)


def features(text: str) -> Counter[str]:
    """Unigram and bigram counts of the base view's tokens, keys as stored in the JSON."""
    toks = build_views(text)[0].tokens
    c: Counter[str] = Counter(toks)
    c.update(f"{a} {b}" for a, b in itertools.pairwise(toks))
    return c


def sample_weights(rows: Sequence[dict[str, Any]]) -> list[float]:
    """Balance sources and labels: each (file, label) group weighs sqrt(size), not size.

    Large files of near-copies (spikee, garak) would otherwise dominate what is learned.
    """
    sizes = Counter((r["file"], r["label"]) for r in rows)
    raw = [math.sqrt(sizes[(r["file"], r["label"])]) / sizes[(r["file"], r["label"])] for r in rows]
    by_label: dict[int, float] = defaultdict(float)
    for r, w in zip(rows, raw, strict=True):
        by_label[r["label"]] += w
    return [w * len(rows) / (2 * by_label[r["label"]]) for r, w in zip(rows, raw, strict=True)]


def fit(rows: Sequence[dict[str, Any]], feats: Sequence[Counter[str]]) -> dict[str, Any]:
    """Fit logistic regression; return the JSON document the runtime loads."""
    from sklearn.feature_extraction import DictVectorizer  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    df: Counter[str] = Counter()
    for f in feats:
        df.update(f.keys())
    keep = {k for k, n in df.items() if n >= MIN_DF}
    vec = DictVectorizer()
    x = vec.fit_transform([{k: v for k, v in f.items() if k in keep} for f in feats]).tocsr()
    x.indices = x.indices.astype("int32")
    x.indptr = x.indptr.astype("int32")
    y = [r["label"] for r in rows]
    clf = LogisticRegression(C=C, max_iter=2000, solver="liblinear", random_state=SEED)
    clf.fit(x, y, sample_weight=sample_weights(rows))
    names = vec.get_feature_names_out()
    uni: dict[str, float] = {}
    bi: dict[str, float] = {}
    for name, w in zip(names, clf.coef_[0], strict=True):
        if abs(w) < MIN_ABS_WEIGHT:
            continue
        (bi if " " in name else uni)[str(name)] = round(float(w), 4)
    return {
        "format": "sidecar-injection-linear/1",
        "features": "base-view tokens (sidecar.guards.normalize.tokenize): unigram+bigram counts",
        "window": WINDOW,
        "stride": STRIDE,
        "bias": round(float(clf.intercept_[0]), 4),
        "logit_offset": LOGIT_OFFSET,
        "unigrams": uni,
        "bigrams": bi,
    }


def train(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Featurize and fit on the trainable rows."""
    use = [r for r in rows if trainable(r)]
    return fit(use, [features(r["text"]) for r in use])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = load_rows(args.data)
    model = train(rows)
    n_train = sum(1 for r in rows if trainable(r))
    args.out.write_text(
        json.dumps(model, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n",
        encoding="utf-8",
    )
    size = args.out.stat().st_size
    print(
        f"trained on {n_train} rows; {len(model['unigrams'])} unigrams, "
        f"{len(model['bigrams'])} bigrams; wrote {args.out} ({size / 1024:.0f} KiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
