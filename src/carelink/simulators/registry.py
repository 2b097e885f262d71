"""Build a simulator app by name."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from carelink.simulators.base import Behaviour

SIMULATORS = {
    "acute": "carelink.simulators.acute",
    "gp": "carelink.simulators.gp",
    "community": "carelink.simulators.community",
    "social-care": "carelink.simulators.social_care",
}


def create_simulator(
    name: str, *, seed: int, size: int, behaviour: Behaviour, data: Path | None = None
) -> Any:
    """The ASGI app of simulator ``name``; ``data`` serves FHIR files instead (acute, gp)."""
    if name not in SIMULATORS:
        raise ValueError(f"unknown simulator {name!r}; choose one of {', '.join(SIMULATORS)}")
    module = import_module(SIMULATORS[name])
    if data is not None:
        if not hasattr(module, "create_app_from_files"):
            raise ValueError(f"simulator {name!r} cannot serve --data (only acute and gp can)")
        return module.create_app_from_files(data, behaviour=behaviour)
    return module.create_app(seed=seed, size=size, behaviour=behaviour)
