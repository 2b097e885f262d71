"""The de-identification methods a rule names, applied to one node.

``redact`` (with partial dates, ages over 89 and postal codes),
``dateShift``, ``cryptoHash`` (HMAC-SHA256 hex; only the id part of a
reference), ``encrypt`` (AES-CBC, PKCS7, random IV, base64(IV‖data)),
``substitute``, ``perturb`` (uniform noise, banker's rounding),
``generalize`` (FHIRPath cases on ``$this``) and ``keep``, as the Microsoft
FHIR anonymizer documents them (``engine.py`` says which node each reaches).

``dateShiftScope`` ``resource`` keys the shift by the resource's id,
``file`` by the name of the file the resource is written to (``apply(...,
file=)``; the pipeline writes ``<type>.ndjson``), ``folder`` by the name of
the output folder (``Anonymiser(folder=)``), as the tool does.

carelink's ``dateShiftScope: "person"`` shifts every date of a person by a
keyed per-person offset (HMAC of the person's pseudonym), uniform over
``dateShiftMinimum``..``dateShiftRange`` days either way, the same in every
resource from every source. A known exact date of any event of a person (a
birth date if it were shifted, an admission someone remembers) still
reveals that person's shift, and with it all their dates; the pseudonymised
profile therefore keeps only the year of birth. ``dateJitterDays`` moves
each resource's dates by a further keyed offset in ``[-j, j]`` (HMAC of the
person and the resource id: the same input gives the same output, and one
resource's dates move together), so the day gaps between a person's events,
which would otherwise link two projects' extracts by their content, no
longer match exactly. With project keys, ``cryptoHash``, ``encrypt`` and
``dateShift`` use the project's keys (HKDF from the master key).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import os
import random
import re
from collections.abc import Callable
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from carelink.anonymise.edits import merge, set_node, subtree
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.paths import Paths
from carelink.anonymise.rules import Config, Rule
from carelink.anonymise.walk import PRIMITIVES, Node
from carelink.errors import ExportError

Json = dict[str, Any]

_DATE = re.compile(r"([0-9]{4})(-([0-9]{2})(-([0-9]{2}))?)?")
_DATETIME = re.compile(
    r"([0-9]{4})(-([0-9]{2})(-([0-9]{2})"
    r"(T([0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?)(Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)
_REF = re.compile(
    r"^(?P<prefix>((http|https)://([A-Za-z0-9\\/.:%$])*)?[A-Z][A-Za-z]+/)"
    r"(?P<id>[A-Za-z0-9\-.]{1,64})(?P<suffix>/_history/[A-Za-z0-9\-.]{1,64})?$"
)
NUMERIC = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
QUANTITIES = frozenset(
    {"Age", "Count", "Duration", "Distance", "Money", "MoneyQuantity", "Quantity", "SimpleQuantity"}
)


class Misused(ExportError):
    """The engine was called wrongly; never skipped."""


class Methods:
    """The methods of ``Anonymiser``, one per rule method: ``_<method>(rule, node,
    ops, root, person)`` changes the node in place and adds the security label it
    earns to ``ops`` (``substitute`` is ``_substitute_node``: it keeps what earlier
    rules processed inside the node). They read the engine's settings below, which
    ``Anonymiser.__init__`` sets from the configuration's ``parameters``."""

    config: Config
    keys: ProjectKeys | None
    rng: random.Random
    today: Callable[[], date]
    folder: str
    date_key: str
    hash_key: bytes
    encrypt_key: bytes
    scope: str
    range: int
    minimum: int
    jitter: int
    partial_dates: bool
    partial_ages: bool
    partial_zip: bool
    restricted_zip: list[str]
    _paths: Paths
    _file: str  #: the name of the file the resource is written to (``apply(file=)``)
    _event: str  #: the id of the resource being processed

    def _keep(self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None) -> None:
        return None

    def _redact(self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None) -> None:
        if n.value is None or isinstance(n.value, dict | list):
            return
        value = n.value
        if n.type in ("date", "dateTime", "instant"):
            year = _year(value)
            if self.partial_dates and year is not None and not self._over_89(value):
                set_node(n, year)
            else:
                set_node(n, None)
            ops.add("REDACT")
            return
        if n.type == "decimal" and n.parent_type == "Age":
            if not self.partial_ages or int(value) > 89:
                set_node(n, None)
            ops.add("REDACT")
            return
        if n.element.lower() == "postalcode":
            text = str(value)
            if self.partial_zip:
                if any(text.startswith(z) for z in self.restricted_zip):
                    set_node(n, re.sub(r"[0-9]", "0", text))
                elif len(text) >= 3:
                    set_node(n, text[:3] + re.sub(r"[0-9]", "0", text[3:]))
                ops.add("ABSTRACT")
            else:
                set_node(n, None)
                ops.add("REDACT")
            return
        set_node(n, None)
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
                raise Misused("a per-person date shift needs the person")
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
        set_node(n, shifted)
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
        if n.element == "reference" and n.parent_type == "Reference":
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
        set_node(n, new)
        ops.add("CRYPTOHASH")

    def _encrypt(self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None) -> None:
        if n.value is None or isinstance(n.value, dict | list) or n.value == "":
            return
        key = self.keys.encrypt_key if self.keys is not None else self.encrypt_key
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        data = padder.update(str(n.value).encode()) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        set_node(n, base64.b64encode(iv + enc.update(data) + enc.finalize()).decode())
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
            set_node(n, None if replacement is None else copy.deepcopy(replacement))
        else:
            merge(n.value, replacement if isinstance(replacement, dict) else {}, visited)
        for d in subtree(
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
        set_node(target, int(new) if round_to == 0 else float(new))
        ops.add("PERTURB")

    def _generalize(
        self, rule: Rule, n: Node, ops: set[str], root: Json, person: str | None
    ) -> None:
        if isinstance(n.value, dict | list):
            raise ExportError(f"generalize applies to primitive values, not {n.type}")
        if n.value is None:
            return
        evaluate = self._paths.evaluate
        for condition, result in rule.options["cases"].items():
            got = evaluate(condition.replace("$this", "%this"), {}, {"this": n.value})
            if got and got[0] is True:
                value = evaluate(str(result).replace("$this", "%this"), {}, {"this": n.value})
                set_node(n, _scalar(value[0]) if value else None)
                break
        else:
            if rule.options.get("otherValues", "redact") == "redact":
                set_node(n, None)
        ops.add("GENERALIZE")


def _scalar(v: Any) -> Any:
    if isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _year(value: str) -> str | None:
    m = _DATE.match(value)
    return m.group(1) if m else None
