"""Applying de-identification rules to FHIR resources (dicts), as the Microsoft
FHIR anonymizer documents its behaviour, plus carelink's stronger options.

Compatible behaviour (so existing configurations give the same output where
the tool is deterministic):

- rules run in file order; a rule matches nodes of a resource (its type
  prefix, ``Resource``/``DomainResource`` or none) by FHIRPath; each matched
  node is processed with all its descendants, and a node already processed
  by an earlier rule is skipped (the first rule to reach a node wins);
  unmatched nodes are kept; empty elements are removed at the end;
- contained resources and Bundle entries are processed each on their own;
- ``redact`` (with partial dates, ages over 89 and postal codes),
  ``dateShift`` (offset from ``prefix + dateShiftKey``, ±50 days; time digits
  zeroed, time zone kept), ``cryptoHash`` (HMAC-SHA256 hex; only the id part
  of a reference), ``encrypt`` (AES-CBC, PKCS7, random IV, base64(IV‖data)),
  ``substitute``, ``perturb`` (uniform noise, banker's rounding),
  ``generalize`` (FHIRPath cases on ``$this``), ``keep``; method names in
  any casing;
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

``dateShiftScope`` ``resource`` keys the shift by the resource's id,
``file`` by the name of the file the resource is written to (``apply(...,
file=)``; the pipeline writes ``<type>.ndjson``), ``folder`` by the name of
the output folder (``Anonymiser(folder=)``), as the tool does.

carelink's options (``parameters``): ``dateShiftScope: "person"`` shifts
every date of a person by a keyed per-person offset (HMAC of the person's
pseudonym), uniform over ``dateShiftMinimum``..``dateShiftRange`` days either
way, the same in every resource from every source. A known exact date of any
event of a person (a birth date if it were shifted, an admission someone
remembers) still reveals that person's shift, and with it all their dates;
the pseudonymised profile therefore keeps only the year of birth.
``dateJitterDays`` moves each resource's dates by a further keyed offset in
``[-j, j]`` (HMAC of the person and the resource id: the same input gives
the same output, and one resource's dates move together), so the day gaps
between a person's events, which would otherwise link two projects'
extracts by their content, no longer match exactly. ``freeText: "drop"``
removes, after the rules, every string, markdown and xhtml value except
``FREE_TEXT_KEEP`` and ``freeTextKeep`` (``Type.element`` or a resource
path). With project keys, ``cryptoHash``, ``encrypt`` and ``dateShift`` use
the project's keys (HKDF from the master key), so projects cannot be linked
by pseudonyms; a configuration that sets its own keys is refused there.
``pseudonymiseNhsNumber`` replaces NHS-number identifiers with the keyed hash
of the normalised, check-digit-validated number before any rule runs.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import os
import random
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models

from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.rules import Config, Rule
from carelink.anonymise.walk import PRIMITIVES, Node, below, is_companion, walk
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

_DATE = re.compile(r"([0-9]{4})(-([0-9]{2})(-([0-9]{2}))?)?")
_DATETIME = re.compile(
    r"([0-9]{4})(-([0-9]{2})(-([0-9]{2})"
    r"(T([0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?)(Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)
_NODES_BY = re.compile(
    r"^nodesBy(Type|Name)\(['\"]([A-Za-z0-9_]+)['\"]\)(?:\.([A-Za-z][A-Za-z0-9]*))?$"
)
_NODES_BY_PREFIX = re.compile(r"^nodesBy(Type|Name)\(['\"]([A-Za-z0-9_]+)['\"]\)")
_DOTTED = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")
_SPLIT = re.compile(r"^(?P<type>[A-Z][a-zA-Z]*)?(\.)?(?P<expr>.*?)$")
_REF = re.compile(
    r"^(?P<prefix>((http|https)://([A-Za-z0-9\\/.:%$])*)?[A-Z][A-Za-z]+/)"
    r"(?P<id>[A-Za-z0-9\-.]{1,64})(?P<suffix>/_history/[A-Za-z0-9\-.]{1,64})?$"
)
NUMERIC = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
QUANTITIES = frozenset(
    {"Age", "Count", "Duration", "Distance", "Money", "MoneyQuantity", "Quantity", "SimpleQuantity"}
)
MARK = "__carelink_node"
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


class _Misused(ExportError):
    """The engine was called wrongly; never skipped."""


class Anonymiser:
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
        self._compiled: dict[str, Callable[..., list[Any]]] = {}
        if self.scope == "person" and keys is None:
            raise ExportError("dateShiftScope person needs project keys")

    def _eval(
        self, expression: str, data: Any, variables: dict[str, Any] | None = None
    ) -> list[Any]:
        """Evaluate FHIRPath, compiling each distinct expression once."""
        fn = self._compiled.get(expression)
        if fn is None:
            fn = fhirpath_compile(expression, models["r4"])
            self._compiled[expression] = fn
        return list(fn(data, variables or {}))

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
            rule_type, expr = self._split(rule.path)
            if rule_type and rule_type not in (rtype, "Resource", "DomainResource"):
                continue
            try:
                if nodes is None:
                    nodes = [n for n in walk(resource) if n.type != "Resource"]
                for node in self._match(resource, nodes, rtype, rule.path, rule_type, expr):
                    self._process(rule, node, visited, ops, root, person)
                if rule.method == "substitute":
                    nodes = None  # substituted elements are new objects: walk again
            except _Misused:
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
        _clean(resource)
        if ops and labelled:
            self._label(resource, ops)
        return ops

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        m = _SPLIT.match(path)
        if m is None:  # pragma: no cover - the pattern matches any string
            return "", path
        return m.group("type") or "", m.group("expr") or ""

    def _match(
        self, resource: Json, nodes: list[Node], rtype: str, path: str, rule_type: str, expr: str
    ) -> list[Node]:
        if rule_type and not expr:  # a resource-type rule: the resource itself
            return [Node({"": resource}, "", resource, rtype, rtype, "")]
        if rule_type and _NODES_BY_PREFIX.match(expr):  # Patient.nodesByType('HumanName')
            path = expr
        m = _NODES_BY.match(path)
        if m:
            kind, name, child = m.groups()
            hits = [n for n in nodes if (n.type if kind == "Type" else n.element) == name]
            if child:  # the child's container is its parent, or for a repeat the list in it
                parents = {id(h.value) for h in hits}
                parents |= {id(h.value.get(child)) for h in hits if isinstance(h.value, dict)}
                hits = [c for c in nodes if id(c.container) in parents and c.element == child]
            return hits
        if _DOTTED.match(expr):
            return _dotted(nodes, expr)
        return self._fhirpath(resource, path, nodes)

    def _fhirpath(self, resource: Json, path: str, nodes: list[Node]) -> list[Node]:
        """General expressions, evaluated by fhirpathpy on a marked copy and mapped back.

        Results that are elements map back through the mark; primitive results
        (``...where(...).value``) through their parent and the last name.
        """
        marked: Json = orjson.loads(orjson.dumps(resource))
        originals = [n for n in nodes if isinstance(n.value, dict)]
        copies = [n for n in walk(marked) if n.type != "Resource" and isinstance(n.value, dict)]
        for i, dup in enumerate(copies):
            dup.value[MARK] = i

        def run(expression: str) -> list[Any]:
            prefix = _NODES_BY_PREFIX.match(expression)
            if prefix is None:
                return self._eval(expression, marked)
            kind, name = prefix.groups()
            rest = expression[prefix.end() :].lstrip(".")
            starts = [d.value for d in copies if (d.type if kind == "Type" else d.element) == name]
            if not rest:
                return starts
            out: list[Any] = []
            for start in starts:
                out += self._eval("%node." + rest, {}, {"node": start})
            return out

        def nodes_of(results: list[Any]) -> list[Node]:
            return [originals[r[MARK]] for r in results if isinstance(r, dict) and MARK in r]

        results = run(path)
        hits = nodes_of(results)
        if results and not hits and "." in path:
            parent, _, last = path.rpartition(".")
            if _DOTTED.match(last):
                holders = {id(h.value) for h in nodes_of(run(parent))}
                hits = [
                    n for n in nodes if id(n.container) in holders and _element_is(n.element, last)
                ]
        return hits

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
            if (id(node.container), node.key) not in visited and _attached(node):
                self._substitute_node(rule, node, visited, ops)
                if node.companion is not None:
                    _drop_companion(node.companion, visited)
            return
        method = getattr(self, f"_{rule.method}")
        whole = rule.method == "perturb"  # acts on the node as a whole
        for n in [node] if whole else list(_subtree(node)):
            key = (id(n.container), n.key)
            if key in visited:
                continue
            if is_companion(n) and rule.method != "keep":
                _drop_companion(n, visited)
                continue
            if whole:
                for d in list(_subtree(n)):
                    if is_companion(d):
                        _drop_companion(d, visited)
                    visited.add((id(d.container), d.key))
            visited.add(key)
            before = n.value
            method(rule, n, ops, root, person)
            if n.companion is not None and before is not None and n.value is None:
                _set(n.companion, None)  # the value is gone: so are its id and extensions

    def _keep(self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None) -> None:
        return None

    def _redact(self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None) -> None:
        if n.value is None or isinstance(n.value, dict | list):
            return
        value = n.value
        if n.type in ("date", "dateTime", "instant"):
            year = _year(value)
            if self.partial_dates and year is not None and not self._over_89(value):
                _set(n, year)
            else:
                _set(n, None)
            ops.add("REDACT")
            return
        if n.type == "decimal" and _parent_type(n) == "Age":
            if not self.partial_ages or int(value) > 89:
                _set(n, None)
            ops.add("REDACT")
            return
        if n.element.lower() == "postalcode":
            text = str(value)
            if self.partial_zip:
                if any(text.startswith(z) for z in self.restricted_zip):
                    _set(n, re.sub(r"[0-9]", "0", text))
                elif len(text) >= 3:
                    _set(n, text[:3] + re.sub(r"[0-9]", "0", text[3:]))
                ops.add("ABSTRACT")
            else:
                _set(n, None)
                ops.add("REDACT")
            return
        _set(n, None)
        ops.add("REDACT")

    def _over_89(self, value: str) -> bool:
        m = _DATE.match(value)
        if m is None:
            return False
        y, mo, d = int(m.group(1)), int(m.group(3) or 1), int(m.group(5) or 1)
        t = self.today()
        age = t.year - y - (1 if (t.month, t.day) < (mo, d) else 0)
        return age > 89

    def _offset(self, root: Json, person: str | None) -> int:
        fixed = self.config.parameters.get("dateShiftFixedOffsetInDays")
        if fixed is not None:
            return int(fixed)
        if self.scope == "person":
            if person is None or self.keys is None:
                raise _Misused("a per-person date shift needs the person")
            return self.keys.shift_days(person, self.range, self.minimum) + self._jitter(person)
        prefix = {
            "resource": str(root.get("id", "")),
            "file": Path(self._file).name,
            "folder": Path(self.folder.rstrip("/\\")).name,
        }.get(self.scope, "")
        o = 0
        for b in (prefix + self.date_key).encode():
            o = (o * 131 + b) % 101
        return o - 50

    def _dateShift(
        self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None
    ) -> None:
        if n.type not in ("date", "dateTime", "instant") or not isinstance(n.value, str):
            return
        value = n.value
        m = _DATETIME.match(value)
        if m is None or m.group(5) is None or self._over_89(value):
            self._redact(rule, n, ops, root, person)
            return
        day = date(int(m.group(1)), int(m.group(3)), int(m.group(5)))
        shifted = (day + timedelta(days=self._offset(root, person))).isoformat()
        if n.type != "date" and m.group(6):
            zeroed = re.sub(r"[0-9]", "0", m.group(7))
            shifted = f"{shifted}T{zeroed}{m.group(9)}"
        _set(n, shifted)
        ops.add("PERTURB")

    def _jitter(self, person: str) -> int:
        """This event's own offset in ``[-dateJitterDays, dateJitterDays]``, keyed by the
        person and the resource's id: every date of one resource moves together (a
        period stays in order), reruns give the same output."""
        if self.jitter == 0 or self.keys is None:
            return 0
        message = f"jitter\x00{person}\x00{self._event}".encode()
        digest = hmac.new(self.keys.date_key, message, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") % (2 * self.jitter + 1) - self.jitter

    def _drop_free_text(self, resource: Json, ops: set[str]) -> None:
        """``freeText: drop``: every string, markdown and xhtml value not on the keep list
        (``Type.element`` or a resource path) goes, whatever the rules did with it."""
        for n in list(walk(resource)):
            if n.type not in FREE_TEXT or n.value is None:
                continue
            parent = "Quantity" if n.parent_type in QUANTITIES else n.parent_type
            if f"{parent}.{n.element}" in self.free_text_keep or n.path in self.free_text_keep:
                continue
            _set(n, None)
            if n.companion is not None:
                _set(n.companion, None)
            ops.add("REDACT")

    def _hash(self, text: str) -> str:
        key = self.keys.pseudonym_key if self.keys is not None else self.hash_key
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def _cryptoHash(
        self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None
    ) -> None:
        if n.value is None or isinstance(n.value, dict | list | bool):
            return
        text = str(n.value)
        if text == "":
            return
        if n.element == "reference" and _parent_type(n) == "Reference":
            if text.startswith("#"):
                new = "#" + self._hash(text[1:]) if len(text) > 1 else text
            elif (m := _REF.match(text)) is not None:
                new = m.group("prefix") + self._hash(m.group("id")) + (m.group("suffix") or "")
            elif text.startswith(("urn:oid:", "urn:uuid:")):
                head = text[: text.index(":", 4) + 1]
                new = head + self._hash(text[len(head) :])
            else:
                new = self._hash(text)
        else:
            new = self._hash(text)
        _set(n, new)
        ops.add("CRYPTOHASH")

    def _encrypt(self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None) -> None:
        if n.value is None or isinstance(n.value, dict | list) or n.value == "":
            return
        key = self.keys.encrypt_key if self.keys is not None else self.encrypt_key
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        data = padder.update(str(n.value).encode()) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        _set(n, base64.b64encode(iv + enc.update(data) + enc.finalize()).decode())
        ops.add("ENCRYPT")

    def decrypt(self, text: str) -> str:
        """The inverse of ``encrypt`` (for the holder of the key)."""
        key = self.keys.encrypt_key if self.keys is not None else self.encrypt_key
        raw = base64.b64decode(text)
        dec = Cipher(algorithms.AES(key), modes.CBC(raw[:16])).decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        plain = unpadder.update(dec.update(raw[16:]) + dec.finalize()) + unpadder.finalize()
        return plain.decode()

    def _substitute_node(
        self, rule: Rule, n: Node, visited: set[tuple[int, Any]], ops: set[str]
    ) -> None:
        """Replace a node's value, keeping what earlier rules already processed inside it.

        A primitive takes the replacement. A complex value is merged with the
        replacement element by element: repeats are paired in order; an
        element an earlier rule processed stays as that rule left it (and
        takes up its replacement's place); one that merely holds such an
        element is stripped down to it; anything else is replaced, or removed
        when the replacement has nothing for it. Then the whole substituted
        value counts as processed, so later rules leave it alone.
        """
        replacement = rule.options.get("replaceWith")
        if n.type in PRIMITIVES or not isinstance(n.value, dict):
            _set(n, None if replacement is None else copy.deepcopy(replacement))
        else:
            _merge(n.value, replacement if isinstance(replacement, dict) else {}, visited)
        for d in _subtree(
            Node(n.container, n.key, n.container[n.key], n.type, n.path, n.element, n.parent_type)
        ):
            visited.add((id(d.container), d.key))
        ops.add("SUBSTITUTE")

    def _perturb(self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None) -> None:
        target = n
        if n.type in QUANTITIES and isinstance(n.value, dict) and "value" in n.value:
            target = Node(n.value, "value", n.value["value"], "decimal", n.path + ".value", "value")
        elif n.type not in NUMERIC:
            return
        if target.value is None or isinstance(target.value, bool):
            return
        value = Decimal(str(target.value))
        span = Decimal(str(rule.options.get("span", 0)))
        if rule.options.get("rangeType", "fixed") == "proportional":
            span = value * span
        round_to = (
            0
            if target.type in ("integer", "positiveInt", "unsignedInt")
            else int(rule.options.get("roundTo", 2))
        )
        noise = Decimal(str(self.rng.uniform(float(-span / 2), float(span / 2))))
        new = (value + noise).quantize(Decimal(1).scaleb(-round_to), rounding=ROUND_HALF_EVEN)
        if target.type == "positiveInt" and new <= 0:
            new = Decimal(1)
        if target.type == "unsignedInt" and new < 0:
            new = Decimal(0)
        _set(target, int(new) if round_to == 0 else float(new))
        ops.add("PERTURB")

    def _generalize(
        self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None
    ) -> None:
        if isinstance(n.value, dict | list):
            raise ExportError(f"generalize applies to primitive values, not {n.type}")
        if n.value is None:
            return
        for condition, result in rule.options["cases"].items():
            got = self._eval(condition.replace("$this", "%this"), {}, {"this": n.value})
            if got and got[0] is True:
                value = self._eval(str(result).replace("$this", "%this"), {}, {"this": n.value})
                _set(n, _scalar(value[0]) if value else None)
                break
        else:
            if rule.options.get("otherValues", "redact") == "redact":
                _set(n, None)
        ops.add("GENERALIZE")

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
                    _set(n, None)  # never hashed into what could be someone else's number
                    ops.add("REDACT")
                for d in list(_subtree(n)):
                    if is_companion(d):
                        _drop_companion(d, visited)
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


def _touched(value: Any, container: Any, key: Any, visited: set[tuple[int, Any]]) -> bool:
    """Was this value, or anything inside it, processed by an earlier rule?"""
    if (id(container), key) in visited:
        return True
    if isinstance(value, dict):
        return any(
            _touched(
                item, v if isinstance(v, list) else value, i if isinstance(v, list) else k, visited
            )
            for k, v in value.items()
            for i, item in (enumerate(v) if isinstance(v, list) else [(k, v)])
        )
    return False


def _merge(target: Json, replacement: Json, visited: set[tuple[int, Any]]) -> None:
    """``target`` substituted by ``replacement`` in place (see ``_substitute_node``)."""
    for name in list(target):
        if name == "resourceType":
            continue
        current = target[name]
        reps = replacement.get(name)
        rep_items = reps if isinstance(reps, list) else ([] if reps is None else [reps])
        if isinstance(current, list):
            kept: list[Any] = []
            i = 0
            for index, item in enumerate(current):
                if (id(current), index) in visited:
                    kept.append(item)
                    i += 1
                elif i < len(rep_items):
                    kept.append(_merged(item, rep_items[i], current, index, visited))
                    i += 1
                elif _touched(item, current, index, visited):
                    kept.append(_merged(item, {}, current, index, visited))
            kept += [copy.deepcopy(r) for r in rep_items[i:]]
            current[:] = kept  # the same list object: processed items keep their place
        elif (id(target), name) in visited:
            continue
        elif rep_items:
            target[name] = _merged(current, rep_items[0], target, name, visited)
        elif _touched(current, target, name, visited):
            target[name] = _merged(current, {}, target, name, visited)
        else:
            del target[name]
    for name, reps in replacement.items():
        if name not in target:
            target[name] = copy.deepcopy(reps)


def _merged(
    value: Any, replacement: Any, container: Any, key: Any, visited: set[tuple[int, Any]]
) -> Any:
    if isinstance(value, dict):
        if isinstance(replacement, dict):
            _merge(value, replacement, visited)
            return value
        if _touched(value, container, key, visited):
            # A replacement of another shape: keep only what earlier rules processed
            # (failing closed, never the untouched rest of the element).
            _merge(value, {}, visited)
            return value
    elif _touched(value, container, key, visited):
        return value
    return copy.deepcopy(replacement) if replacement != {} else None


def _drop_companion(node: Node, visited: set[tuple[int, Any]]) -> None:
    """A processed primitive's id and extensions go, except what an earlier rule
    already processed (``keep`` included); then they count as processed."""
    inside = list(_subtree(node))
    if isinstance(node.value, dict) and (id(node.container), node.key) not in visited:
        if _touched(node.value, node.container, node.key, visited):
            _merge(node.value, {}, visited)
        else:
            _set(node, None)
    for d in inside:
        visited.add((id(d.container), d.key))


def _attached(node: Node) -> bool:
    """Is the node still where the walk found it? (An earlier match of the same
    substitute rule may have replaced an element holding it.)"""
    try:
        return node.container[node.key] is node.value
    except (IndexError, KeyError, TypeError):
        return False


def _scalar(v: Any) -> Any:
    if isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _element_is(element: str, name: str) -> bool:
    return element == name or (
        element.startswith(name) and element[len(name) : len(name) + 1].isupper()
    )


def _dotted(nodes: list[Node], expr: str) -> list[Node]:
    wanted = expr.split(".")
    hits = []
    for n in nodes:
        parts = n.path.split(".")[1:]
        if len(parts) != len(wanted):
            continue
        if all(_element_is(p, w) for p, w in zip(parts, wanted, strict=True)):
            hits.append(n)
    return hits


def _nested(resource: Json) -> list[Json]:
    out = []
    for c in resource.get("contained", []) or []:
        if isinstance(c, dict):
            out.append(c)
    for e in resource.get("entry", []) or []:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            out.append(e["resource"])
    return out


def _subtree(node: Node) -> Iterator[Node]:
    yield node
    yield from below(node)


def _parent_type(n: Node) -> str:
    return n.parent_type


def _set(n: Node, value: Any) -> None:
    n.container[n.key] = value
    n.value = value


def _year(value: str) -> str | None:
    m = _DATE.match(value)
    return m.group(1) if m else None


def _clean(obj: Any) -> Any:
    """Remove empty elements bottom-up (resources themselves stay); a repeating
    primitive and its ``_name`` companion list stay aligned. An extension whose
    ``url`` was redacted goes whole: without it the rest (say, the year a
    partial-date redaction left) means nothing and is not valid FHIR."""
    if isinstance(obj, dict):
        for k in list(obj):
            if k not in obj:
                continue
            v = obj[k]
            if isinstance(v, list) and _paired(obj, k):
                _clean_pair(obj, k.removeprefix("_"))
                continue
            _clean(v)
            if k in ("extension", "modifierExtension") and isinstance(v, list):
                v[:] = [e for e in v if not (isinstance(e, dict) and "url" not in e)]
            if v is None or v == {} or v == [] or v == "":
                del obj[k]
        return obj
    if isinstance(obj, list):
        obj[:] = [x for x in (_clean(v) for v in obj) if not (x is None or x == {} or x == [])]
    return obj


def _paired(obj: Json, key: str) -> bool:
    name = key.removeprefix("_")
    return isinstance(obj.get(name), list) and isinstance(obj.get("_" + name), list)


def _clean_pair(obj: Json, name: str) -> None:
    """``given`` and ``_given``: drop the places where both are empty, keep the rest
    aligned (nulls where only one side has something)."""
    values, extras = obj[name], obj["_" + name]
    size = max(len(values), len(extras))
    vals = [values[i] if i < len(values) else None for i in range(size)]
    exts = [_clean(extras[i]) if i < len(extras) else None for i in range(size)]
    exts = [None if e in (None, {}, []) else e for e in exts]
    kept = [i for i in range(size) if vals[i] is not None or exts[i] is not None]
    vals, exts = [vals[i] for i in kept], [exts[i] for i in kept]
    del obj[name], obj["_" + name]
    if any(e is not None for e in exts):
        obj[name], obj["_" + name] = vals, exts
    elif vals:
        obj[name] = vals
