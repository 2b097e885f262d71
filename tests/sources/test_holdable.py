"""A source's record keeps a name exactly when the index can hold it and its fold.

Invariant: ``SourcePerson`` keeps ``family`` and ``given`` unchanged when both the name
and its case-and-accent fold fit the name columns, and leaves the name out otherwise,
whatever the characters (ASCII is decided without folding; this checks the shortcut
against the fold itself, for any text).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from carelink.fhir.search import fold
from carelink.sources.base import SourcePerson
from carelink.storage import NAME_LENGTH

#: names near the limit: ASCII runs, and characters whose fold is longer than they are
NAMES = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=127), min_size=190, max_size=210),
    st.text(alphabet=st.sampled_from("aßﬀİǄ\ufdfaé\u0301"), max_size=210),
    st.text(max_size=210),
)


@given(NAMES, NAMES)
@example("\ufdfa" * 12, "Ann")  # 12 characters folding to 216
@example("A" * 201, "ß" * 101)  # too long as sent; folds to 202
@example("Smi\x00th", "Ann")  # a NUL: no PostgreSQL text holds one
def test_a_name_is_kept_exactly_when_it_and_its_fold_fit(family: str, given_name: str) -> None:
    p = SourcePerson("gp", "1", None, given_name, family, None, None, None, None, {})
    dropped = set()
    for name, held, sent in (("family", p.family, family), ("given", p.given, given_name)):
        fits = len(sent) <= NAME_LENGTH and len(fold(sent)) <= NAME_LENGTH and "\x00" not in sent
        assert held == (sent if fits else "")
        if not fits:
            dropped.add(name)
    assert sorted(p.left_out) == sorted(dropped)  # what a build counts
