"""JSON in and out with orjson: the request path works on dicts and bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from carelink.errors import ConfigError
from carelink.recent import same_objects

T = TypeVar("T")

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
    made once for the same values. Members may be added (``add``) and taken away
    (``discard``); what is kept of a value is used only while it is a member.
    """

    #: lists whose digest is kept (callers see different parts of a record)
    DIGESTS = 8

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._values = {id(v): v for v in values}
        self._bytes: dict[int, bytes] = {}
        self._lists: dict[tuple[int, ...], tuple[tuple[Any, ...], dict[Hashable, Any]]] = {}
        #: the list ``of_list`` was last asked about and its entry: a page asks about the
        #: same list several times (its digest, its newest update, its entries)
        self._last: tuple[Sequence[Any], tuple[tuple[Any, ...], dict[Hashable, Any]]] | None = None
        self._entries: dict[int, tuple[str, str, bytes]] = {}
        self._without: dict[int, tuple[str, orjson.Fragment, bytes | None]] = {}

    def add(
        self,
        value: Any,
        json: bytes | None = None,
        without: tuple[str, bytes] | None = None,
        without_digest: bytes | None = None,
    ) -> None:
        """Make ``value`` a member (kept alive by the set, so its id stays its own); with
        ``json``, its JSON made already (``dumps(value)``'s bytes), and with ``without``,
        a key's name and the JSON of ``value`` less that key (``without``'s), and
        ``without_digest``, that JSON's ``json_digest`` made already."""
        key = id(value)
        self._values[key] = value
        if json is not None:
            self._bytes[key] = json
        if without is not None:
            self._without[key] = (without[0], orjson.Fragment(without[1]), without_digest)

    def discard(self, value: Any) -> None:
        """``value`` no longer a member: what was made of it goes with it."""
        key = id(value)
        if self._values.get(key) is value:
            del self._values[key]
            self._bytes.pop(key, None)
            self._entries.pop(key, None)
            self._without.pop(key, None)

    def without(self, value: dict[str, Any], name: str) -> orjson.Fragment:
        """The JSON of ``value`` less its member ``name``, made once for a member (one
        ``name`` per member): what a fingerprint that must not move with that member
        hashes (a Provenance's ``recorded``)."""
        key = id(value)
        member = self._values.get(key) is value
        done = self._without.get(key) if member else None
        if done is not None and done[0] == name:
            return done[1]
        json = orjson.dumps({k: v for k, v in value.items() if k != name})
        made = orjson.Fragment(json)
        if member:
            self._without[key] = (name, made, None)
        return made

    def without_digest(self, value: dict[str, Any], name: str) -> bytes:
        """``json_digest`` of ``without(value, name)``'s JSON, made once for a member (or
        handed in by ``add``): a Provenance's fingerprint less ``recorded``, hashed once
        however many instants its copies are recorded at."""
        key = id(value)
        member = self._values.get(key) is value
        done = self._without.get(key) if member else None
        if done is not None and done[0] == name and done[2] is not None:
            return done[2]
        json = orjson.dumps({k: v for k, v in value.items() if k != name})
        made = json_digest(json)
        if member:
            self._without[key] = (name, orjson.Fragment(json), made)
        return made

    def of(self, value: Any) -> bytes:
        """``dumps(value)``, made once for a value of the set."""
        key = id(value)
        member = self._values.get(key) is value
        done = self._bytes.get(key) if member else None
        if done is not None:
            return done
        out = orjson.dumps(value)
        if member:
            self._bytes[key] = out
        return out

    def fragment(self, value: Any) -> orjson.Fragment:
        """``value``'s JSON, for orjson to embed unchanged."""
        return orjson.Fragment(self.of(value))

    def array(self, values: Sequence[Any]) -> orjson.Fragment:
        """The JSON array of ``values`` as one fragment (``dumps(enc.array(vs)) ==
        dumps(list(vs))``), each value's JSON its ``of``, the whole made once for the very
        same values in the same order (``of_list``): what a kept result stores of a record
        that every request of a caller shows alike."""
        return self.of_list(values, "array", _array)

    def entry(self, base: str, resource: Any, mode: str) -> orjson.Fragment:
        """A Bundle entry of ``resource``: ``fhir.bundle.entry``'s JSON (``fullUrl`` on
        ``base``, the resource, its search mode), made once for a member on the same base
        and mode (kept beside the resource's own JSON: a record's JSON twice, so a page
        copies each resource once, into the answer)."""
        return orjson.Fragment(self._entry(base, resource, mode))

    def entries(self, base: str, resources: Sequence[Any], mode: str) -> orjson.Fragment:
        """The Bundle entries of ``resources`` (at least one) as one fragment: each
        ``entry``'s JSON, comma separated, so that in a list it stands for them all
        (``dumps([enc.entries(b, rs, m)]) == dumps([enc.entry(b, r, m) for r in rs])``);
        made once for the very same resources on the same base and mode (``of_list``)."""

        def joined(enc: Encodings, values: Sequence[Any]) -> orjson.Fragment:
            return orjson.Fragment(b",".join([enc._entry(base, r, mode) for r in values]))

        return self.of_list(resources, ("entries", base, mode), joined)

    def _entry(self, base: str, resource: Any, mode: str) -> bytes:
        key = id(resource)
        member = self._values.get(key) is resource
        done = self._entries.get(key) if member else None
        if done is not None and done[0] == base and done[1] == mode:
            return done[2]
        url = f"{base}/{resource['resourceType']}/{resource['id']}"
        tail = _MODES.get(mode) or b',"search":{"mode":' + orjson.dumps(mode) + b"}}"
        made = b"".join(
            (b'{"fullUrl":', orjson.dumps(url), b',"resource":', self.of(resource), tail)
        )
        if member:
            self._entries[key] = (base, mode, made)
        return made

    def digest(self, values: Sequence[Any]) -> bytes:
        """``list_digest(values)``, made once for the very same values in the same order
        (they are kept with it, so their ids stay theirs)."""
        return self.of_list(values, "digest", _member_digest)

    def of_list(
        self, values: Sequence[Any], name: Hashable, make: Callable[[Encodings, Sequence[Any]], T]
    ) -> T:
        """``make(self, values)``, made once per ``name`` for the very same values in the
        same order (the last ``DIGESTS`` lists asked about are kept, with their values):
        what one caller is shown of the record, fingerprinted or summed up once."""
        last = self._last
        if last is not None and last[0] is values and same_objects(values, last[1][0]):
            # the same list, still holding the very same values: no key of their ids
            done = last[1]
        else:
            key = tuple(map(id, values))
            found = self._lists.get(key)
            if found is None:
                if len(self._lists) >= self.DIGESTS:
                    self._lists.pop(next(iter(self._lists)))
                found = self._lists[key] = (tuple(values), {})
            done = found
            self._last = (values, done)
        made = done[1]
        if name in made:
            return cast(T, made[name])
        out = made[name] = make(self, values)
        return out


def _array(enc: Encodings, values: Sequence[Any]) -> orjson.Fragment:
    return orjson.Fragment(b"".join((b"[", b",".join([enc.of(v) for v in values]), b"]")))


def _member_digest(enc: Encodings, values: Sequence[Any]) -> bytes:
    return hashlib.blake2b(orjson.dumps([enc.fragment(v) for v in values])).digest()


def json_digest(json: bytes) -> bytes:
    """A fingerprint of one value's JSON (``Encodings.without_digest``'s)."""
    return hashlib.blake2b(json, digest_size=16).digest()


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
