"""AU-1/AU-4: any string as an API key: `parse_key` never raises and accepts only well-formed keys
with a valid checksum; over HTTP every bad key gets the same 401 body."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.auth.keyformat import ALPHABET, KEY_REGEX, checksum, make_key, new_key_id, parse_key
from tests.conftest import SidecarFactory
from tests.fuzz.harness import LoopBridge, assert_answer, fuzz, in_thread

KEY = re.compile(KEY_REGEX)


@st.composite
def mutated_keys(draw: st.DrawFn) -> str:
    """A real key with one character changed, dropped, inserted, or its case flipped."""
    key = make_key(draw(st.text(ALPHABET, min_size=12, max_size=12)))
    at = draw(st.integers(min_value=0, max_value=len(key) - 1))
    how = draw(st.sampled_from(["replace", "drop", "insert", "swapcase"]))
    char = draw(st.characters())
    if how == "replace":
        if char == key[at]:
            char = "!"
        return key[:at] + char + key[at + 1:]
    if how == "drop":
        return key[:at] + key[at + 1:]
    if how == "insert":
        return key[:at] + char + key[at:]
    flipped = key[at].swapcase()
    return key[:at] + (flipped if flipped != key[at] else "#") + key[at + 1:]


key_like = st.one_of(st.text(max_size=120), st.from_regex(KEY_REGEX, fullmatch=True),
                     mutated_keys(), st.text(ALPHABET + "_", min_size=60, max_size=80))


@fuzz(250)
@given(key_like)
def test_parse_key_accepts_only_checksummed_keys(raw: str) -> None:
    """parse_key never raises; it returns a key only for the exact format with a valid checksum."""
    parsed = parse_key(raw)
    if parsed is not None:
        assert KEY.fullmatch(raw)
        body, _, check = raw.rpartition("_")
        assert checksum(body) == check
        assert raw == f"sks_{parsed.key_id}_{parsed.secret}_{check}"


@fuzz(200)
@given(mutated_keys())
def test_any_single_edit_of_a_key_is_refused(raw: str) -> None:
    """One changed, missing, extra or re-cased character makes a real key unparseable."""
    assert parse_key(raw) is None


@fuzz(100)
@given(st.text(ALPHABET, min_size=12, max_size=12))
def test_real_keys_parse_to_their_id(key_id: str) -> None:
    """Every key the sidecar mints parses back to its own key id."""
    parsed = parse_key(make_key(key_id))
    assert parsed is not None and parsed.key_id == key_id


# Header values a client can send: visible characters, spaces and tabs, any Unicode letter.
header_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"]),
                      max_size=120)
header_values = st.one_of(
    header_text,
    header_text.map(lambda v: "Bearer " + v),
    mutated_keys().map(lambda k: "Bearer " + k),
    st.from_regex(KEY_REGEX, fullmatch=True).map(lambda k: "Bearer " + k),
    st.builds(lambda scheme, v: scheme + " " + v, st.sampled_from(["bearer", "BEARER", "Basic", "Token"]),
              header_text),
).map(lambda v: "".join(c if c == "\t" or " " <= c != "\x7f" else "?" for c in v))


@pytest.fixture
async def sidecar_url(make_sidecar: SidecarFactory) -> str:
    server = await make_sidecar()
    return str(server.make_url("/v1/chat/completions"))


def _without_request_id(body: bytes) -> dict[str, object]:
    error = json.loads(body)["error"]
    return {k: v for k, v in error.items() if k != "request_id"}


async def test_every_bad_authorization_gets_one_401(sidecar_url: str, api_key: str) -> None:
    """Any Authorization value that is not a live key gets 401: `invalid_api_key` with one
    identical body for malformed, unknown and wrong-secret keys, `missing_api_key` for no key."""
    loop = asyncio.get_running_loop()
    bridge = LoopBridge(loop)
    real = parse_key(api_key)
    assert real is not None
    # The tenant's real key id with another secret (and a valid checksum): the wrong-secret case.
    wrong_body = f"sks_{real.key_id}_{'A' * 43}"
    wrong_secret = f"{wrong_body}_{checksum(wrong_body)}"
    unknown = make_key(new_key_id())
    body = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}'
    bodies: dict[str, set[str]] = {"invalid_api_key": set(), "missing_api_key": set()}

    async def send(value: str) -> tuple[int, bytes, str]:
        async with aiohttp.ClientSession() as client, client.post(
            sidecar_url, data=body,
            headers={"Authorization": value, "Content-Type": "application/json"},
        ) as response:
            return response.status, await response.read(), response.content_type

    @fuzz(250)
    @given(header_values)
    def prop(value: str) -> None:
        if value.strip().removeprefix("Bearer ").strip() == api_key:
            return
        status, answer, content_type = bridge.run(send(value))
        assert status == 401, (value, status, answer[:200])
        assert_answer(status, answer, content_type)
        error = _without_request_id(answer)
        bodies[str(error["code"])].add(json.dumps(error, sort_keys=True))
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            assert error["code"] == "invalid_api_key", (value, answer)

    await in_thread(prop)
    for value in ("Bearer " + unknown, "Bearer " + wrong_secret, "Bearer " + api_key[:-1] + "x"):
        status, answer, _ = await send(value)
        assert status == 401
        bodies["invalid_api_key"].add(json.dumps(_without_request_id(answer), sort_keys=True))
    assert len(bodies["invalid_api_key"]) == 1, bodies
    assert len(bodies["missing_api_key"]) <= 1, bodies
