"""Outside data held by two sources: the GP's own copy of a person another source holds.

Real systems record the same person under their own ids, with drift. The
integration tests that split the vendored Synthea export between the acute
and GP simulators without NHS numbers (so every link is demographic) make
the GP's copy here.
"""

from __future__ import annotations

from typing import Any

#: the GP's own patient identifier system
GP_SYSTEM = "https://gp.example/Id/patient"
#: the elements through which a Synthea resource names its patient
LINKS = ("subject", "patient", "beneficiary", "individual")


def gp_copy(n: int, patient: dict[str, Any]) -> dict[str, Any]:
    """The GP's own record of the same person: own id, own identifier, some drift."""
    gp = {k: v for k, v in patient.items() if k not in ("identifier", "text", "meta")}
    gp["id"] = f"G{n}"
    gp["identifier"] = [{"system": GP_SYSTEM, "value": f"G{n}"}]
    name = dict(gp["name"][0])
    if n % 3 == 0:
        name["given"] = [name["given"][0][:4]]  # "Sumiko254" recorded as "Sumi"
    gp["name"] = [name]
    if n % 4 == 1:
        gp.pop("address")
    if n % 2 == 0:
        gp["telecom"] = [{"system": "phone", "value": f"07700 900{n:03d}", "use": "mobile"}]
    return gp


def patient_of(resource: dict[str, Any]) -> str | None:
    """The local id of the Patient a resource names through ``LINKS`` (the first), or None."""
    for key in LINKS:
        link = resource.get(key)
        if isinstance(link, dict) and isinstance(link.get("reference"), str):
            return str(link["reference"].rsplit("/", 1)[-1].removeprefix("urn:uuid:"))
    return None
