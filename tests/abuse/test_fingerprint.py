"""The request fingerprint: what counts as the same prompt, and which prompts share a bucket."""

from __future__ import annotations

import collections
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.guards.fingerprint import BANDS, Features, fingerprint, normalize_prompt
from tests.abuse.workloads import COUNTRIES, LANGS, WORDS, benign_prompts

HEX16 = re.compile(r"[0-9a-f]{16}")


@pytest.mark.parametrize(("a", "b"), [
    ("What is the capital of France?", "what is the capital of france?"),
    ("What is the capital of France?", "  What is\tthe capital\n of France?  "),
    ("Ｗｈａｔ is the capital of France?", "What is the capital of France?"),  # full-width
    ("STRASSE", "straße"),  # casefold
])
def test_same_prompt_written_differently_hashes_the_same(a: str, b: str) -> None:
    """Case, spacing and compatibility forms do not make a retried prompt a new one."""
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize(("a", "b"), [
    ("What is the capital of France?", "What is the capital of Spain?"),
    ("What is 12 times 13?", "What is 12 times 14?"),
    ("hello", "hello!"),
])
def test_different_prompts_hash_differently(a: str, b: str) -> None:
    """Any change of words, digits or punctuation makes a distinct prompt."""
    assert fingerprint(a).prompt_hash != fingerprint(b).prompt_hash


def test_empty_text_has_no_hash_and_no_buckets() -> None:
    """A request without text (or only spaces) counts no prompt but keeps its input count."""
    assert fingerprint("  \n\t ", inputs=3) == Features("", (), 3)


@pytest.mark.parametrize("template", [
    [f"Translate the word {w} into {lang}" for w in WORDS for lang in LANGS],
    [f"What is the capital of {c}?" for c in COUNTRIES],
    [f"What is {a} multiplied by {b}?" for a in range(2, 30) for b in range(2, 30)],
    [f"Summarize the following review in one word: the {w} was {w} and {lang}."
     for w in WORDS for lang in LANGS],
])
def test_template_variants_pile_up_in_one_bucket(template: list[str]) -> None:
    """Prompts of one template with small slots share a bucket far more than natural prompts do."""
    counts = collections.Counter(b for text in template for b in fingerprint(text).buckets)
    assert counts.most_common(1)[0][1] >= 0.3 * len(template)


def test_natural_prompts_rarely_share_a_bucket() -> None:
    """Across ~2,500 real benign prompts as one stream, no bucket holds more than 8 of them."""
    prompts = {normalize_prompt(p): p for p in benign_prompts()}.values()
    counts = collections.Counter(b for text in prompts for b in fingerprint(text).buckets)
    assert counts.most_common(1)[0][1] <= 8


def test_long_input_is_bounded() -> None:
    """A megabyte of text gives one hash and at most one bucket per band."""
    features = fingerprint("lorem ipsum dolor sit amet " * 40_000)
    assert HEX16.fullmatch(features.prompt_hash)
    assert 0 < len(features.buckets) <= BANDS


def test_only_head_and_tail_decide_the_buckets() -> None:
    """Long prompts differing only in the middle share their buckets (templates show at the ends)."""
    head, tail = "Please review this contract clause. " * 20, " Answer yes or no." * 10
    a = fingerprint(head + "the seller pays " * 200 + tail)
    b = fingerprint(head + "the buyer pays " * 200 + tail)
    assert a.buckets == b.buckets
    assert a.prompt_hash != b.prompt_hash


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000), st.integers(min_value=0, max_value=10_000))
def test_fingerprint_is_deterministic_and_well_formed(text: str, inputs: int) -> None:
    """Any text gives the same features twice: a 16-hex hash (or none) and one bucket per band."""
    a, b = fingerprint(text, inputs), fingerprint(text, inputs)
    assert a == b
    assert a.inputs == inputs
    if a.prompt_hash:
        assert HEX16.fullmatch(a.prompt_hash)
    else:
        assert a.buckets == ()
    bands = [bucket[0] for bucket in a.buckets]
    assert len(bands) == len(set(bands)) <= BANDS
    assert all(re.fullmatch(r"[0-9][0-9a-f]{8}", bucket) for bucket in a.buckets)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(categories=["L", "N", "P", "Z", "S", "M", "C"]), max_size=500))
def test_non_ascii_text_works(text: str) -> None:
    """Text in any script, with marks, symbols or controls, is fingerprinted without error."""
    features = fingerprint("Übersetze: " + text)
    assert HEX16.fullmatch(features.prompt_hash)
