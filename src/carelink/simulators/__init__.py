"""The mock source systems and the synthetic population they serve.

Each simulator is a separate ASGI app speaking its own native format:
acute (FHIR R4 REST), gp (GP Connect structured record), community (HL7 v2
over HTTP) and social-care (a council's own JSON API).
"""
