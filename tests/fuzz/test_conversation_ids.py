"""TI-2: any X-Conversation-Id / X-Conversation-Replay value: only [A-Za-z0-9._-]{1,128} and
true/false pass; everything else is InvalidRequest (a 400), never another exception."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import InvalidRequest
from sidecar.proxy.conversations_api import ID_HEADER, REPLAY_HEADER, conversation_request
from tests.fuzz.harness import fuzz

VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ID_CHARS = "ABCXYZabcxyz0189._-"
ids = st.one_of(
    st.text(max_size=140),
    st.text(ID_CHARS, max_size=140),
    st.text(ID_CHARS + "{}:*\n\r\t /\\%\u0130\u212a\uff10\u0660\x00", max_size=140),
    st.sampled_from(["a:b", "{t:other}", "x*", "..", "\u212a", "a\n", "a" * 128, "a" * 129]),
)
replays = st.one_of(st.none(), st.sampled_from(["true", "false", " TRUE ", "False", "1", "yes", ""]),
                    st.text(max_size=10))
routes = st.sampled_from(["chat", "completions", "embeddings", "models"])


@fuzz(300)
@given(st.one_of(st.none(), ids), replays, routes)
def test_conversation_headers_pass_only_when_well_formed(
    conversation_id: str | None, replay: str | None, route: str,
) -> None:
    """A conversation id outside [A-Za-z0-9._-]{1,128} (ASCII only), a replay value other than
    true/false, or a route other than chat is refused with InvalidRequest and nothing else."""
    headers = {k: v for k, v in ((ID_HEADER, conversation_id), (REPLAY_HEADER, replay)) if v is not None}
    # An empty replay header counts as absent (false), as the code documents with `or "false"`.
    replay_ok = replay is None or replay.strip().lower() in ("true", "false", "")
    try:
        result = conversation_request(headers, route)
    except InvalidRequest:
        assert not (conversation_id is None and replay is None)
        assert (conversation_id is None or not VALID_ID.fullmatch(conversation_id)
                or route != "chat" or not replay_ok)
        return
    if conversation_id is None:
        assert result is None and replay is None
        return
    assert result is not None and VALID_ID.fullmatch(conversation_id) and route == "chat" and replay_ok
    assert result.conversation_id == conversation_id
    assert result.replay == (replay is not None and replay.strip().lower() == "true")
