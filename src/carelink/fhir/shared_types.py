"""Resource types outside every patient's compartment that patient records refer to
(Practitioner, Organization ...): not patient data. The simulators serve them by id and
identifier; the gateway reads them from their source and returns them in
``$everything`` when a record refers to them."""

SHARED_TYPES = frozenset(
    ("Practitioner", "PractitionerRole", "Organization", "Location", "Medication")
)
