"""Each shared resource serialised once: the same bytes wherever they are embedded."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.fhir.bundle import searchset
from carelink.fhir.jsonio import Encodings, dumps, json_digest, list_digest

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
RESOURCES = st.lists(
    st.builds(
        lambda rtype, rid, rest: {**rest, "resourceType": rtype, "id": rid},
        st.sampled_from(["Condition", "Observation", "Patient"]),
        st.text("abc123-.", min_size=1, max_size=6),
        st.dictionaries(st.sampled_from(["code", "status", "note", "meta"]), VALUES, max_size=3),
    ),
    max_size=6,
)


@settings(deadline=None)  # a shared, loaded machine: no per-example time limit
@given(resources=RESOURCES)
def test_a_bundle_with_encoded_resources_is_the_bundle_byte_for_byte(resources):
    enc = Encodings(resources)
    links = {"self": "http://gw/fhir/x"}
    plain = dumps(searchset("http://gw/fhir", resources, total=len(resources), links=links))
    encoded = searchset(
        "http://gw/fhir", resources, total=len(resources), links=links, encode=enc.fragment
    )
    assert dumps(encoded) == plain
    assert dumps(encoded) == plain  # and again, from the bytes made the first time


@settings(deadline=None)
@given(
    resources=RESOURCES,
    bases=st.lists(st.sampled_from(["http://gw/fhir", "https://other/r4"]), min_size=1),
    split=st.integers(0, 6),
)
def test_a_bundle_of_made_entries_is_the_bundle_byte_for_byte(resources, bases, split):
    """Entries made once per member (``Encodings.entry``), and the matches' entries made
    at once (``Encodings.entries``), asked again on another base or with members as
    matches or as includes, and strangers: the Bundle's very bytes. Fails when the
    entries made at once are another base's or mode's."""
    enc = Encodings(resources[: split + 1])
    links = {"self": "http://gw/fhir/x"}
    for n, base in enumerate(bases):
        matches, includes = (resources[:split], resources[split:])
        if n // 2 % 2:  # two bases in a row in each mode
            matches, includes = includes, matches
        plain = searchset(base, matches, total=len(matches), links=links, includes=includes)
        made = searchset(
            base, matches, total=len(matches), links=links, includes=includes, entry_of=enc.entry
        )
        assert dumps(made) == dumps(plain)
        for _ in range(2):  # every match's entry at once, made once for the same list
            joined = searchset(
                base,
                list(matches),
                total=len(matches),
                links=links,
                includes=includes,
                entry_of=enc.entry,
                entries_of=enc.entries,
            )
            assert dumps(joined) == dumps(plain)


def test_a_member_is_serialised_once_and_anything_else_every_time():
    member = {"resourceType": "Flag", "id": "f1", "status": "active"}
    stranger = {"resourceType": "Flag", "id": "f2", "status": "active"}
    enc = Encodings([member])
    assert enc.of(member) == orjson.dumps(member)
    assert enc.of(stranger) == orjson.dumps(stranger)
    # members are never changed (the contract); the bytes made first are the ones kept
    member["status"] = "inactive"
    stranger["status"] = "inactive"
    assert b"inactive" not in enc.of(member)
    assert b"inactive" in enc.of(stranger)
    # an equal value that is not the member is not taken for it
    assert b"inactive" in enc.of({**member})


@settings(deadline=None)
@given(resources=RESOURCES, picks=st.lists(st.lists(st.integers(0, 7), max_size=5), max_size=12))
def test_a_list_digest_is_the_digest_of_its_json_however_often_asked(resources, picks):
    """Members, strangers, the same list again, other orders: always the JSON's digest."""
    enc = Encodings(resources)
    for pick in picks:
        shown = [resources[i] if i < len(resources) else {"id": str(i)} for i in pick]
        assert enc.digest(shown) == list_digest(shown)


def test_a_digest_is_never_that_of_a_list_gone_whose_objects_ids_are_reused():
    """Values made for one request and freed leave their ids free: a new value at the same
    address is another list (the digest keeps what it was made from alive)."""
    enc = Encodings()
    for n in range(200):
        shown = [{"resourceType": "Flag", "id": str(n)}]
        assert enc.digest(shown) == list_digest(shown)
        del shown


def test_a_value_added_is_serialised_once_and_once_discarded_afresh_every_time():
    """``add`` makes a value a member (its JSON, entry and JSON less a member made once);
    after ``discard`` nothing kept of it is served any more, so a value changed or a new
    one at its address is serialised as it is. Fails when ``discard`` leaves the kept
    bytes in use."""
    prov = {"resourceType": "Provenance", "id": "p1", "recorded": "t1", "target": []}
    enc = Encodings()
    enc.add(prov)
    first = enc.of(prov)
    entry = bytes(orjson.dumps([enc.entry("http://gw", prov, "include")]))
    stable = bytes(orjson.dumps([enc.without(prov, "recorded")]))
    prov["id"] = "p2"  # not done to members; here it shows which bytes are served
    assert enc.of(prov) == first
    assert bytes(orjson.dumps([enc.entry("http://gw", prov, "include")])) == entry
    assert bytes(orjson.dumps([enc.without(prov, "recorded")])) == stable
    enc.discard(prov)
    assert enc.of(prov) == orjson.dumps(prov)
    assert b'"p2"' in orjson.dumps([enc.entry("http://gw", prov, "include")])
    assert orjson.dumps([enc.without(prov, "recorded")]) == orjson.dumps(
        [{"resourceType": "Provenance", "id": "p2", "target": []}]
    )
    for n in range(200):  # new values, often at a freed address
        other = {"resourceType": "Provenance", "id": f"n{n}", "recorded": "t"}
        assert enc.of(other) == orjson.dumps(other)
        del other


@settings(deadline=None)
@given(resources=RESOURCES, picks=st.lists(st.lists(st.integers(0, 7), max_size=5), max_size=12))
def test_what_is_made_of_a_list_is_made_once_for_the_very_same_list(resources, picks):
    """``of_list`` gives what ``make`` gives for each list asked about, made once for the
    very same objects in the same order, anew for any other list (members or not)."""
    enc = Encodings(resources)
    made: list[tuple[int, ...]] = []

    def count(_: Encodings, values: object) -> int:
        made.append(tuple(map(id, values)))  # type: ignore[call-overload]
        return len(made)

    for pick in picks:
        shown = [resources[i] if i < len(resources) else {"id": str(i)} for i in pick]
        got = enc.of_list(shown, "n", count)
        again = enc.of_list(list(shown), "n", count)
        assert again == got
        assert made[got - 1] == tuple(map(id, shown))


@settings(deadline=None)
@given(
    resources=RESOURCES, changes=st.lists(st.tuples(st.integers(0, 7), st.booleans()), max_size=8)
)
def test_the_same_list_asked_again_after_it_changed_is_made_for_what_it_holds(resources, changes):
    """One list object asked about, changed (a value replaced, one appended or taken
    away), asked about again: each answer is the one made for what it holds then, never
    the one remembered for that object before. Fails when the list asked about last is
    recognised by its identity alone."""
    enc = Encodings(resources)

    def ids(_: Encodings, values: object) -> tuple[int, ...]:
        return tuple(map(id, values))  # type: ignore[call-overload]

    shown = list(resources)
    assert enc.of_list(shown, "ids", ids) == tuple(map(id, shown))
    for at, grow in changes:
        if grow:
            shown.append({"id": f"new{at}"})
        elif shown:
            shown[at % len(shown)] = {"id": f"other{at}"}
        else:
            shown.append({"id": "first"})
        assert enc.of_list(shown, "ids", ids) == tuple(map(id, shown))
        assert enc.of_list(shown, "ids", ids) == tuple(map(id, shown))  # asked again
        if shown and not grow:
            shown.pop()
            assert enc.of_list(shown, "ids", ids) == tuple(map(id, shown))


def test_the_digest_less_a_member_is_of_that_json_made_once_and_gone_with_the_member():
    """``without_digest`` is ``json_digest`` of the JSON ``without`` gives (member or not,
    handed in by ``add`` or made on first use); after ``discard`` it is made afresh from
    the value as it is. Fails when a kept digest outlives its member, or hashes
    ``recorded``."""
    prov = {"resourceType": "Provenance", "id": "p1", "recorded": "t1", "target": []}
    stable = orjson.dumps({"resourceType": "Provenance", "id": "p1", "target": []})
    assert Encodings().without_digest(prov, "recorded") == json_digest(stable)
    enc = Encodings()
    enc.add(prov)
    assert enc.without_digest(prov, "recorded") == json_digest(stable)
    copy = {**prov, "recorded": "t2"}
    enc.add(copy, None, ("recorded", stable), json_digest(stable))
    assert enc.without_digest(copy, "recorded") == enc.without_digest(prov, "recorded")
    prov["id"] = "p2"  # not done to members; here it shows which digest is served
    assert enc.without_digest(prov, "recorded") == json_digest(stable)
    enc.discard(prov)
    moved = orjson.dumps({"resourceType": "Provenance", "id": "p2", "target": []})
    assert enc.without_digest(prov, "recorded") == json_digest(moved)


@settings(deadline=None)
@given(resources=RESOURCES, picks=st.lists(st.lists(st.integers(0, 7), max_size=5), max_size=12))
def test_an_array_is_the_json_of_its_list_however_often_asked(resources, picks):
    """``array`` (a kept result's matches, made once for the very same list) is the JSON
    of what the list holds when asked: members, strangers, the empty list, the same list
    again, and one list object changed in place between askings. Fails when the array
    is joined without its brackets or commas, or remembered for a changed list."""
    enc = Encodings(resources)
    for pick in picks:
        shown = [resources[i] if i < len(resources) else {"id": str(i)} for i in pick]
        assert orjson.dumps({"m": enc.array(shown)}) == orjson.dumps({"m": shown})
        assert orjson.dumps([enc.array(shown)]) == orjson.dumps([shown])  # asked again
        shown.append({"id": "later"})
        assert orjson.dumps(enc.array(shown)) == orjson.dumps(shown)
