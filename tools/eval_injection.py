"""Evaluate the injection detector by the protocol of docs/injection-eval.md (part 1).

Visible files: leave-one-source-out (the learned heads are refitted without the held-out file,
with the shipped calibration offsets). Frozen files and the external never-read sources: the
shipped model, scored once, reported apart. Both shapes: bare texts (`score_text`) and whole
requests (`judge_request`, built by tools/injection_corpus.py). For each: rules alone, learned
stage alone, context stage alone and the shipped combination, per source and per language.

    python tools/eval_injection.py [--json FILE] [--no-loso]
    python tools/eval_injection.py --baseline /path/to/checkout   # the old detector, same rows
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import injection_corpus as corpus

THRESHOLD = 0.5
SYSTEMS = ("rules", "learned", "context", "shipped")
Scored = dict[str, Any]  # {"label", "group", "lang", "shape", "scores": {system: score}}


def _slots(req: corpus.Request) -> list[Any]:
    from sidecar.model import TextSlot

    return [TextSlot(f"messages[{i}].content", s.role, s.trust, s.text) for i, s in enumerate(req.slots)]


def score_rows(
    det: Any, rows: Sequence[corpus.Row], carriers: list[str]
) -> tuple[list[Scored], list[Scored]]:
    """(bare, request-shaped) scores of rows under one detector, per layer and combined."""
    from sidecar.guards.injection_context import read_context

    bare: list[Scored] = []
    reqs: list[Scored] = []
    for row in rows:
        layers, _ = det.layer_scores(row.text, as_data=False)
        bare.append(_scored(row.label, row.group, row.lang, "bare", layers))
        for req in corpus.requests_for(row, carriers):
            ctx = read_context(s.text for s in req.slots if s.trust == "trusted")
            best: dict[str, float] = defaultdict(float)
            for s in req.slots:
                if s.trust == "trusted" or not s.text:
                    continue
                lay, _ = det.layer_scores(s.text, as_data=s.trust == "data", ctx=ctx)
                for k, v in lay.items():
                    best[k] = max(best[k], v)
            reqs.append(_scored(req.label, req.group, req.lang, req.shape, best))
    return bare, reqs


def _scored(label: int, group: str, lang: str, shape: str, layers: dict[str, float]) -> Scored:
    context = max(layers.get("context", 0.0), layers.get("hidden", 0.0))
    scores = {
        "rules": layers.get("rules", 0.0),
        "learned": layers.get("learned", 0.0),
        "context": context,
        "shipped": max(layers.values(), default=0.0),
    }
    return {"label": label, "group": group, "lang": lang, "shape": shape, "scores": scores}


def rates(items: Iterable[Scored], system: str) -> tuple[int, int, float, float]:
    """(attacks, benign, recall, false-positive rate) at THRESHOLD."""
    pos = neg = tp = fp = 0
    for it in items:
        hit = it["scores"][system] >= THRESHOLD
        if it["label"]:
            pos += 1
            tp += hit
        else:
            neg += 1
            fp += hit
    return pos, neg, tp / pos if pos else float("nan"), fp / neg if neg else float("nan")


def _fmt(x: float) -> str:
    return "–" if x != x else f"{x:.3f}"


def table(
    title: str, items: list[Scored], key: Callable[[Scored], str], systems: Sequence[str] = SYSTEMS
) -> str:
    by: dict[str, list[Scored]] = defaultdict(list)
    for it in items:
        by[key(it)].append(it)
    head = "| " + title + " | attacks | benign | " + " | ".join(f"{s} R / FPR" for s in systems) + " |"
    lines = [head, "|" + "---|" * (3 + len(systems))]
    for k in [*sorted(by), "**all**"]:
        group = items if k == "**all**" else by[k]
        pos, neg, _, _ = rates(group, systems[0])
        cells = []
        for s in systems:
            _, _, r, f = rates(group, s)
            cells.append(f"{_fmt(r)} / {_fmt(f)}")
        lines.append(f"| {k} | {pos} | {neg} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def partition(rows: Sequence[corpus.Row]) -> dict[str, list[corpus.Row]]:
    parts: dict[str, list[corpus.Row]] = {"visible": [], "frozen": [], "eval-only": []}
    for r in rows:
        if r.group in corpus.FROZEN_FILES or r.group.startswith("ext:"):
            parts["frozen"].append(r)
        elif r.group in corpus.EVAL_ONLY_FILES:
            parts["eval-only"].append(r)
        else:
            parts["visible"].append(r)
    return parts


def run_shipped(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import train_injection as tr

    from sidecar.guards.injection import InjectionDetector
    from sidecar.guards.injection_ngram import NgramHead, NgramModel, load_ngram_model

    folder = corpus.load_folder()
    rows = folder + corpus.load_external()
    parts = partition(rows)
    vis_carriers = corpus.carriers_of(folder, frozen=False)
    frozen_carriers = corpus.carriers_of(folder, frozen=True)
    shipped = InjectionDetector(threshold=THRESHOLD)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if not args.visible_only:  # the frozen group is scored only in the final run (protocol)
        out["frozen"] = score_rows(shipped, parts["frozen"], frozen_carriers)
        out["eval-only"] = score_rows(shipped, parts["eval-only"], vis_carriers)
        print(f"frozen + eval-only scored in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    bare: list[Scored] = []
    reqs: list[Scored] = []
    if args.loso:
        base = load_ngram_model()
        train_rows, carriers = tr.load_training(corpus.DATA_DIR)
        ex = tr.build_examples(train_rows, carriers)
        ex_groups = np.array(ex.groups)
        for g in sorted({r.group for r in parts["visible"]}):
            held = [r for r in parts["visible"] if r.group == g]
            h = tr.fit_head(ex, ex_groups != g)
            model = NgramModel(
                NgramHead(h.weights, h.bias, base.direct.offset),
                NgramHead(h.weights, h.bias, base.data.offset),
            )
            det = InjectionDetector(threshold=THRESHOLD, model=model)
            fold_carriers = [c for c in vis_carriers if c not in {r.text for r in held}]
            b, q = score_rows(det, held, fold_carriers)
            bare += b
            reqs += q
            print(f"  fold {g}: {len(held)} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out["visible"] = (bare, reqs)
    return out


def run_baseline(path: str) -> dict[str, Any]:
    """The detector of another checkout (e.g. main before issue 15): score_text on each slot
    of roles user/tool (its default scan roles), the system prompt not read."""
    sys.path.insert(0, path)
    from sidecar.guards.injection import InjectionDetector

    det = InjectionDetector(threshold=THRESHOLD)
    folder = corpus.load_folder()
    parts = partition(folder + corpus.load_external())
    carriers = {"frozen": corpus.carriers_of(folder, True)}
    out: dict[str, Any] = {}
    for name, rows in parts.items():
        bare, reqs = [], []
        for row in rows:
            s = det.score_text(row.text).score
            bare.append(_scored(row.label, row.group, row.lang, "bare", {"rules": s, "learned": s}))
            for req in corpus.requests_for(row, carriers.get(name, corpus.carriers_of(folder, False))):
                s = max(
                    (det.score_text(x.text).score for x in req.slots if x.trust != "trusted"), default=0.0
                )
                reqs.append(_scored(req.label, req.group, req.lang, req.shape, {"rules": s, "learned": s}))
        out[name] = (bare, reqs)
    return out


def report(results: dict[str, Any], systems: Sequence[str]) -> str:
    parts = []
    for name in ("frozen", "eval-only", "visible"):
        if name not in results:
            continue
        bare, reqs = results[name]
        if not bare:
            continue
        parts.append(
            f"### {name}: request-shaped, per source\n\n"
            + table("source", reqs, lambda i: i["group"], systems)
        )
        parts.append(
            f"### {name}: bare texts, per source\n\n" + table("source", bare, lambda i: i["group"], systems)
        )
        parts.append(
            f"### {name}: request-shaped, per language\n\n"
            + table("language", reqs, lambda i: i["lang"], systems)
        )
        parts.append(
            f"### {name}: bare texts, per language\n\n"
            + table("language", bare, lambda i: i["lang"], systems)
        )
        parts.append(
            f"### {name}: request-shaped, per shape\n\n" + table("shape", reqs, lambda i: i["shape"], systems)
        )
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-loso", dest="loso", action="store_false")
    ap.add_argument("--visible-only", action="store_true", help="tuning: frozen group unscored")
    ap.add_argument("--baseline", help="path of a checkout whose detector is scored instead")
    args = ap.parse_args(argv)
    if args.baseline:
        results = run_baseline(args.baseline)
        systems: Sequence[str] = ("shipped",)
    else:
        sys.path.insert(0, str(corpus.ROOT))
        results = run_shipped(args)
        systems = SYSTEMS
    print(report(results, systems))
    if args.json:
        args.json.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
