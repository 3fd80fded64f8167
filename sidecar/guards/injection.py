"""Prompt-injection and jailbreak detection: rules, a context stage and a fast learned stage.

`judge_request(slots)` judges a whole request: the trusted slots (system, developer) are
context (`injection_context`: guarded secrets make asking for them an attack), untrusted slots
are judged as user turns, data slots (tool results, documents) as data, where text that
addresses the assistant is the signal (`injection_context.data_address_score`; the learned
stage's data calibration). `score_text(text)` judges a bare text as a user turn (the `sidecar
scan` CLI). A hidden payload (Unicode tags) that carries words is a detection in itself: it is
refused, not stripped and forwarded, so the pipeline must hand this guard the text as received.

Layers over the detection views of `sidecar.guards.normalize`:

* rules (data/injection_rules.tsv): categorized regexes in eleven languages. A rule's regex
  only runs when one of its trigger words is a token of the view (or, for scripts without
  spaces, a substring of it), so plain text pays a set intersection, not a regex scan. A rule
  may also require words or substrings (all of them) before its regex runs. All patterns use
  bounded repetitions over disjoint classes, so matching stays linear.
* learned (data/injection_ngram.bin): hashed character n-grams under a logistic regression
  with a user-turn and a data calibration, see `sidecar.guards.injection_ngram`; one hashing
  pass per slot, the same for every language.

The score is the max of the layers in [0, 1]; rule hits combine as noisy-OR.
Pure: the data files are read once, on first use; no I/O or logging per request.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sidecar.guards.injection_context import (
    NOTHING,
    Guarded,
    context_score,
    data_address_score,
    read_context,
)
from sidecar.guards.injection_ngram import NgramModel, load_ngram_model
from sidecar.guards.normalize import View, build_views
from sidecar.model import DATA, TRUSTED, TextSlot

DEFAULT_THRESHOLD = 0.5
DEFAULT_SCAN_ROLES = frozenset({"user", "tool", "function"})
DECODED_KINDS = frozenset({"base64", "hex", "url", "html", "rot13", "unicode_tags"})
CLASSIFIER_CATEGORY = "classifier"
DATA_CATEGORY = "data_instruction"
ENCODED_CATEGORY = "encoded_payload"
HIDDEN_CATEGORY = "hidden_payload"
HIDDEN_SCORE = 0.95  # words smuggled in invisible characters: refused whatever they say

REACH = 400  # no rule match extends further than this from one of its trigger words
MAX_WINDOWS = 24  # trigger occurrences per rule searched in windows before a full scan
_GAP = r"[\W_]{0,4}"
# Filler words never cross a sentence end, so "ignore X. The new instructions" is no match.
# Filler words are possessive (\w{1,20}+): a word is never split to retry the next part of the
# pattern inside it, which keeps near-miss text from costing hundreds of steps per position.
_FILLER = r"(?:[^\w.!?\n]{1,4}\w{1,20}+){0,4}[^\w.!?\n]{0,4}"


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """Injection score in [0, 1], the categories that drove it and which message or slot.

    `message_index` indexes the messages given to `scan_messages`; `slot_index` and `path` name
    the slot of `judge_request` that scored highest.
    """

    score: float
    categories: tuple[str, ...] = ()
    message_index: int | None = None
    detected: bool = False
    slot_index: int | None = None
    path: str | None = None


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


@functools.cache
def load_rules() -> tuple[Rule, ...]:
    """Load the packaged rule table once."""
    text = resources.files("sidecar.guards").joinpath("data/injection_rules.tsv")
    return parse_rules(text.read_text(encoding="utf-8").splitlines())


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
        model: NgramModel | None = None,
        use_rules: bool = True,
        use_classifier: bool = True,
        use_context: bool = True,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be within [0, 1]")
        self.threshold = threshold
        self._rules = tuple(rules if rules is not None else load_rules()) if use_rules else ()
        self._model = (model if model is not None else load_ngram_model()) if use_classifier else None
        self._use_context = use_context
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

    def _rules_score(self, views: Sequence[View], categories: dict[str, float]) -> float:
        """Noisy-OR of the matching rules' weights; fills `categories`."""
        weights: dict[str, float] = {}
        for view in views:
            for rule in self._rule_hits(view, weights):
                weights[rule.rule_id] = max(weights.get(rule.rule_id, 0.0), rule.weight)
                categories[rule.category] = max(categories.get(rule.category, 0.0), rule.weight)
                if view.kind in DECODED_KINDS:
                    categories[ENCODED_CATEGORY] = max(categories.get(ENCODED_CATEGORY, 0.0), rule.weight)
        miss = 1.0
        for w in weights.values():
            miss *= 1.0 - w
        return 1.0 - miss

    def layer_scores(
        self, text: str, as_data: bool = False, ctx: Guarded = NOTHING
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Each layer's score for one slot ({rules, learned, context, hidden}) and categories."""
        views = build_views(text)
        categories: dict[str, float] = {}
        layers = {"rules": self._rules_score(views, categories)}
        if self._model is not None:
            head = self._model.data if as_data else self._model.direct
            texts = [text] + [v.text for v in views if v.kind in DECODED_KINDS]
            learned = max(head.probability(t) for t in texts)
            if learned >= self.threshold:
                categories[DATA_CATEGORY if as_data else CLASSIFIER_CATEGORY] = learned
            layers["learned"] = learned
        if self._use_context:
            addressed = data_address_score(text, pasted=not as_data)
            if addressed:
                categories[DATA_CATEGORY] = max(categories.get(DATA_CATEGORY, 0.0), addressed)
                layers["context"] = addressed
        if self._use_context and not as_data and ctx.has_system:
            c_score, c_cat = context_score(text, ctx)
            if c_score >= self.threshold:
                categories[c_cat] = max(categories.get(c_cat, 0.0), c_score)
            layers["context"] = max(layers.get("context", 0.0), c_score)
        if any(v.kind == "unicode_tags" and len(v.tokens) >= 2 for v in views):
            categories[HIDDEN_CATEGORY] = HIDDEN_SCORE
            layers["hidden"] = HIDDEN_SCORE
        return layers, categories

    def _judge(
        self, text: str, as_data: bool = False, ctx: Guarded = NOTHING
    ) -> tuple[float, dict[str, float]]:
        """Score one slot's text: the max of rules, learned stage, context and hidden payloads."""
        layers, categories = self.layer_scores(text, as_data, ctx)
        return max(layers.values()), categories

    def _result(self, score: float, categories: Mapping[str, float]) -> InjectionResult:
        cats = tuple(sorted(categories, key=lambda c: (-categories[c], c)))
        return InjectionResult(round(score, 4), cats, None, score >= self.threshold)

    def score_views(self, views: Sequence[View]) -> InjectionResult:
        """Rules alone over precomputed views (see `normalize.build_views`)."""
        categories: dict[str, float] = {}
        return self._result(self._rules_score(views, categories), categories)

    def score_text(self, text: str) -> InjectionResult:
        """Score one bare text as a user turn; `detected` when the score reaches the threshold."""
        return self._result(*self._judge(text))

    def context_of(self, trusted_texts: Iterable[str]) -> Guarded:
        """What a request's trusted text guards (NOTHING when the context stage is off)."""
        return read_context(trusted_texts) if self._use_context else NOTHING

    def judge_text(self, text: str, as_data: bool = False, ctx: Guarded = NOTHING) -> InjectionResult:
        """One slot's text, as a user turn or as data, under a request's context."""
        return self._result(*self._judge(text, as_data=as_data, ctx=ctx))

    def judge_request(self, slots: Sequence[TextSlot]) -> InjectionResult:
        """Judge a whole request: trusted slots are context, data slots are judged as data.

        Returns the highest-scoring slot's result with its index and path (a result with no
        slot when nothing but trusted text is present).
        """
        ctx = read_context(s.text for s in slots if s.trust == TRUSTED) if self._use_context else NOTHING
        best = InjectionResult(0.0)
        for i, slot in enumerate(slots):
            if slot.trust == TRUSTED or not slot.text:
                continue
            score, cats = self._judge(slot.text, as_data=slot.trust == DATA, ctx=ctx)
            if best.slot_index is None or score > best.score:
                res = self._result(score, cats)
                best = InjectionResult(res.score, res.categories, None, res.detected, i, slot.path)
        return best

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
