"""``Answer`` (every FHIR JSON answer: ``fhir``'s, the hot routes') sends what Starlette's
``Response`` with the FHIR media type sends for the same body, headers and status: the
same two ASGI messages, headers byte for byte in the same order, also after headers are
set through its ``headers`` mapping (a 401's ``WWW-Authenticate``, a 503's
``Retry-After``)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import Response

from carelink.api.responses import Answer, fhir
from carelink.fhir import FHIR_JSON

NAMES = st.sampled_from(
    [
        "ETag",
        "Last-Modified",
        "X-Missing-Sources",
        "Preference-Applied",
        "Content-Type",
        "content-length",
    ]
)
VALUES = st.text(alphabet='abcXYZ019-"/ ,:', max_size=30)


def _sent(response: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def receive() -> dict[str, Any]:  # pragma: no cover - never read
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http"}, receive, send))
    return messages


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=64),
    headers=st.dictionaries(NAMES, VALUES, max_size=4),
    status=st.sampled_from([100, 200, 201, 204, 304, 401, 503]),
    later=st.dictionaries(st.sampled_from(["Retry-After", "ETag"]), VALUES, max_size=2),
    given_as=st.sampled_from(["none", "empty", "some"]),
)
def test_an_answer_sends_what_the_framework_response_sends(
    body: bytes, headers: dict[str, str], status: int, later: dict[str, str], given_as: str
) -> None:
    given_headers = None if given_as == "none" else {} if given_as == "empty" else headers
    ours = [Answer(body, given_headers, status), fhir(body, status, given_headers)]
    theirs = Response(body, status, given_headers, media_type=FHIR_JSON)
    for name, value in later.items():
        for response in (*ours, theirs):
            response.headers[name] = value
    for answer in ours:
        assert _sent(answer) == _sent(theirs)


def test_a_dict_is_sent_as_its_json() -> None:
    assert _sent(fhir({"resourceType": "Bundle"}))[1]["body"] == b'{"resourceType":"Bundle"}'
