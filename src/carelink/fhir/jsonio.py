"""JSON in and out with orjson: the request path works on dicts and bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from carelink.errors import ConfigError

FHIR_JSON = "application/fhir+json"
FHIR_JSON_UTF8 = "application/fhir+json; charset=utf-8"


def dumps(value: Any) -> bytes:
    """Serialise to compact UTF-8 JSON bytes."""
    return orjson.dumps(value)


def dumps_canonical(value: Any) -> bytes:
    """Serialise with sorted keys: equal content gives equal bytes (for hashing)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes or text."""
    return orjson.loads(data)


JSONDecodeError = orjson.JSONDecodeError


#: the end of a Bundle entry in each common search mode
_MODES = {m: b',"search":{"mode":"' + m.encode() + b'"}}' for m in ("match", "include")}


class Encodings:
    """The JSON of a fixed set of shared values that are never changed, each made once.

    A federated record's resources are shared between requests (``federation.memo``)
    and serialised for the ETag, the page and the stored result; this makes each one's
    bytes once. Values are known by identity (the set holds them, so an id stays
    theirs); any other value is serialised afresh every time. ``fragment`` hands the
    bytes to orjson to embed as they are, so ``dumps([enc.fragment(r)]) == dumps([r])``.
    ``digest`` fingerprints a list of values (what one caller is shown of the record),
    made once for the same values.
    """

    #: lists whose digest is kept (callers see different parts of a record)
    DIGESTS = 8

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._values = {id(v): v for v in values}
        self._bytes: dict[int, bytes] = {}
        self._digests: dict[tuple[int, ...], tuple[tuple[Any, ...], bytes]] = {}
        self._entries: dict[int, tuple[str, str, orjson.Fragment]] = {}

    def of(self, value: Any) -> bytes:
        """``dumps(value)``, made once for a value of the set."""
        key = id(value)
        done = self._bytes.get(key)
        if done is not None:
            return done
        out = orjson.dumps(value)
        if self._values.get(key) is value:
            self._bytes[key] = out
        return out

    def fragment(self, value: Any) -> orjson.Fragment:
        """``value``'s JSON, for orjson to embed unchanged."""
        return orjson.Fragment(self.of(value))

    def entry(self, base: str, resource: Any, mode: str) -> orjson.Fragment:
        """A Bundle entry of ``resource``: ``fhir.bundle.entry``'s JSON (``fullUrl`` on
        ``base``, the resource, its search mode), made once for a member on the same base
        and mode (kept beside the resource's own JSON: a record's JSON twice, so a page
        copies each resource once, into the answer)."""
        key = id(resource)
        member = self._values.get(key) is resource
        done = self._entries.get(key) if member else None
        if done is not None and done[0] == base and done[1] == mode:
            return done[2]
        url = f"{base}/{resource['resourceType']}/{resource['id']}"
        tail = _MODES.get(mode) or b',"search":{"mode":' + orjson.dumps(mode) + b"}}"
        made = orjson.Fragment(
            b"".join((b'{"fullUrl":', orjson.dumps(url), b',"resource":', self.of(resource), tail))
        )
        if member:
            self._entries[key] = (base, mode, made)
        return made

    def digest(self, values: Sequence[Any]) -> bytes:
        """``list_digest(values)``, made once for the very same values in the same order
        (they are kept with it, so their ids stay theirs)."""
        key = tuple(map(id, values))
        done = self._digests.get(key)
        if done is not None:
            return done[1]
        out = hashlib.blake2b(orjson.dumps([self.fragment(v) for v in values])).digest()
        if len(self._digests) >= self.DIGESTS:
            self._digests.pop(next(iter(self._digests)))
        self._digests[key] = (tuple(values), out)
        return out


def list_digest(values: Sequence[Any]) -> bytes:
    """A fingerprint of a list's JSON (``Encodings.digest`` gives the same)."""
    return hashlib.blake2b(orjson.dumps(list(values))).digest()


def read_config(path: Path, what: str) -> tuple[Any, str]:
    """A JSON configuration file, parsed, and its text; ``ConfigError`` naming the file
    (and the line) when it cannot be read or is not JSON. ``what`` names it in messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"{path}: {what} cannot be read ({why})") from exc
    try:
        return orjson.loads(text), text
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: {what} is not JSON ({exc.msg})") from exc
