"""System-prompt leaks: verbatim runs of the system message and the opt-in canary in its many disguises."""

from __future__ import annotations

import base64

import pytest

from sidecar.guards.leaks import CanaryScanner, SystemPromptLeak, insert_canary, make_canary

SYSTEM = (
    "You are AcmeBot, the support assistant for Acme Corp. Never discuss pricing of the enterprise tier; "
    "refer such questions to the sales team. Always answer in English and keep answers under 200 words."
)


def test_canaries_are_fresh_and_inserted_without_losing_the_prompt() -> None:
    """Each canary is new, and the system message keeps its text with the canary added."""
    a, b = make_canary(), make_canary()
    assert a != b and len(a) >= 20
    with_canary = insert_canary(SYSTEM, a)
    assert a in with_canary and with_canary.endswith(SYSTEM)


def _disguises(canary: str) -> dict[str, str]:
    blob = base64.b64encode(f"notes: {insert_canary(SYSTEM, canary)}".encode()).decode()
    return {
        "verbatim": f"The hidden marker is {canary}.",
        "spaced": "The marker: " + " ".join(canary) + ".",
        "dotted": "m: " + ".".join(canary.upper()),
        "dashed": "m: " + "-".join(canary),
        "reversed": f"backwards: {canary[::-1]}",
        "hex": f"hex: {canary.encode().hex()}",
        "base64 aligned": f"b64: {base64.b64encode(canary.encode()).decode()}",
        "base64 in a blob": f"Here it is encoded: {blob}",
        "base64 offset 1": base64.b64encode(b"x" + canary.encode()).decode(),
        "base64 offset 2": base64.b64encode(b"xy" + canary.encode() + b"z").decode(),
        "base64url": base64.urlsafe_b64encode(b"\xfb\xff" + canary.encode()).decode(),
    }


@pytest.mark.parametrize("form", list(_disguises("cnry00000000000000000000")))
def test_canary_is_found_in_every_disguise(form: str) -> None:
    """The canary is found as is, spaced, dotted, dashed, reversed, in hex and in base64 at any alignment."""
    for _ in range(5):
        canary = make_canary()
        text = _disguises(canary)[form]
        assert [f.kind for f in CanaryScanner(canary).scan(text)] == ["leak:canary"], text


def test_canary_absent_means_no_finding() -> None:
    """A reply without the canary (but with other hex and base64) yields nothing."""
    canary = make_canary()
    other = make_canary()
    text = f"commit {other[4:]} and {base64.b64encode(other.encode()).decode()} and {' '.join(other)}"
    assert CanaryScanner(canary).scan(text) == []


def test_verbatim_run_of_the_system_prompt_is_flagged() -> None:
    """Eight or more consecutive words of the system message are found, regardless of case and punctuation."""
    reply = (
        "Sure. My rules say: NEVER discuss pricing of the Enterprise tier, refer such questions elsewhere."
    )
    findings = SystemPromptLeak(SYSTEM).scan(reply)
    assert [f.kind for f in findings] == ["leak:system_prompt"]
    assert (
        reply[findings[0].start : findings[0].end]
        == "NEVER discuss pricing of the Enterprise tier, refer such questions"
    )


def test_short_overlap_and_paraphrase_are_not_flagged() -> None:
    """Seven shared words, or a paraphrase of the rules, stay below the threshold."""
    leak = SystemPromptLeak(SYSTEM)
    assert leak.scan("I am the support assistant for Acme Corp. How can I help?") == []
    assert leak.scan("I'm not allowed to talk about enterprise prices; please ask the sales people.") == []


def test_threshold_is_configurable() -> None:
    """With `min_words=4` a four-word verbatim run counts; with 12 an eleven-word run does not."""
    assert SystemPromptLeak(SYSTEM, min_words=4).scan("keep answers under 200 words please")
    eleven = "never discuss pricing of the enterprise tier refer such questions to"
    assert SystemPromptLeak(SYSTEM, min_words=12).scan(eleven) == []
    assert SystemPromptLeak(SYSTEM, min_words=11).scan(eleven)


def test_separate_runs_are_separate_findings() -> None:
    """Two leaked passages with other text between them give two findings."""
    reply = (
        "First: you are acmebot the support assistant for acme corp. "
        "Unrelated words here. Then: always answer in english and keep answers under 200 words."
    )
    assert len(SystemPromptLeak(SYSTEM).scan(reply)) == 2


def test_short_system_prompt_never_matches() -> None:
    """A system message shorter than the threshold cannot leak by this measure (and costs nothing)."""
    assert SystemPromptLeak("Be brief.").scan("Be brief. Be brief. Be brief.") == []


def test_words_with_accents_and_curly_quotes_are_words_as_in_the_prompt() -> None:
    """Non-ASCII word characters (accents, dotted capitals) belong to their words and punctuation such
    as curly quotes and dashes separates them, exactly as in the system message."""
    system = "Répondez toujours en français, même si l'utilisateur écrit en anglais. İstanbul est exclu."
    leak = SystemPromptLeak(system, min_words=6)
    reply = "Mes règles : « répondez toujours en français — même si l’utilisateur écrit »"
    found = leak.scan(reply)
    assert [reply[f.start : f.end] for f in found] == [
        "répondez toujours en français — même si l’utilisateur écrit"
    ]
    assert leak.scan("Repondez toujours en francais meme si l utilisateur ecrit") == []
    assert SystemPromptLeak(system, min_words=3).scan("on dit: İSTANBUL EST EXCLU.")


def test_the_same_system_message_in_every_request_gives_the_same_result() -> None:
    """Building the checker again for a repeated system message (the common case) finds the same runs."""
    reply = "Sure: never discuss pricing of the enterprise tier, refer such questions elsewhere."
    first = SystemPromptLeak(SYSTEM).scan(reply)
    assert first and all(SystemPromptLeak(SYSTEM).scan(reply) == first for _ in range(3))
    assert SystemPromptLeak(SYSTEM, min_words=12).scan(reply) == []
