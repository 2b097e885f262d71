"""``create_app``: what it refuses to start with."""

from __future__ import annotations

import pytest

from carelink.app import create_app
from carelink.errors import ConfigError
from carelink.settings import Settings


@pytest.mark.parametrize("name", ["acute-2", "gp-leeds"])
def test_a_source_the_sharing_policy_does_not_name_is_refused_at_start(tmp_path, name):
    """Consent decides by each source's custodian, from the policy's organisations: a
    source missing there has none, so a patient's objection to its organisation's data
    could never apply. The gateway does not start with one (naming source and file)."""
    settings = Settings.from_env(
        {
            "CARELINK_DATABASE_URL": str(tmp_path / "x.db"),
            "CARELINK_AUTH": "development",
            "CARELINK_SOURCES": f"acute=http://127.0.0.1:9,{name}=http://127.0.0.1:9",
        }
    )
    with pytest.raises(ConfigError) as refused:
        create_app(settings)
    assert repr(name) in str(refused.value)
    assert settings.consent_policy in str(refused.value)


def test_the_shipped_policy_names_every_kind_of_source(tmp_path):
    settings = Settings.from_env(
        {
            "CARELINK_DATABASE_URL": str(tmp_path / "x.db"),
            "CARELINK_AUTH": "development",
            "CARELINK_SOURCES": ",".join(
                f"{n}=http://127.0.0.1:9" for n in ("acute", "gp", "community", "social-care")
            ),
        }
    )
    assert create_app(settings).state.policy is not None


def test_app_state_reads_the_value_last_set_however_it_was_set_or_deleted(tmp_path):
    """The gateway's ``app.state`` keeps each value as a plain attribute too (``Wiring``:
    read without Starlette's failed lookup first); whichever way a value is set, replaced
    or deleted (attribute or item), every way of reading it agrees, and a value never
    set, or deleted, is an ``AttributeError`` as with Starlette's ``State``."""
    settings = Settings.from_env(
        {
            "CARELINK_DATABASE_URL": str(tmp_path / "x.db"),
            "CARELINK_AUTH": "development",
            "CARELINK_SOURCES": "acute=http://127.0.0.1:9",
        }
    )
    state = create_app(settings).state
    assert state.settings is state["settings"]
    state.guard = "first"
    state["guard"] = "second"  # replaced through the item
    assert (state.guard, state["guard"], getattr(state, "guard", None)) == ("second",) * 3
    state.guard = "third"
    assert (state.guard, state["guard"]) == ("third", "third")
    del state["guard"]  # deleted through the item
    assert getattr(state, "guard", "gone") == "gone"
    state["audit"] = "item"
    assert state.audit == "item"
    del state.audit
    with pytest.raises(AttributeError):
        _ = state.audit
    with pytest.raises(KeyError):
        _ = state["audit"]
    assert getattr(state, "never-set", None) is None
