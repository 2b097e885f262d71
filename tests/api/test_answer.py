"""``Answer`` (the hot routes' FHIR JSON) sends what ``fhir`` (a framework Response)
sends for the same body, headers and status: the same two ASGI messages, headers byte
for byte in the same order."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.api.responses import Answer, fhir

NAMES = st.sampled_from(["ETag", "Last-Modified", "X-Missing-Sources", "Preference-Applied"])
VALUES = st.text(alphabet='abcXYZ019-"/ ,:', max_size=30)


def _sent(response: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def receive() -> dict[str, Any]:  # pragma: no cover - never read
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http"}, receive, send))
    return messages


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=64),
    headers=st.dictionaries(NAMES, VALUES, max_size=4),
    status=st.sampled_from([200, 201, 503]),
)
def test_an_answer_sends_what_the_framework_response_sends(
    body: bytes, headers: dict[str, str], status: int
) -> None:
    assert _sent(Answer(body, dict(headers), status)) == _sent(fhir(body, status, dict(headers)))
