"""Prompt-injection and jailbreak detection: weighted rules plus a small linear classifier.

Two layers over the detection views of `sidecar.guards.normalize`:

* rules (data/injection_rules.tsv): categorized regexes in eleven languages. A rule's regex
  only runs when one of its trigger words is a token of the view (or, for scripts without
  spaces, a substring of it), so plain text pays a set intersection, not a regex scan. A rule
  may also require words or substrings (all of them) before its regex runs. All patterns use
  bounded repetitions over disjoint classes, so matching stays linear.
* classifier (data/injection_weights.json): logistic regression over word unigram and bigram
  counts, trained offline by tools/train_injection.py, run here as dict lookups. Long texts
  are scored in overlapping token windows, so an attack in the middle of a long document is
  not diluted by the benign text around it.

The score is max(rule score, classifier score) in [0, 1]; rule hits combine as noisy-OR.
Pure: the data files are read once, on first use; no I/O or logging per request.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sidecar.guards.normalize import View, build_views

DEFAULT_THRESHOLD = 0.5
DEFAULT_SCAN_ROLES = frozenset({"user", "tool", "function"})
DECODED_KINDS = frozenset({"base64", "hex", "url", "html", "rot13", "unicode_tags"})
CLASSIFIER_CATEGORY = "classifier"
ENCODED_CATEGORY = "encoded_payload"

REACH = 400  # no rule match extends further than this from one of its trigger words
MAX_WINDOWS = 24  # trigger occurrences per rule searched in windows before a full scan
_GAP = r"[\W_]{0,4}"
# Filler words never cross a sentence end, so "ignore X. The new instructions" is no match.
# Filler words are possessive (\w{1,20}+): a word is never split to retry the next part of the
# pattern inside it, which keeps near-miss text from costing hundreds of steps per position.
_FILLER = r"(?:[^\w.!?\n]{1,4}\w{1,20}+){0,4}[^\w.!?\n]{0,4}"


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """Injection score in [0, 1], the categories that drove it and (for chats) which message."""

    score: float
    categories: tuple[str, ...] = ()
    message_index: int | None = None
    detected: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    """One weighted, categorized pattern and the tokens or substrings that gate it."""

    rule_id: str
    category: str
    weight: float
    words: frozenset[str]
    substrings: tuple[str, ...]
    regex: re.Pattern[str]
    ascii_substrings: tuple[str, ...] = ()
    word_start: bool = False  # the pattern began with \b: checked in code, see `_search`
    long_range: bool = False  # the pattern can span more than REACH characters
    required_words: frozenset[str] = frozenset()  # '+word' triggers: all must be tokens
    required_subs: tuple[str, ...] = ()  # '+~text' triggers: all must be substrings


def _expand(pattern: str) -> str:
    return unicodedata.normalize("NFKC", pattern.replace("~~", _FILLER).replace("__", _GAP))


def parse_rules(lines: Iterable[str]) -> tuple[Rule, ...]:
    """Parse the TSV rule table: id, category, weight, triggers, pattern.

    Triggers: `word` (a token of the view) or `~text` (a substring) gate the rule, any one
    suffices; `+word` and `+~text` must all be present as well. Required triggers keep a rule
    built from common words (say, "repeat ... N times") from running on every text that has one.
    """
    rules: list[Rule] = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        rule_id, category, weight, triggers, pattern = line.rstrip("\n").split("\t")
        any_of = [t for t in triggers.split() if t[0] != "+"]
        all_of = [t[1:] for t in triggers.split() if t[0] == "+"]
        words = frozenset(t for t in any_of if not t.startswith("~"))
        subs = tuple(unicodedata.normalize("NFKC", t[1:]) for t in any_of if t[0] == "~")
        req_words = frozenset(t for t in all_of if not t.startswith("~"))
        req_subs = tuple(unicodedata.normalize("NFKC", t[1:]) for t in all_of if t[0] == "~")
        ascii_subs = tuple(t for t in subs if t.isascii())
        # A leading \b stops the regex engine from skipping ahead to the first characters the
        # pattern can start with (a C-speed scan); the boundary is checked in `_search` instead.
        word_start = pattern.startswith(r"\b")
        rx = re.compile(_expand(pattern[2:] if word_start else pattern))
        long_range = "{1,4000}" in pattern or "{0,4000}" in pattern
        rules.append(
            Rule(
                rule_id,
                category,
                float(weight),
                words,
                subs,
                rx,
                ascii_subs,
                word_start,
                long_range,
                req_words,
                req_subs,
            )
        )
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class LinearModel:
    """Logistic regression over token unigram and bigram counts, windowed over long texts.

    Tokens map to integer ids (0 = unknown) so that a bigram is one int-keyed dict lookup,
    id_a * (size + 1) + id_b; ids start at 1, so a key with an unknown side never collides.
    """

    bias: float
    ids: Mapping[str, int]
    unigram_weights: Sequence[float]
    bigram_weights: Mapping[int, float]
    window: int
    stride: int
    offset: float = 0.0

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LinearModel:
        vocab = sorted(set(doc["unigrams"]) | {w for k in doc["bigrams"] for w in k.split(" ", 1)})
        ids = {w: i for i, w in enumerate(vocab, start=1)}
        size = len(vocab) + 1
        uni = [0.0] * size
        for w, v in doc["unigrams"].items():
            uni[ids[w]] = float(v)
        bigrams: dict[int, float] = {}
        for k, v in doc["bigrams"].items():
            a, b = k.split(" ", 1)
            bigrams[ids[a] * size + ids[b]] = float(v)
        return cls(
            bias=float(doc["bias"]),
            ids=ids,
            unigram_weights=uni,
            bigram_weights=bigrams,
            window=int(doc["window"]),
            stride=int(doc["stride"]),
            offset=float(doc.get("logit_offset", 0.0)),
        )

    @property
    def unigrams(self) -> dict[str, float]:
        """Nonzero unigram weights by token (for inspection and tests)."""
        uw = self.unigram_weights
        return {w: uw[i] for w, i in self.ids.items() if uw[i]}

    def max_logit(self, tokens: Sequence[str]) -> float:
        """Highest calibrated logit over windows of `window` tokens, one every `stride` tokens."""
        n = len(tokens)
        bias = self.bias - self.offset
        if n == 0:
            return bias
        ids = list(map(self.ids.get, tokens, itertools.repeat(0)))
        size = len(self.unigram_weights)
        keys = map(operator.add, map(operator.mul, ids, itertools.repeat(size)), ids[1:])
        bi = itertools.chain(map(self.bigram_weights.get, keys, itertools.repeat(0.0)), (0.0,))
        contrib = list(map(operator.add, map(self.unigram_weights.__getitem__, ids), bi))
        if n <= self.window:
            return bias + math.fsum(contrib)
        prefix = [0.0, *itertools.accumulate(contrib)]
        best = -math.inf
        for start in range(0, n - self.stride, self.stride):
            end = min(start + self.window, n)
            best = max(best, prefix[end] - prefix[start])
        return bias + best


def _search(rule: Rule, text: str, pos: int = 0, endpos: int | None = None) -> bool:
    """Does the rule match text[pos:endpos], honoring its leading word boundary?"""
    end = len(text) if endpos is None else endpos
    m = rule.regex.search(text, pos, end)
    if not rule.word_start:
        return m is not None
    while m is not None:
        start = m.start()
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            return True
        m = rule.regex.search(text, start + 1, end)
    return False


def _search_near(rule: Rule, text: str, anchors: Iterable[str]) -> bool:
    """Match the rule only in windows around its trigger words, falling back to a full scan.

    A rule's match lies within REACH characters of one of its trigger words, so on a long
    text a few short windows replace a scan of the whole view. Many occurrences (dense or
    adversarial text) or a rule with long-range parts take the full, still linear, scan.
    """
    if len(text) <= 4 * REACH or rule.long_range:
        return _search(rule, text)
    spans: list[tuple[int, int]] = []
    for anchor in anchors:
        at = text.find(anchor)
        while at >= 0:
            if len(spans) >= MAX_WINDOWS:
                return _search(rule, text)
            spans.append((max(0, at - REACH), at + len(anchor) + REACH))
            at = text.find(anchor, at + 1)
    spans.sort()
    lo, hi = -1, -1
    for a, b in spans:
        if a > hi:
            if hi > lo and _search(rule, text, lo, hi):
                return True
            lo = a
        hi = max(hi, b)
    return hi > lo and _search(rule, text, lo, hi)


def _group_by_first_char(
    by_sub: Mapping[str, Sequence[int]],
) -> tuple[tuple[str, tuple[tuple[str, tuple[int, ...]], ...]], ...]:
    """Trigger substrings grouped by their first character: ((char, ((sub, rule ids), ...)), ...)."""
    groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for sub, ids in by_sub.items():
        groups.setdefault(sub[0], []).append((sub, tuple(ids)))
    return tuple((c, tuple(g)) for c, g in groups.items())


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@functools.cache
def load_rules() -> tuple[Rule, ...]:
    """Load the packaged rule table once."""
    text = resources.files("sidecar.guards").joinpath("data/injection_rules.tsv")
    return parse_rules(text.read_text(encoding="utf-8").splitlines())


@functools.cache
def load_model() -> LinearModel:
    """Load the packaged classifier weights once."""
    raw = resources.files("sidecar.guards").joinpath("data/injection_weights.json")
    return LinearModel.from_json(json.loads(raw.read_text(encoding="utf-8")))


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a content-part list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


class InjectionDetector:
    """Scores text for prompt injection; build once (loads data) and share across requests."""

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        rules: Sequence[Rule] | None = None,
        model: LinearModel | None = None,
        use_rules: bool = True,
        use_classifier: bool = True,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be within [0, 1]")
        self.threshold = threshold
        self._rules = tuple(rules if rules is not None else load_rules()) if use_rules else ()
        self._model = (model if model is not None else load_model()) if use_classifier else None
        index: dict[str, list[int]] = {}
        for i, rule in enumerate(self._rules):
            for w in rule.words:
                index.setdefault(w, []).append(i)
        self._word_index = {w: tuple(ids) for w, ids in index.items()}
        self._trigger_words = frozenset(index)
        by_sub: dict[str, list[int]] = {}
        for i, rule in enumerate(self._rules):
            for sub in rule.substrings:
                by_sub.setdefault(sub, []).append(i)
        self._substrings = _group_by_first_char(by_sub)
        self._ascii_substrings = _group_by_first_char({k: v for k, v in by_sub.items() if k.isascii()})

    def _candidates(self, view: View) -> set[int]:
        """Indexes of rules whose trigger word or substring occurs in the view."""
        text = view.text
        ids: set[int] = set()
        for w in view.words & self._trigger_words:
            ids.update(self._word_index[w])
        if view.kind == "unspaced":  # words were merged: look for trigger words as substrings
            ids.update(i for w, rs in self._word_index.items() if w in text for i in rs)
        # Each distinct substring is searched once, and only when its first character occurs:
        # a text in one script skips the other scripts' triggers at the cost of a character test.
        for first, subs in self._ascii_substrings if text.isascii() else self._substrings:
            if first in text:
                for sub, rule_ids in subs:
                    if sub in text:
                        ids.update(rule_ids)
        return ids

    def _rule_hits(self, view: View, done: Mapping[str, float]) -> list[Rule]:
        """Rules matching this view, skipping rules an earlier view already matched."""
        rules = self._rules
        text = view.text
        hits: list[Rule] = []
        for i in sorted(self._candidates(view)):
            rule = rules[i]
            if rule.rule_id in done:
                continue
            if rule.required_words and not (
                rule.required_words <= view.words
                or (view.kind == "unspaced" and all(w in text for w in rule.required_words))
            ):
                continue
            if rule.required_subs and not all(sub in text for sub in rule.required_subs):
                continue
            if view.kind == "unspaced":
                found = _search(rule, text)  # merged words: anchors are not tokens here
            else:
                anchors = [*(rule.words & view.words), *(s for s in rule.substrings if s in text)]
                found = _search_near(rule, text, anchors)
            if found:
                hits.append(rule)
        return hits

    def score_views(self, views: Sequence[View]) -> InjectionResult:
        """Score precomputed views (see `normalize.build_views`)."""
        weights: dict[str, float] = {}
        categories: dict[str, float] = {}
        clf = 0.0
        for view in views:
            for rule in self._rule_hits(view, weights):
                weights[rule.rule_id] = max(weights.get(rule.rule_id, 0.0), rule.weight)
                categories[rule.category] = max(categories.get(rule.category, 0.0), rule.weight)
                if view.kind in DECODED_KINDS:
                    categories[ENCODED_CATEGORY] = max(categories.get(ENCODED_CATEGORY, 0.0), rule.weight)
            if self._model is not None:
                clf = max(clf, _sigmoid(self._model.max_logit(view.tokens)))
        miss = 1.0
        for w in weights.values():
            miss *= 1.0 - w
        rule_score = 1.0 - miss
        if clf >= self.threshold:
            categories[CLASSIFIER_CATEGORY] = clf
        score = max(rule_score, clf)
        cats = tuple(sorted(categories, key=lambda c: (-categories[c], c)))
        return InjectionResult(round(score, 4), cats, None, score >= self.threshold)

    def score_text(self, text: str) -> InjectionResult:
        """Score one text; `detected` is True when the score reaches the threshold."""
        return self.score_views(build_views(text))

    def scan_messages(
        self, messages: Sequence[Mapping[str, Any]], roles: frozenset[str] = DEFAULT_SCAN_ROLES
    ) -> InjectionResult:
        """Score each message whose role is in `roles`; return the highest, with its index."""
        best = InjectionResult(0.0)
        for i, msg in enumerate(messages):
            if msg.get("role") not in roles:
                continue
            text = content_text(msg.get("content"))
            if not text:
                continue
            res = self.score_text(text)
            if best.message_index is None or res.score > best.score:
                best = InjectionResult(res.score, res.categories, i, res.detected)
        return best


@functools.cache
def default_detector() -> InjectionDetector:
    """The shared detector with packaged rules, weights and the default threshold."""
    return InjectionDetector()
