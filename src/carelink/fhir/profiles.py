"""The FHIR profiles carelink emits to, as data: StructureDefinitions and ValueSets.

``load_profiles(directory)`` reads every ``*.json`` under ``profiles/`` (shipped
as ``carelink/profile_files``) at start-up and refuses, naming the file, one
that is not a StructureDefinition or ValueSet carelink can use. The result
answers two questions:

- which profile a resource of a type should claim (``profile_for``: the one
  profile per type derived straight from the R4 resource, e.g. UK Core
  Patient, never a narrower one such as UK Core Observation-Lab);
- whether a resource meets a profile (``ProfileSet.check``, in
  ``carelink.fhir.profile_check``).

Example::

    profiles = load_profiles(Path("profiles"))
    profiles.profile_for("Patient")
    # 'https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from carelink.errors import ConfigError
from carelink.fhir.jsonio import read_config

Json = dict[str, Any]
CORE = "http://hl7.org/fhir/StructureDefinition/"
_MAX = re.compile(r"^(\*|\d+)$")


@dataclass(frozen=True)
class Element:
    """One differential element: what the profile says about one path (or slice)."""

    id: str  # e.g. "Patient.identifier:nhsNumber.system"
    min: int | None
    max: str | None  # "0", "1", ... or "*"
    fixed: tuple[str, Any] | None  # ("fixedUri", "https://...")
    pattern: tuple[str, Any] | None
    binding: tuple[str, str] | None  # (strength, value set canonical)
    profiles: tuple[str, ...]  # type profiles (an extension slice's definition)
    discriminators: tuple[tuple[str, str], ...]  # slicing: (type, path)

    @property
    def segments(self) -> list[tuple[str, str | None]]:
        """The id as (name, slice) steps below the root type."""
        out: list[tuple[str, str | None]] = []
        for part in self.id.split(".")[1:]:
            name, _, slice_name = part.partition(":")
            out.append((name, slice_name or None))
        return out


@dataclass(frozen=True)
class Profile:
    """A StructureDefinition's differential, ready to check against."""

    url: str
    type: str
    base: str
    elements: tuple[Element, ...]

    @cached_property
    def _by_id(self) -> dict[str, Element]:
        return {e.id: e for e in self.elements}

    def element(self, id_: str) -> Element | None:
        """The differential element with this id, if the profile constrains it."""
        return self._by_id.get(id_)

    @property
    def required(self) -> tuple[str, ...]:
        """Top-level elements the profile makes mandatory (``min >= 1``), e.g. UK Core
        MedicationRequest's ``substitution``; ``value[x]`` style names keep their ``[x]``."""
        return tuple(
            e.id.split(".", 1)[1]
            for e in self.elements
            if e.min and e.id.count(".") == 1 and ":" not in e.id
        )


@dataclass(frozen=True)
class ProfileSet:
    """Every profile and value set carelink knows, by canonical URL."""

    profiles: Mapping[str, Profile]
    value_sets: Mapping[str, frozenset[tuple[str, str]]]  # url -> {(system, code)}

    def profile_for(self, resource_type: str) -> str | None:
        """The profile a ``resource_type`` resource claims: the one derived from R4 itself."""
        for p in self.profiles.values():
            if p.type == resource_type and p.base == CORE + resource_type:
                return p.url
        return None

    def required_by_type(self) -> dict[str, tuple[str, ...]]:
        """resourceType -> the top-level elements its profile makes mandatory."""
        return {
            p.type: p.required
            for p in self.profiles.values()
            if p.base == CORE + p.type and p.required
        }

    def by_type(self) -> dict[str, str]:
        """resourceType -> the profile it claims, for every type with one."""
        return {
            p.type: p.url
            for p in self.profiles.values()
            if p.base == CORE + p.type and p.type != "Extension"
        }


def _element(raw: Any, where: str, root: str) -> Element:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise ConfigError(f"{where}: every differential element needs an id")
    id_ = raw["id"]
    if id_.split(".")[0].split(":")[0] != root:
        raise ConfigError(f"{where}: element {id_} is not under {root}")
    min_, max_ = raw.get("min"), raw.get("max")
    if min_ is not None and (not isinstance(min_, int) or min_ < 0):
        raise ConfigError(f"{where}: element {id_}: min must be a whole number")
    if max_ is not None and (not isinstance(max_, str) or not _MAX.match(max_)):
        raise ConfigError(f"{where}: element {id_}: max must be a number or *")
    fixed = next(((k, v) for k, v in raw.items() if k.startswith("fixed")), None)
    pattern = next(((k, v) for k, v in raw.items() if k.startswith("pattern")), None)
    binding = raw.get("binding")
    bound = None
    if isinstance(binding, dict) and isinstance(binding.get("valueSet"), str):
        bound = (str(binding.get("strength")), binding["valueSet"].split("|")[0])
    profiles = tuple(p for t in raw.get("type", ()) for p in t.get("profile", ()))
    slicing = raw.get("slicing") or {}
    discriminators = tuple(
        (str(d.get("type")), str(d.get("path"))) for d in slicing.get("discriminator", ())
    )
    return Element(id_, min_, max_, fixed, pattern, bound, profiles, discriminators)


def _structure(sd: Json, where: str) -> Profile:
    for key in ("url", "type", "baseDefinition"):
        if not isinstance(sd.get(key), str):
            raise ConfigError(f"{where}: a StructureDefinition needs {key}")
    elements = (sd.get("differential") or {}).get("element")
    if not isinstance(elements, list):
        raise ConfigError(f"{where}: a StructureDefinition needs differential.element")
    return Profile(
        sd["url"],
        sd["type"],
        sd["baseDefinition"],
        tuple(_element(e, where, sd["type"]) for e in elements),
    )


def _value_set(vs: Json, where: str) -> tuple[str, frozenset[tuple[str, str]]]:
    if not isinstance(vs.get("url"), str):
        raise ConfigError(f"{where}: a ValueSet needs url")
    codes: set[tuple[str, str]] = set()
    for inc in (vs.get("compose") or {}).get("include", ()):
        concepts = inc.get("concept")
        if not isinstance(inc.get("system"), str) or not concepts:
            raise ConfigError(
                f"{where}: carelink checks value sets that list their codes "
                "(compose.include with system and concept)"
            )
        codes.update((inc["system"], str(c["code"])) for c in concepts)
    if not codes:
        raise ConfigError(f"{where}: the ValueSet lists no codes")
    return vs["url"], frozenset(codes)


def load_profiles(directory: Path) -> ProfileSet:
    """Every StructureDefinition and ValueSet under ``directory``; ``ConfigError`` naming
    the file when one cannot be used."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: the profiles folder does not exist")
    profiles: dict[str, Profile] = {}
    value_sets: dict[str, frozenset[tuple[str, str]]] = {}
    for path in sorted(directory.glob("*.json")):
        doc, _ = read_config(path, "a profile")
        where = str(path)
        kind = doc.get("resourceType") if isinstance(doc, dict) else None
        if kind == "StructureDefinition":
            p = _structure(doc, where)
            if p.url in profiles:
                raise ConfigError(f"{where}: {p.url} is defined twice")
            profiles[p.url] = p
        elif kind == "ValueSet":
            url, codes = _value_set(doc, where)
            value_sets[url] = codes
        else:
            raise ConfigError(f"{where}: not a StructureDefinition or ValueSet")
    if not profiles:
        raise ConfigError(f"{directory}: no StructureDefinition found")
    return ProfileSet(profiles, value_sets)
