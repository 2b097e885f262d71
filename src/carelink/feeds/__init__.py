"""Feeds: what source systems push to the gateway (HL7 v2 over MLLP), acknowledged
only once stored (``listener``), read and judged message by message (``intake``)."""

from carelink.feeds.intake import ACCEPTED, Verdict, read
from carelink.feeds.listener import FeedListener, listen_all

__all__ = ["ACCEPTED", "FeedListener", "Verdict", "listen_all", "read"]
