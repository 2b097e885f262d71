"""Patient-index linkage quality on a generated population with injected errors.

One command (about a minute for 20,000 people on one core):

    PYTHONPATH=src .venv/bin/python benchmarks/linkage_bench.py [--people 20000] [--seed 4]

The synthetic population (``carelink.simulators.population``) gives the
truth. The GP holds everyone, mostly with NHS numbers; the hospital holds
its share with demographics as a second system records them: NHS number
missing on one side, typos in names, day and month transposed, a changed
surname, a move (postcode in the same sector or elsewhere), no postcode, a
nickname, a bad NHS check digit, and some duplicate registrations at the
hospital. Some GP records lack the NHS number too. ``link_people`` (the index build without I/O)
runs on it and the result is scored against the truth:

- false merges: pairs of records of different people put in one person;
- missed links: pairs of records of one person left in different people, and
  how many of those the review list offers (pairs with a duplicate
  registration are counted apart: by design it goes to review, not into the
  person);
- review list: entries, and how many are truly one person;
- candidates per record (mean, max): how many records blocking made it meet.

Prints a table and writes JSON with ``--out``. Pure computation: no network,
no files except ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from carelink.federation.index import link_people
from carelink.simulators import population as pop
from carelink.simulators.names import FAMILY, NICKNAMES
from carelink.sources.base import SourcePerson

KEY = b"bench-key-" * 4
ERRORS = (
    "moved-house",
    "family-typo",
    "given-typo",
    "day-month-swapped",
    "surname-changed",
    "no-postcode",
    "nickname",
)


def _typo(rng: random.Random, text: str) -> str:
    if len(text) < 3:
        return text + "e"
    i = rng.randrange(1, len(text) - 1)
    kind = rng.choice(("delete", "transpose", "substitute", "insert"))
    if kind == "delete":
        return text[:i] + text[i + 1 :]
    if kind == "transpose":
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    letter = rng.choice("aeinorst")
    if kind == "substitute":
        return text[:i] + letter + text[i + 1 :]
    return text[:i] + letter + text[i:]


def _record(source: str, local: str, nhs: str | None, d: dict[str, Any]) -> SourcePerson:
    return SourcePerson(
        source,
        local,
        nhs,
        d["given"],
        d["family"],
        d["birth"],
        d["gender"],
        d["postcode"],
        None,
        {
            "resourceType": "Patient",
            "id": f"{source}-{local}",
            "name": [{"family": d["family"], "given": [d["given"]]}],
        },
    )


def _bad(nhs: str) -> str:
    return nhs[:-1] + str((int(nhs[-1]) + 3) % 10)


def generate(
    people: int, seed: int, error_rate: float, no_nhs_rate: float
) -> tuple[dict[str, list[SourcePerson]], dict[tuple[str, str], int], Counter[str]]:
    """Records by source, the true person of each record, and the errors injected."""
    rng = random.Random(seed)
    by: dict[str, list[SourcePerson]] = {"gp": [], "acute": []}
    truth: dict[tuple[str, str], int] = {}
    injected: Counter[str] = Counter()
    for p in pop.people(seed, people):
        clean = {
            "given": p.given,
            "family": p.family,
            "birth": p.birth_date.isoformat(),
            "gender": p.gender,
            "postcode": p.postcode,
        }
        gp_nhs = None if rng.random() < no_nhs_rate / 4 else p.nhs_number
        by["gp"].append(_record("gp", f"G{p.index}", gp_nhs, clean))
        truth[("gp", f"G{p.index}")] = p.index
        if "acute" not in p.sources:
            continue
        d = dict(clean)
        roll = rng.random()
        nhs: str | None = None if roll < no_nhs_rate else p.nhs_number
        if nhs and rng.random() < 0.01:
            nhs = _bad(nhs)
            injected["bad-check-digit"] += 1
        for error in ERRORS:
            if rng.random() >= error_rate:
                continue
            if error == "day-month-swapped" and int(d["birth"][8:]) > 12:
                continue
            injected[error] += 1
            if error == "family-typo":
                d["family"] = _typo(rng, d["family"])
            elif error == "given-typo":
                d["given"] = _typo(rng, d["given"])
            elif error == "day-month-swapped":
                b = d["birth"]
                d["birth"] = f"{b[:4]}-{b[8:]}-{b[5:7]}"
            elif error == "surname-changed":
                d["family"] = rng.choice(FAMILY)
            elif error == "moved-house":
                pc = str(d["postcode"])
                d["postcode"] = (
                    pc[:-2] + rng.choice("ABDEFGHJ") + rng.choice("LNPQRSTU")
                    if rng.random() < 0.5
                    else f"LS{rng.randint(1, 29)} {rng.randint(1, 9)}{rng.choice('ABDE')}X"
                )
            elif error == "no-postcode":
                d["postcode"] = None
            else:
                d["given"] = NICKNAMES.get(d["given"], d["given"][:3])
        by["acute"].append(_record("acute", f"A{p.index}", nhs, d))
        truth[("acute", f"A{p.index}")] = p.index
        if rng.random() < 0.005:
            injected["duplicate-registration"] += 1
            dup = dict(d, given=_typo(rng, d["given"]))
            by["acute"].append(_record("acute", f"A{p.index}-dup", None, dup))
            truth[("acute", f"A{p.index}-dup")] = p.index
    return by, truth, injected


def _links(
    members: dict[str, list[tuple[str, str]]],
) -> set[frozenset[tuple[str, str]]]:
    return {frozenset(pair) for recs in members.values() for pair in combinations(sorted(recs), 2)}


def _candidates(by: dict[str, list[SourcePerson]]) -> list[int]:
    """How many records each record is compared with (``[]`` before ``linkage`` existed)."""
    try:
        from carelink.federation.linkage import link
    except ImportError:  # the linker before this benchmark, run for comparison
        return []
    return list(link(by).candidates.values())


def measured_m_u(
    by: dict[str, list[SourcePerson]], truth: dict[tuple[str, str], int], seed: int
) -> dict[str, dict[str, list[float]]]:
    """Per field and level: [m fixed, m measured, u fixed, u measured].

    m is measured on every pair of records of one person, u on 200,000 random
    pairs of records of different people (as splink estimates u), so both are
    what a labelled estimate would give on this population.
    """
    from carelink.federation.linkage import demographics
    from carelink.federation.matching import _LEVELS, score

    records = sorted((p for ps in by.values() for p in ps), key=lambda p: (p.source, p.local_id))
    owner = [truth[(p.source, p.local_id)] for p in records]
    same: dict[int, list[int]] = defaultdict(list)
    for i, who in enumerate(owner):
        same[who].append(i)
    rng = random.Random(seed)
    match_pairs = [pair for idx in same.values() for pair in combinations(idx, 2)]
    random_pairs = [tuple(rng.sample(range(len(records)), 2)) for _ in range(200_000)]
    counts: dict[bool, Counter[tuple[str, str]]] = {True: Counter(), False: Counter()}
    totals: Counter[tuple[bool, str]] = Counter()
    for is_match, pairs in ((True, match_pairs), (False, random_pairs)):
        for i, j in pairs:
            if (owner[i] == owner[j]) != is_match:
                continue
            for f in score(demographics(records[i]), demographics(records[j])).fields:
                counts[is_match][(f.field, f.level)] += 1
                totals[(is_match, f.field)] += 1
    out: dict[str, dict[str, list[float]]] = {}
    for field, levels in _LEVELS.items():
        name = "names" if field == "swapped" else field
        for level, (m, u) in levels.items():
            got_m = counts[True][(name, level)] / max(totals[(True, name)], 1)
            got_u = counts[False][(name, level)] / max(totals[(False, name)], 1)
            out.setdefault(field, {})[level] = [m, round(got_m, 4), u, round(got_u, 6)]
    return out


def evaluate(
    by: dict[str, list[SourcePerson]], truth: dict[tuple[str, str], int]
) -> dict[str, Any]:
    """Link, and compare the people found with the true people."""
    started = time.process_time()
    persons, links, reviews, report = link_people(by, KEY)
    cpu = time.process_time() - started
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for lk in links:
        found[lk.person_id].append((lk.source, lk.local_id))
    true: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for rec, who in truth.items():
        true[who].append(rec)
    found_pairs = _links(found)
    true_pairs = _links({str(k): v for k, v in true.items()})
    false_merges = found_pairs - true_pairs
    missed = true_pairs - found_pairs
    # a second registration at one source is kept apart by design, and so are its pairs
    duplicate = {pair for pair in missed if any(local.endswith("-dup") for _, local in pair)}
    owner = {(lk.source, lk.local_id): lk.person_id for lk in links}
    reviewed = {frozenset({owner[(r.source, r.local_id)], r.candidate_id}) for r in reviews}
    missed_other = missed - duplicate
    on_review = sum(1 for a, b in missed_other if frozenset({owner[a], owner[b]}) in reviewed)
    review_true = sum(
        1
        for r in reviews
        if any(truth[rec] == truth[(r.source, r.local_id)] for rec in found[r.candidate_id])
    )
    cands = _candidates(by)
    return {
        "records": sum(len(v) for v in by.values()),
        "true_people": len(true),
        "persons": len(persons),
        "false_merge_pairs": len(false_merges),
        "true_pairs": len(true_pairs),
        "missed_links": len(missed_other),
        "missed_links_on_review_list": on_review,
        "pairs_with_a_duplicate_registration_kept_apart": len(duplicate),
        "review_entries": len(reviews),
        "review_entries_truly_one_person": review_true,
        "invalid_nhs_numbers_reported": report.invalid_nhs_numbers,
        "by_nhs_number": report.by_nhs_number,
        "by_demographics": report.by_demographics,
        "unmatched": report.unmatched,
        "candidates_mean": round(statistics.fmean(cands), 2) if cands else None,
        "candidates_max": max(cands) if cands else None,
        "link_cpu_seconds": round(cpu, 2),
        "orphans": sum(1 for rec in truth if rec not in owner),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--error-rate", type=float, default=0.08, help="per error, per record")
    parser.add_argument("--no-nhs-rate", type=float, default=0.4, help="hospital records")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--measure-m-u", action="store_true", help="also measure m and u against the truth"
    )
    args = parser.parse_args()
    by, truth, injected = generate(args.people, args.seed, args.error_rate, args.no_nhs_rate)
    result: dict[str, Any] = {"injected": dict(sorted(injected.items())), **evaluate(by, truth)}
    for key, value in result.items():
        print(f"{key:36} {value}")
    if args.measure_m_u:
        result["m_u_fixed_vs_measured"] = measured_m_u(by, truth, args.seed)
        print("field level: m fixed / measured, u fixed / measured")
        for field, levels in result["m_u_fixed_vs_measured"].items():
            for level, (m, gm, u, gu) in levels.items():
                print(f"  {field:10} {level:9} m {m:.3f} / {gm:.3f}   u {u:.6f} / {gu:.6f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
