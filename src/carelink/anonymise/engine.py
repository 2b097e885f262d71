"""Applying de-identification rules to FHIR resources (dicts), as the Microsoft
FHIR anonymizer documents its behaviour, plus carelink's stronger options.

Compatible behaviour (so existing configurations give the same output where
the tool is deterministic):

- rules run in file order; a rule matches nodes of a resource (its type
  prefix, ``Resource``/``DomainResource`` or none) by FHIRPath
  (``paths.py``); each matched node is processed with all its descendants,
  and a node already processed by an earlier rule is skipped (the first rule
  to reach a node wins); unmatched nodes are kept; empty elements are
  removed at the end (``edits.clean``);
- contained resources and Bundle entries are processed each on their own;
- the methods (``methods.py``): ``redact`` (with partial dates, ages over 89
  and postal codes), ``dateShift`` (offset from ``prefix + dateShiftKey``,
  ±50 days; time digits zeroed, time zone kept), ``cryptoHash`` (HMAC-SHA256
  hex; only the id part of a reference), ``encrypt`` (AES-CBC, PKCS7, random
  IV, base64(IV‖data)), ``substitute``, ``perturb`` (uniform noise, banker's
  rounding), ``generalize`` (FHIRPath cases on ``$this``), ``keep``; method
  names in any casing;
- ``processingErrors: skip``: a resource a rule fails on is left out
  (``apply`` returns ``None``; the tool writes an empty resource instead);
- security labels in ``meta.security`` for what was done.

A primitive's id and extensions (``_birthDate`` beside ``birthDate``) are
its children, as in the tool's element model: ``nodesByType('Extension')``
reaches them, and a rule on the primitive takes them along. Where carelink
is stricter than the tool: any method but ``keep`` removes them (keeping
only what an earlier rule already processed), since they describe the exact
value the method changed (a birth-time extension under a shifted or
generalised birth date); a primitive that is removed takes them with it
whatever earlier rules did; repeats stay aligned with their ``_name`` list;
an extension left without its ``url`` is removed.

carelink's options (``parameters``): ``dateShiftScope: "person"`` and
``dateJitterDays`` (see ``methods.py``); ``freeText: "drop"`` removes, after
the rules, every string, markdown and xhtml value except ``FREE_TEXT_KEEP``
and ``freeTextKeep`` (``Type.element`` or a resource path). With project
keys, ``cryptoHash``, ``encrypt`` and ``dateShift`` use the project's keys
(HKDF from the master key), so projects cannot be linked by pseudonyms; a
configuration that sets its own keys is refused there.
``pseudonymiseNhsNumber`` replaces NHS-number identifiers with the keyed hash
of the normalised, check-digit-validated number before any rule runs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import orjson

from carelink.anonymise.edits import attached, clean, drop_companion, set_node, subtree
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.methods import QUANTITIES, Methods, Misused
from carelink.anonymise.paths import Paths, split
from carelink.anonymise.rules import Config, Rule
from carelink.anonymise.walk import Node, is_companion, walk
from carelink.errors import ConfigError, ExportError
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, normalise, problem

Json = dict[str, Any]

OBS_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
LABELS: dict[str, Json] = {
    "REDACT": {"system": OBS_VALUE, "code": "REDACTED", "display": "redacted"},
    "ABSTRACT": {"system": OBS_VALUE, "code": "ABSTRED", "display": "abstracted"},
    "CRYPTOHASH": {
        "system": OBS_VALUE,
        "code": "CRYTOHASH",
        "display": "cryptographic hash function",
    },
    "ENCRYPT": {"code": "ENCRYPT", "display": "exact value is transformed into ciphertext"},
    "PERTURB": {"code": "PERTURBED", "display": "exact value is replaced with another exact value"},
    "SUBSTITUTE": {
        "code": "SUBSTITUTED",
        "display": "exact value is replaced with a predefined value",
    },
    "GENERALIZE": {
        "code": "GENERALIZED",
        "display": "exact value is replaced with a general value",
    },
    "PSEUDONYMISE": {"system": OBS_VALUE, "code": "PSEUDED", "display": "pseudonymized"},
}
ORDER = list(LABELS)

FREE_TEXT = frozenset({"string", "markdown", "xhtml"})
# Text elements that are not free text; ``freeTextKeep`` adds to them. Identifier
# values and references are there because the rules hash them, not because they are safe.
FREE_TEXT_KEEP = frozenset(
    {
        "Coding.display",
        "Coding.version",
        "Quantity.unit",
        "Address.country",
        "Address.postalCode",
        "Identifier.value",
        "Reference.reference",
    }
)
KEY_PARAMETERS = ("cryptoHashKey", "encryptKey", "dateShiftKey")


class _Failed(ExportError):
    """A rule failed on a resource (``processingErrors`` decides what follows)."""


class Anonymiser(Methods):
    """One configuration, ready to apply."""

    def __init__(
        self,
        config: Config,
        keys: ProjectKeys | None = None,
        rng: random.Random | None = None,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
        folder: str = "",
    ) -> None:
        self.config = config
        self.folder = folder
        self._file = ""
        self.keys = keys
        self.rng = rng or random.Random()
        self.today = today
        p = config.parameters
        if keys is not None:
            for name in KEY_PARAMETERS:
                if p.get(name):
                    raise ConfigError(
                        f"{config.source}: {name} is set but extracts derive per-project keys;"
                        " remove it"
                    )
        self.date_key = (
            keys.date_key.hex() if keys is not None else str(p.get("dateShiftKey") or "")
        ) or os.urandom(16).hex()
        default_key = os.urandom(16).hex()
        self.hash_key = str(p.get("cryptoHashKey") or default_key).encode()
        self.encrypt_key = str(p.get("encryptKey") or default_key).encode()
        self.scope = str(p.get("dateShiftScope", "resource"))
        self.range = int(p.get("dateShiftRange", 50))
        self.minimum = int(p.get("dateShiftMinimum", 1))
        self.jitter = int(p.get("dateJitterDays", 0))
        self.free_text = p.get("freeText", "keep") == "drop"
        self.free_text_keep = FREE_TEXT_KEEP | {str(k) for k in p.get("freeTextKeep") or []}
        self._event = ""
        self.partial_dates = bool(p.get("enablePartialDatesForRedact", False))
        self.partial_ages = bool(p.get("enablePartialAgesForRedact", False))
        self.partial_zip = bool(p.get("enablePartialZipCodesForRedact", False))
        self.restricted_zip = [str(z) for z in p.get("restrictedZipCodeTabulationAreas") or []]
        self.nhs = bool(p.get("pseudonymiseNhsNumber", False))
        self._paths = Paths()
        if self.scope == "person" and keys is None:
            raise ExportError("dateShiftScope person needs project keys")

    # -- public --------------------------------------------------------------------------------
    def apply(self, resource: Json, person: str | None = None, file: str = "") -> Json | None:
        """A de-identified copy of ``resource``, or ``None`` when it must be left out.

        ``person`` is the person's pseudonym (for ``dateShiftScope: person``),
        ``file`` the name of the file it is written to (for ``dateShiftScope:
        file``). When a rule fails on the resource (or on one nested in it),
        ``processingErrors: raise`` (the default) raises ``ExportError`` and
        ``skip`` returns ``None``: the caller leaves the resource out. (The
        Microsoft tool writes an empty resource labelled REDACTED instead and
        counts it as skipped.) Not re-entrant: one engine per thread.
        """
        out: Json = orjson.loads(orjson.dumps(resource))  # a deep copy, several times faster
        self._file = file
        self._event = str(resource.get("id", ""))
        try:
            self._resource(out, out, person)
        except _Failed:
            if self.config.processing_error == "skip":
                return None
            raise
        return out

    # -- per resource ----------------------------------------------------------------------------
    def _resource(
        self, resource: Json, root: Json, person: str | None, labelled: bool = True
    ) -> set[str]:
        ops: set[str] = set()
        visited: set[tuple[int, Any]] = set()
        rtype = str(resource.get("resourceType", ""))
        if self.nhs:
            self._pseudonymise_nhs(resource, visited, ops)
        nodes: list[Node] | None = None
        for rule in self.config.rules:
            rule_type, expr = split(rule.path)
            if rule_type and rule_type not in (rtype, "Resource", "DomainResource"):
                continue
            try:
                if nodes is None:
                    nodes = [n for n in walk(resource) if n.type != "Resource"]
                for node in self._paths.match(resource, nodes, rtype, rule.path, rule_type, expr):
                    self._process(rule, node, visited, ops, root, person)
                if rule.method == "substitute":
                    nodes = None  # substituted elements are new objects: walk again
            except Misused:
                raise
            except Exception as exc:
                raise _Failed(f"rule {rule.path!r} ({rule.method}) failed on a {rtype}") from exc
        if self.free_text:
            self._drop_free_text(resource, ops)
        # Nested resources, each on its own: Bundle entries carry their own labels,
        # contained resources' operations are labelled on their container.
        is_bundle = rtype == "Bundle"
        for nested in _nested(resource):
            ops |= self._resource(nested, root, person, labelled=is_bundle)
        clean(resource)
        if ops and labelled:
            self._label(resource, ops)
        return ops

    # -- processing ----------------------------------------------------------------------------
    def _process(
        self,
        rule: Rule,
        node: Node,
        visited: set[tuple[int, Any]],
        ops: set[str],
        root: Json,
        person: str | None,
    ) -> None:
        if rule.method == "substitute":
            if (id(node.container), node.key) not in visited and attached(node):
                self._substitute_node(rule, node, visited, ops)
                if node.companion is not None:
                    drop_companion(node.companion, visited)
            return
        method = getattr(self, f"_{rule.method}")
        whole = rule.method == "perturb"  # acts on the node as a whole
        for n in [node] if whole else list(subtree(node)):
            key = (id(n.container), n.key)
            if key in visited:
                continue
            if is_companion(n) and rule.method != "keep":
                drop_companion(n, visited)
                continue
            if whole:
                for d in list(subtree(n)):
                    if is_companion(d):
                        drop_companion(d, visited)
                    visited.add((id(d.container), d.key))
            visited.add(key)
            before = n.value
            method(rule, n, ops, root, person)
            if n.companion is not None and before is not None and n.value is None:
                set_node(n.companion, None)  # the value is gone: so are its id and extensions

    def _drop_free_text(self, resource: Json, ops: set[str]) -> None:
        """``freeText: drop``: every string, markdown and xhtml value not on the keep list
        (``Type.element`` or a resource path) goes, whatever the rules did with it."""
        for n in list(walk(resource)):
            if n.type not in FREE_TEXT or n.value is None:
                continue
            parent = "Quantity" if n.parent_type in QUANTITIES else n.parent_type
            if f"{parent}.{n.element}" in self.free_text_keep or n.path in self.free_text_keep:
                continue
            set_node(n, None)
            if n.companion is not None:
                set_node(n.companion, None)
            ops.add("REDACT")

    def _pseudonymise_nhs(
        self, resource: Json, visited: set[tuple[int, Any]], ops: set[str]
    ) -> None:
        for n in walk(resource):
            if (
                n.type == "Identifier"
                and isinstance(n.value, dict)
                and n.value.get("system") == NHS_NUMBER_SYSTEM
            ):
                raw = str(n.value.get("value", ""))
                ident = n.value
                if problem(raw) is None and self.keys is not None:
                    ident["value"] = self.keys.nhs_pseudonym(normalise(raw))
                    ident["system"] = f"urn:carelink:pseudonym:{self.keys.project}"
                    ops.add("PSEUDONYMISE")
                else:
                    set_node(n, None)  # never hashed into what could be someone else's number
                    ops.add("REDACT")
                for d in list(subtree(n)):
                    if is_companion(d):
                        drop_companion(d, visited)
                    visited.add((id(d.container), d.key))

    @staticmethod
    def _label(resource: Json, ops: set[str]) -> None:
        meta = resource.setdefault("meta", {})
        have = {str(c.get("code", "")).lower() for c in meta.get("security", [])}
        labels = list(meta.get("security", []))
        for op in ORDER:
            if op in ops and LABELS[op]["code"].lower() not in have:
                labels.append(dict(LABELS[op]))
        meta["security"] = labels


def _nested(resource: Json) -> list[Json]:
    out = []
    for c in resource.get("contained", []) or []:
        if isinstance(c, dict):
            out.append(c)
    for e in resource.get("entry", []) or []:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            out.append(e["resource"])
    return out
