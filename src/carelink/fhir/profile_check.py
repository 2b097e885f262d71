"""Check a resource against a profile's differential: the constraints that matter.

UK Core publishes its profiles as differentials over R4, so that is what is
checked; R4 itself (types, the base cardinalities, value sets of ``status``
codes) is the job of the R4 JSON schema, which the tests also apply.

Checked, for every element the differential constrains:

- cardinality: ``min``/``max`` of top-level and nested elements, counted per
  occurrence of the parent (a nested ``min = 1`` binds only where the parent
  is present), choice elements (``value[x]``) by any of their typed names,
  primitive elements through their ``_name`` companion when only extensions
  are present;
- slices: extension slices are recognised by ``url`` (the slice's type
  profile); other slices by the parent's ``value``/``pattern`` discriminator
  on a fixed or pattern value (UK Core Patient's ``identifier:nhsNumber`` is
  the identifier whose ``system`` is the NHS number system). A slice's
  cardinality and its children's rules apply to the matching items only;
- ``fixed[x]`` values must be equal; ``pattern[x]`` values must be contained;
- ``required`` bindings whose ValueSet is loaded (``profiles/`` lists its
  codes): the code, Coding or one of the CodeableConcept's codings must be in
  it (system and code);
- extensions whose own profile is loaded (the NHS number verification status)
  are checked against that profile as well;
- beyond the profile, carelink's own rule: an identifier with the NHS number
  system carries a number that passes the modulus 11 check (a missing number
  is the profile's cardinality to report).

Not checked: ``extensible``/``preferred``/``example`` bindings, and required
bindings to value sets not in ``profiles/`` (no terminology server: e.g.
``all-languages``); invariants (``constraint``, FHIRPath); allowed types of
choice elements and reference targets; ``mustSupport``; slices discriminated
by ``type``, ``profile`` or ``exists`` (skipped, not guessed); closed slicing
and slice order; displays.
"""

from __future__ import annotations

from typing import Any

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, is_valid
from carelink.fhir.profiles import Element, Profile, ProfileSet

Json = dict[str, Any]
_EXTENSIONS = ("extension", "modifierExtension")


def check(resource: Json, profiles: ProfileSet, url: str | None = None) -> list[str]:
    """What in ``resource`` breaks its profile, one line each; empty when it conforms.

    The profile is ``url`` when given, else every profile the resource claims
    in ``meta.profile`` that is loaded, else its type's profile.
    """
    rtype = str(resource.get("resourceType"))
    label = f"{rtype}/{resource.get('id')}"
    if url is not None:
        urls = [url]
    else:
        claimed = (resource.get("meta") or {}).get("profile") or []
        urls = [u for u in claimed if u in profiles.profiles]
        if not urls:
            default = profiles.profile_for(rtype)
            if default is None:
                return [f"{label}: no profile for {rtype}"]
            urls = [default]
    out: list[str] = []
    for u in urls:
        profile = profiles.profiles.get(u)
        if profile is None:
            out.append(f"{label}: profile {u} is not loaded")
        elif profile.type != rtype:
            out.append(f"{label}: profile {u} is for {profile.type}")
        else:
            out += [f"{label}: {m}" for m in _check(resource, profile, profiles)]
    for ident in _listed(resource.get("identifier")):
        nhs = isinstance(ident, dict) and ident.get("system") == NHS_NUMBER_SYSTEM
        if nhs and "value" in ident and not is_valid(str(ident["value"])):
            out.append(f"{label}: NHS number {ident.get('value')!r} fails the check digit")
    return out


def _check(root: Json, profile: Profile, profiles: ProfileSet) -> list[str]:
    out: list[str] = []
    for el in profile.elements:
        segments = el.segments
        if not segments:
            continue  # the root's own cardinality is about where it is used
        parents = _resolve(root, profile, segments[:-1])
        if parents is None:
            continue  # a slice this checker cannot recognise: not checked, not guessed
        name, slice_name = segments[-1]
        base_id = el.id.rsplit(":", 1)[0] if slice_name else el.id
        for parent in parents:
            values = _values(parent, name)[0]
            if slice_name is not None:
                sliced = _slice(values, profile, base_id, slice_name, name)
                if sliced is None:
                    break
                values = sliced
            out += _cardinality(el, len(values))
            for v in values:
                out += _value(el, v, profiles)
    return out


def _cardinality(el: Element, count: int) -> list[str]:
    if el.min and count < el.min:
        return [f"{el.id}: {count} present, at least {el.min} required"]
    if el.max is not None and el.max != "*" and count > int(el.max):
        return [f"{el.id}: {count} present, at most {el.max} allowed"]
    return []


def _value(el: Element, v: Any, profiles: ProfileSet) -> list[str]:
    out: list[str] = []
    if el.fixed is not None and v != el.fixed[1]:
        out.append(f"{el.id}: {v!r} is not the fixed value {el.fixed[1]!r}")
    if el.pattern is not None and not _contains(v, el.pattern[1]):
        out.append(f"{el.id}: {v!r} does not match the pattern {el.pattern[1]!r}")
    if el.binding is not None and el.binding[0] == "required":
        codes = profiles.value_sets.get(el.binding[1])
        if codes is not None and not _in_value_set(v, codes):
            out.append(f"{el.id}: {_codes(v)} not in the required value set {el.binding[1]}")
    for url in el.profiles:
        ext = profiles.profiles.get(url)
        if ext is not None and ext.type == "Extension" and isinstance(v, dict):
            out += [f"{el.id}: {m}" for m in _check(v, ext, profiles)]
    return out


def _resolve(
    root: Json, profile: Profile, steps: list[tuple[str, str | None]]
) -> list[Json] | None:
    """The nodes an element path (with slices) reaches, or None for an unknown slice."""
    nodes = [root]
    prefix = profile.type
    for name, slice_name in steps:
        base_id = f"{prefix}.{name}"
        found: list[Json] = []
        for node in nodes:
            values, companions = _values(node, name)
            if slice_name is not None:
                sliced = _slice(values, profile, base_id, slice_name, name)
                if sliced is None:
                    return None
                values = sliced
                companions = [v for v in values if isinstance(v, dict)]
            found += companions
        nodes = found
        prefix = f"{base_id}:{slice_name}" if slice_name else base_id
    return nodes


def _values(node: Json, name: str) -> tuple[list[Any], list[Json]]:
    """An element's values (for counting) and the objects beneath it (for walking on).

    ``value[x]`` matches ``valueCodeableConcept`` and the other typed names; a
    primitive's extensions live in its ``_name`` companion.
    """
    if name.endswith("[x]"):
        stem = name[:-3]
        keys = [k for k in node if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
    else:
        keys = [name]
    values: list[Any] = []
    objects: list[Json] = []
    for key in keys:
        got = _listed(node.get(key))
        companion = [c for c in _listed(node.get(f"_{key}")) if isinstance(c, dict)]
        values += got or companion
        dicts = [g for g in got if isinstance(g, dict)]
        objects += dicts or companion
    return values, objects


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


def _slice(
    items: list[Any], profile: Profile, base_id: str, slice_name: str, name: str
) -> list[Any] | None:
    """The items belonging to slice ``slice_name``; None when the checker cannot tell."""
    if name in _EXTENSIONS:
        el = profile.element(f"{base_id}:{slice_name}")
        urls = el.profiles if el is not None else ()
        if not urls:
            return None
        return [i for i in items if isinstance(i, dict) and i.get("url") in urls]
    parent = profile.element(base_id)
    if parent is None or not parent.discriminators:
        return None
    expected: list[tuple[str, Any]] = []
    for kind, path in parent.discriminators:
        child = profile.element(f"{base_id}:{slice_name}.{path}")
        value = None if child is None else (child.fixed or child.pattern)
        if kind not in ("value", "pattern") or value is None:
            return None
        expected.append((path, value[1]))
    return [
        i
        for i in items
        if isinstance(i, dict) and all(_contains(_at(i, p), v) for p, v in expected)
    ]


def _at(node: Json, path: str) -> Any:
    value: Any = node
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _contains(got: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(got, dict) and all(_contains(got.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(got, list) and all(any(_contains(g, p) for g in got) for p in pattern)
    return bool(got == pattern)


def _in_value_set(v: Any, codes: frozenset[tuple[str, str]]) -> bool:
    if isinstance(v, str):
        return any(code == v for _, code in codes)
    if not isinstance(v, dict):
        return False
    codings = v.get("coding") if "coding" in v else [v]
    return any(
        isinstance(c, dict) and (c.get("system"), c.get("code")) in codes for c in codings or ()
    )


def _codes(v: Any) -> str:
    if isinstance(v, dict):
        codings = v.get("coding") if "coding" in v else [v]
        return ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings or ()) or "no code"
    return repr(v)
