"""The patient index at ICS scale: build, lookups, search, linkage quality, changes.

One command per population size (the simulators take a while to start at the
full range; the build is what is timed):

    PYTHONPATH=src .venv/bin/python benchmarks/index_bench.py --people 10000
    PYTHONPATH=src .venv/bin/python benchmarks/index_bench.py --people 100000 \\
        --database postgresql://postgres@127.0.0.1:5432/i15_bench

It starts the four simulators as processes (0 ms latency, ports from
``--port``), then, in this process:

- builds the index (``federation.build.build_index``) into a fresh SQLite file
  (or the PostgreSQL database given, whose index tables are replaced), timing
  it and taking the process's peak resident memory right after;
- error injection: ``--errors`` of the hospital's records lose their NHS number
  and get one or two errors a second system makes (typos in either name, day
  and month transposed, a changed surname, a move, a nickname); each such
  record's true person is its dropped NHS number, so precision (linked to the
  right person / linked at all) and recall (linked to the right person / all
  of them) are measured;
- candidates per record without an NHS number (mean, max) from the build;
- NHS number lookup p50 and p99 (``IndexStore.person_by_nhs``, 20,000 numbers
  drawn from the whole index, one client), in microseconds too;
- demographic search p99 with 32 concurrent clients (threads), each asking
  ``IndexStore.find`` for surname + birth date of random people;
- demographic search over HTTP, as clients see it: the gateway (``carelink
  serve``, bearer tokens verified, consent and the audit trail on) started on
  the built index, driven by wrk with 32 connections for ``--http-seconds``
  per search form (``family`` + ``birthdate``; with ``given``; with ``gender``;
  with ``address-postalcode``; ``family:exact``; a year's range of birth
  dates), p50/p95/p99 of each; with ``--warmup-seconds`` each form's measured
  pass follows an uncounted pass of that long (the gateway's first seconds after
  its start: pages read into the cache, memos filled, the first collections);
  each pass names the machine's speed just before and after it (``machine_ns``:
  the best of five ``timeit`` runs of ``sum(range(100))``, the figure every stop
  records), since this shared machine's speed moves by half from one hour to the
  next; with ``--ceiling`` each form's pass is preceded by a bare FastAPI app
  (``benchmarks/bare.py``, two workers like the gateway) answering the same paths
  with one of that form's responses for as long, its req/s the ceiling of the moment;
- ``apply_changes`` of ``--changes`` people whose demographics changed (and
  half of them new registrations), timed.

Prints one table row and writes JSON with ``--out``. Traffic stays on
127.0.0.1; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import sqlalchemy as sa
from federation_bench import get, mint, process, wrk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# a gateway's keys, checkpoints and exports in the run's folder, as the tests place them
from tests.support.procs import own_files

from carelink.assembly import ADAPTERS
from carelink.federation.build import build_index, writer_processes
from carelink.federation.changes import Upsert, apply_changes, fields_demographics, record_of
from carelink.federation.linkage import valid_nhs
from carelink.federation.matching import BLOCK_CAP, blocking_keys, key_value, lookup_values
from carelink.fhir.search import fold
from carelink.simulators.names import FAMILY, NICKNAMES
from carelink.simulators.population import SOURCES
from carelink.sources.base import Source, SourcePerson
from carelink.storage import Database, IndexStore, NameTest, PersonQuery, PersonRow
from carelink.storage.index_rows import FieldsRow
from carelink.storage.person_query import DateTest
from carelink.storage.tables import record_fields

DAY = timedelta(days=1)
ERRORS = ("family-typo", "given-typo", "day-month", "surname", "moved", "nickname")


def _typo(rng: random.Random, text: str) -> str:
    if len(text) < 3:
        return text + "e"
    i = rng.randrange(1, len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def perturb(p: SourcePerson, rng: random.Random) -> SourcePerson:
    """The record without its NHS number and with one or two demographic errors."""
    d = {"given": p.given, "family": p.family, "birth_date": p.birth_date, "postcode": p.postcode}
    for error in rng.sample(ERRORS, rng.choice((1, 1, 2))):
        if error == "family-typo":
            d["family"] = _typo(rng, p.family)
        elif error == "given-typo":
            d["given"] = _typo(rng, p.given)
        elif error == "day-month" and p.birth_date and int(p.birth_date[8:]) <= 12:
            b = p.birth_date
            d["birth_date"] = f"{b[:4]}-{b[8:]}-{b[5:7]}"
        elif error == "surname":
            d["family"] = rng.choice(FAMILY)
        elif error == "moved" and p.postcode:
            d["postcode"] = p.postcode[:-2] + rng.choice("ABDEFGHJ") + rng.choice("LNPQRSTU")
        elif error == "nickname":
            first = p.given.split(" ")[0]
            d["given"] = NICKNAMES.get(first, first[:3])
    patient = {
        **p.patient,
        "identifier": [i for i in p.patient.get("identifier", []) if "nhs-number" not in str(i)],
        "name": [{"family": d["family"], "given": [d["given"]]}],
        "birthDate": d["birth_date"],
        "address": [{"postalCode": d["postcode"]}],
    }
    return SourcePerson(
        p.source,
        p.local_id,
        None,
        str(d["given"]),
        str(d["family"]),
        d["birth_date"],
        p.gender,
        d["postcode"],
        None,
        patient,
    )


class Perturbed:
    """A source whose records, a share of them, come with errors; remembers the truth."""

    def __init__(self, inner: Source, rate: float, seed: int) -> None:
        self.inner, self.name, self.rate = inner, inner.name, rate
        self.rng = random.Random(seed)
        self.truth: dict[str, str] = {}  # local id -> the NHS number it lost

    async def fetch_record(self, *args: Any, **kwargs: Any) -> Any:
        return await self.inner.fetch_record(*args, **kwargs)

    async def people(self) -> AsyncIterator[SourcePerson]:
        async for p in self.inner.people():
            nhs = valid_nhs(p)
            if nhs and self.rng.random() < self.rate:
                self.truth[p.local_id] = nhs
                yield perturb(p, self.rng)
            else:
                yield p


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_admin/health", timeout=2):  # noqa: S310
            return True
    except OSError:
        return False


def start(
    size: int, port: int, running: bool = False
) -> tuple[dict[str, str], list[subprocess.Popen[bytes]]]:
    urls, procs = {}, []
    for n, name in enumerate(SOURCES):
        urls[name] = f"http://127.0.0.1:{port + n}"
        if running and _healthy(urls[name]):
            continue  # started by hand with this --size (it takes minutes at the full range)
        procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "carelink", "simulate", name),
                    *("--port", str(port + n), "--size", str(size)),
                    *("--seed", "42", "--latency-ms", "0"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    deadline = time.monotonic() + 3600
    for url in urls.values():
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_admin/health", timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    return urls, procs


#: NHS-number lookups timed (one client), over numbers drawn from the whole index
LOOKUPS = 20_000


def p99(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=100)[98] * 1000, 2)


def eq_day(born: str) -> tuple[tuple[DateTest, ...]]:
    """``birthdate=born`` as ``patient_search`` reads it."""
    d = date.fromisoformat(born)
    return ((DateTest("starts<=", str(d - DAY), True), DateTest("ends>=", str(d + DAY), True)),)


def searches(store: IndexStore, people: list[tuple[str, str]], clients: int, each: int) -> float:
    times: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        mine = []
        for _ in range(each):
            family, born = rng.choice(people)
            q = PersonQuery(
                family=((NameTest(fold(family)),),),
                birth_date=(eq_day(born),),
            )
            t = time.perf_counter()
            store.find(q, limit=50)
            mine.append(time.perf_counter() - t)
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return p99(times)


async def build(
    urls: dict[str, str], store: IndexStore, rate: float, writers: int
) -> tuple[Any, Perturbed]:
    sessions = [aiohttp.ClientSession() for _ in urls]
    try:
        sources: list[Source] = [
            ADAPTERS[name](s, url, name)
            for s, (name, url) in zip(sessions, urls.items(), strict=True)
        ]
        perturbed = Perturbed(sources[SOURCES.index("acute")], rate, 7)
        sources[SOURCES.index("acute")] = perturbed
        return await build_index(sources, store, writers=writers), perturbed
    finally:
        for s in sessions:
            await s.close()


def quality(store: IndexStore, truth: dict[str, str]) -> tuple[float, float, list[tuple[str, str]]]:
    """(precision, recall, the perturbed records not linked to their true person as
    (local id, the NHS number they lost))."""
    linked = right = 0
    missed: list[tuple[str, str]] = []
    for local, nhs in truth.items():
        row = store.link("acute", local)
        person = store.person(row.person_id) if row else None
        ok = person is not None and person.nhs_number == nhs
        if person is not None and person.nhs_number is not None:
            linked += 1
            right += ok
        if not ok:
            missed.append((local, nhs))
    precision = right / linked if linked else 1.0
    return round(precision, 4), round(right / len(truth), 4) if truth else 1.0, missed


def blocking_losses(store: IndexStore, missed: list[tuple[str, str]]) -> dict[str, int]:
    """Of the perturbed records not linked to their true person, how many blocking never
    let linkage compare with any record of that person: no blocking key in common, or
    only keys whose block holds more than ``BLOCK_CAP`` records (which the build skips).
    The rest were compared and scored too low to link (``below_threshold``).

    Each block's size is counted exactly: every record holding a key holds the lookup
    value it names (``key_value``), so the records sharing that value, read through the
    index, hold every member of the block."""
    numbers = sorted({nhs for _, nhs in missed})
    ours: dict[str, FieldsRow] = {}
    partners: dict[str, list[FieldsRow]] = defaultdict(list)
    values: set[str] = set()
    c = record_fields.c
    with store.db.engine.connect() as conn:
        for i in range(0, len(missed), 500):
            some = [local for local, _ in missed[i : i + 500]]
            test = (c.source == "acute") & c.local_id.in_(some)
            for r in conn.execute(sa.select(record_fields).where(test)):
                ours[r.local_id] = FieldsRow(*r)
        for i in range(0, len(numbers), 500):
            test = c.nhs.in_(numbers[i : i + 500])
            for r in conn.execute(sa.select(record_fields).where(test)):
                partners[r.nhs].append(FieldsRow(*r))
    keys: dict[tuple[str, str], set[str]] = {}
    for f in [*ours.values(), *(g for fs in partners.values() for g in fs)]:
        d = fields_demographics(f)
        keys[(f.source, f.local_id)] = set(blocking_keys(d))
        held = lookup_values(d)
        values.update(key_value(k, held) for k in keys[(f.source, f.local_id)])
    wanted = set().union(*keys.values()) if keys else set()
    size: Counter[str] = Counter()
    for f in store.near_any(values):
        size.update(k for k in blocking_keys(fields_demographics(f)) if k in wanted)
    lost = no_key = 0
    for local, nhs in missed:
        mine = keys.get(("acute", local), set())
        shared = {k for g in partners[nhs] for k in keys[(g.source, g.local_id)] & mine}
        if not shared:
            no_key += 1
        if not any(size[k] <= BLOCK_CAP for k in shared):
            lost += 1
    return {
        "missed": len(missed),
        "never_compared": lost,
        "no_key_in_common": no_key,
        "only_capped_blocks": lost - no_key,
        "below_threshold": len(missed) - lost,
    }


HTTP_FORMS = ("family+birthdate", "+given", "+gender", "+postcode", "family:exact", "year range")
#: the NHS-number lookup as clients send it: measured only when named in ``--forms``
LOOKUP_FORM = "nhs-number"


def search_paths(people: list[PersonRow], form: str, n: int, seed: int) -> list[str]:
    """``n`` Patient searches of one form, each for a random person of ``people``."""
    rng = random.Random(seed)
    if form == LOOKUP_FORM:
        people = [p for p in people if p.nhs_number]
    out = []
    for p in rng.sample(people, min(n, len(people))):
        born = str(p.birth_date)
        family = quote(p.family)
        base = f"/fhir/Patient?family={family}&birthdate={born}"
        if form == LOOKUP_FORM:
            base = f"/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{p.nhs_number}"
        elif form == "+given":
            base += f"&given={quote(p.given.split(' ')[0])}"
        elif form == "+gender":
            base += f"&gender={p.gender or 'unknown'}"
        elif form == "+postcode":
            base += f"&address-postalcode={quote(str(p.postcode))}"
        elif form == "family:exact":
            base = f"/fhir/Patient?family:exact={family}&birthdate={born}"
        elif form == "year range":
            year = born[:4]
            base = (
                f"/fhir/Patient?family={family}&given={quote(p.given[:1])}"
                f"&birthdate=ge{year}-01-01&birthdate=le{year}-12-31"
            )
        out.append(base)
    return out


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds used) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> set[int]:
    """``root`` and the processes descended from it, now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = _stat(int(entry.name))[0]
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    below = {root}
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in below} - below
        below |= new
        grew = bool(new)
    return below


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by the processes descended from ``root`` (not itself)."""
    total = 0.0
    for pid in _tree(root) - {root}:
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
            total += _stat(pid)[1]
    return total


def split(parent: int, port: int) -> list[int]:
    """The established connections to ``port`` each child of ``parent`` (a worker of
    ``carelink serve``) holds, largest first."""
    ours = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                ours.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in _tree(parent) - {parent}:
        held = 0
        with contextlib.suppress(OSError):  # gone meanwhile
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    held += os.readlink(fd) in ours
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


def note_split(into: list[list[int]], parent: int, port: int) -> None:
    into.append(split(parent, port))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class TreeMemory:
    """The largest resident memory of this process and its descendants together (the
    builder and its writer processes at once), sampled every ``every`` seconds on a
    thread while in the ``with`` block; in MB. Processes already running when it starts
    (the simulators, when this process started them) and theirs are not counted."""

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.peak_kb = 0
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = 0
            for pid in _tree(me) - self._before:
                with contextlib.suppress(OSError, ValueError):  # gone meanwhile
                    total += _rss_kb(pid)
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self.every)

    def __enter__(self) -> TreeMemory:
        me = os.getpid()
        self._before = {p for child in _tree(me) - {me} for p in _tree(child)}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> int:
        return round(self.peak_kb / 1024)


def machine_ns() -> float:
    """This machine's speed of the moment: nanoseconds a ``sum(range(100))``, the best
    of five timeit runs (about a second), as each stop's notes record it."""
    return round(min(timeit.repeat("sum(range(100))", number=100_000, repeat=5)) * 1e4, 1)


def cpu_times() -> list[int]:
    """The machine's CPU time by kind (``/proc/stat``'s first line, in ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def stolen(before: list[int], after: list[int]) -> float:
    """The share of the machine's CPU time between two ``cpu_times`` that its host took
    for others (steal): the virtual machine's cores were not its own for that long."""
    used = [b - a for a, b in zip(before, after, strict=False)]
    return round(100 * used[7] / sum(used), 1) if sum(used) else 0.0


def disk_kb() -> tuple[int, int]:
    """KB the machine has read from and written to its disks since it started
    (``/proc/vmstat``'s pgpgin and pgpgout)."""
    counts = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    return int(counts["pgpgin"]), int(counts["pgpgout"])


def bare_fastapi(body: bytes, paths: list[str], port: int, seconds: int, tmp: Path) -> float:
    """req/s of a bare FastAPI app (two workers) answering ``paths`` with ``body``."""
    (tmp / "bare.json").write_bytes(body)
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.bare:fastapi_app", "--port", str(port)]
    cmd += ["--workers", "2", "--loop", "uvloop", "--http", "httptools"]
    cmd += ["--log-level", "warning", "--no-access-log"]
    env = {**os.environ, "BARE_BODY": str(tmp / "bare.json"), "PYTHONPATH": str(root)}
    with process(cmd, f"http://127.0.0.1:{port}/", env):
        time.sleep(1)
        return float(wrk(f"http://127.0.0.1:{port}", paths, seconds, 32, tmp)["rps"])


def http_searches(
    db_url: str,
    urls: dict[str, str],
    people: list[PersonRow],
    port: int,
    seconds: int,
    forms: list[str],
    warmup: int = 0,
    ceiling: bool = False,
) -> dict[str, Any]:
    """p50/p95/p99 of each search form over HTTP against the gateway on the built index
    (each form's pass after an uncounted one of ``warmup`` seconds, when not 0)."""
    tmp = Path(tempfile.mkdtemp(prefix="index-bench-http-"))
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CARELINK_DATABASE_URL": db_url,
        "CARELINK_SOURCES": ",".join(f"{k}={v}" for k, v in urls.items()),
        "CARELINK_AUTH": "jwt",
        "CARELINK_AUDIENCE": f"{base}/fhir",
        **own_files(tmp),
        "CARELINK_LOG_LEVEL": "warning",
    }
    carelink = [sys.executable, "-m", "carelink"]
    out: dict[str, Any] = {}
    try:
        with process(
            [*carelink, "serve", "--port", str(port), "--workers", "2"],
            f"{base}/fhir/metadata",
            env,
        ) as gateway:
            token = mint(env)
            for form in forms:
                n = (*HTTP_FORMS, LOOKUP_FORM).index(form)
                paths = search_paths(people, form, 2000, n)
                matched = sum(
                    json.loads(get(base + path, token)).get("total", 0) > 0 for path in paths[:50]
                )
                bare = (
                    bare_fastapi(get(base + paths[0], token), paths, port + 1, seconds, tmp)
                    if ceiling
                    else None
                )
                if warmup:
                    wrk(base, paths, warmup, 32, tmp, token)
                speed = machine_ns()
                before = tree_cpu(os.getpid())  # the gateway's processes (wrk ends before after)
                machine, disk = cpu_times(), disk_kb()
                # the connections each worker holds, read half way through the pass
                shares: list[list[int]] = []
                halfway = threading.Timer(seconds / 2, note_split, [shares, gateway, port])
                halfway.start()
                result = wrk(base, paths, seconds, 32, tmp, token)
                halfway.join()
                steal = stolen(machine, cpu_times())
                read, written = (b - a for a, b in zip(disk, disk_kb(), strict=True))
                used = tree_cpu(os.getpid()) - before
                requests = result["rps"] * seconds
                out[form] = {
                    **result,
                    "machine_ns": [speed, machine_ns()],
                    "steal_percent": steal,
                    # pages read from the disk while measured: a cold page cache (this
                    # machine's kernel pages out what nobody touched for a minute)
                    "disk_read_mb": round(read / 1024, 1),
                    "disk_written_mb": round(written / 1024, 1),
                    "bare_fastapi_rps": bare,
                    "connections_per_worker": shares[0] if shares else None,
                    "found_of_50": matched,
                    "cpu_ms_per_request": round(used / requests * 1000, 2) if requests else None,
                }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def changes(store: IndexStore, n: int, seed: int) -> tuple[float, int]:
    rng = random.Random(seed)
    picked = []
    for p in store.each_person(batch=5000):
        if p.nhs_number and rng.random() < 0.02:
            picked.append(p)
        if len(picked) >= n:
            break
    batch = []
    for k, p in enumerate(picked):
        links = store.links_of(p.id)
        gp = next((lk for lk in links if lk.source == "gp"), links[0])
        r = record_of(gp)
        if k % 2:
            new_local = f"NEW{k:07d}"
            patient = {**r.patient, "id": f"{r.source}-{new_local}"}
            batch.append(
                Upsert(
                    SourcePerson(
                        **{**vars(r), "source": "acute", "local_id": new_local, "patient": patient}
                    )
                )
            )
        else:
            moved = (r.postcode or "LS1 1AA")[:-2] + "ZZ"
            patient = {**r.patient, "address": [{"postalCode": moved}]}
            batch.append(Upsert(SourcePerson(**{**vars(r), "postcode": moved, "patient": patient})))
    report = apply_changes(store, batch)
    return report.seconds, len(batch)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="index-bench-")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    url = args.database or str((args.keep or Path(tmp)) / "index.db")
    if args.http_seconds and shutil.which("wrk") is None:  # before an hour of building
        raise SystemExit("wrk is needed for the HTTP searches: apt-get install -y wrk")
    urls, procs = start(args.people, args.port, args.running)
    try:
        db = Database(url)
        db.migrate()
        store = IndexStore(db)
        if args.measure_only and not store.counts()["persons"]:
            raise SystemExit(f"--measure-only: {args.database or url} holds no index")
        if (args.keep or args.measure_only) and store.counts()["persons"]:
            return {"people": args.people, "kept": url, **measure(args, store, url, urls)}
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        cpu = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        with TreeMemory() as together:
            report, perturbed = asyncio.run(build(urls, store, args.errors, args.writers))
        took = time.perf_counter() - started
        build_cpu = sum(
            getattr(resource.getrusage(who), f) - getattr(then, f)
            for who, then in zip((resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN), cpu, strict=True)
            for f in ("ru_utime", "ru_stime")
        )
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # at once, on stderr: what the build measured survives a failure of what follows
        print(
            f"built {sum(report.records.values()):,} records into {report.persons:,} people"
            f" in {took:.1f} s"
            f" (stages {report.seconds}, CPU {build_cpu:.1f} s, peak {peak_mb:.0f} MB,"
            f" writers {args.writers}, their peak {report.writer_peak_mb} MB,"
            f" all at once {together.peak_mb} MB,"
            f" load before {load_before}, after"
            f" {' '.join(f'{x:.2f}' for x in os.getloadavg())})",
            file=sys.stderr,
            flush=True,
        )
        precision, recall, missed = quality(store, perturbed.truth)
        blocking = blocking_losses(store, missed)
        measured = measure(args, store, url, urls)
        change_s, changed = changes(store, args.changes, 11)
        again = rebuild(urls, store, args) if args.rebuild else {}
        return {
            "people": args.people,
            "database": "postgresql" if args.database else "sqlite",
            "records": report.records,
            "persons": report.persons,
            "build_s": round(took, 1),
            "stages_s": report.seconds,
            "build_cpu_s": round(build_cpu, 1),
            "peak_mb": round(peak_mb),
            "writers": args.writers,
            "writer_peak_mb": report.writer_peak_mb,
            # the builder and its writers together, sampled every 0.25 s
            "peak_together_mb": together.peak_mb,
            "candidates_mean": report.candidates_mean,
            "candidates_max": report.candidates_max,
            "oversized_blocks": report.oversized_blocks,
            **measured,
            "load_before_build": load_before,
            "load_after_build": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "perturbed_records": len(perturbed.truth),
            "precision": precision,
            "recall": recall,
            "missed_links": blocking,
            "changes": changed,
            "changes_s": change_s,
            **again,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def rebuild(urls: dict[str, str], store: IndexStore, args: argparse.Namespace) -> dict[str, Any]:
    """The same sources built again over the index (the changes applied since are not at
    the sources, so the people they made or moved are retired or moved back): how long,
    and how long the swap took recording the retired ids' successors."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    report, _ = asyncio.run(build(urls, store, args.errors, args.writers))
    return {
        "rebuild_s": round(time.perf_counter() - started, 1),
        "rebuild_stages_s": report.seconds,
        "rebuild_successors": report.successors,
        "rebuild_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_before_rebuild": load,
    }


def lookup_round(store: IndexStore, numbers: list[str], rng: random.Random) -> tuple[float, float]:
    """One round of ``person_by_nhs`` over ``numbers`` (shuffled first): its (p50, p99) in
    seconds (``lookup_scale.py`` times its rounds with this too)."""
    rng.shuffle(numbers)
    lookups = []
    for nhs in numbers:
        t = time.perf_counter()
        store.person_by_nhs(nhs)
        lookups.append(time.perf_counter() - t)
    return statistics.median(lookups), statistics.quantiles(lookups, n=100)[98]


def measure(
    args: argparse.Namespace, store: IndexStore, url: str, urls: dict[str, str]
) -> dict[str, Any]:
    """Lookups and searches on the built index (in process, then over HTTP)."""
    numbers: list[str] = []  # a uniform sample of every NHS number in the index
    alike: list[tuple[str, str]] = []
    sample: list[PersonRow] = []
    rng = random.Random(3)
    seen = 0
    for p in store.each_person(batch=5000):
        if p.nhs_number:
            seen += 1
            if len(numbers) < LOOKUPS:
                numbers.append(p.nhs_number)
            elif (k := rng.randrange(seen)) < LOOKUPS:
                numbers[k] = p.nhs_number
        if p.birth_date and len(alike) < 200_000:
            alike.append((p.family, p.birth_date))
        if p.birth_date and len(p.birth_date) == 10 and len(sample) < 20_000:
            sample.append(replace(p, patient=b""))
    rounds = [lookup_round(store, numbers, rng) for _ in range(args.lookup_rounds)]
    search_p99 = searches(store, alike, 32, 100)
    port = args.gateway_port or args.port + 10
    forms = args.forms or list(HTTP_FORMS)
    seconds = args.http_seconds
    http = (
        http_searches(url, urls, sample, port, seconds, forms, args.warmup_seconds, args.ceiling)
        if seconds and forms
        else {}
    )
    return {
        "nhs_lookup_p99_ms": round(statistics.median(r[1] for r in rounds) * 1000, 2),
        # microseconds: at these sizes the p99 is tens of them, below the ms figure's grain
        "nhs_lookup_us": {
            "lookups": len(numbers),
            "rounds": len(rounds),
            "p50": round(statistics.median(r[0] for r in rounds) * 1e6, 1),
            "p99": round(statistics.median(r[1] for r in rounds) * 1e6, 1),
            "p99_each": [round(r[1] * 1e6, 1) for r in rounds],
        },
        "search_p99_ms_32_clients": search_p99,
        "http_search": http,
        "http_search_p99_ms": max((m["p99_ms"] for m in http.values()), default=None),
        "load_at_search": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=10_000)
    ap.add_argument("--database", help="a PostgreSQL URL (default: a temporary SQLite file)")
    ap.add_argument("--errors", type=float, default=0.05, help="share of hospital records")
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument(
        "--writers",
        type=int,
        default=writer_processes(os.cpu_count()),
        help="processes making the people (default: as `carelink index build`, one a core)",
    )
    ap.add_argument("--port", type=int, default=18610)
    ap.add_argument(
        "--lookup-rounds",
        type=int,
        default=1,
        help="rounds of the in-process NHS-number lookups (medians of the rounds reported)",
    )
    ap.add_argument("--out", type=Path)
    ap.add_argument("--gateway-port", type=int, help="for the HTTP searches (default: --port + 10)")
    ap.add_argument(
        "--http-seconds",
        type=int,
        default=15,
        help="wrk seconds per search form against the gateway (0: no HTTP searches)",
    )
    ap.add_argument(
        "--warmup-seconds",
        type=int,
        default=0,
        help="an uncounted wrk pass of this long before each form's measured one",
    )
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="before each form's pass, a bare FastAPI app's req/s on the same paths",
    )
    ap.add_argument(
        "--keep",
        type=Path,
        help="a folder for the SQLite index, kept: built when empty, else only searched",
    )
    ap.add_argument(
        "--measure-only",
        action="store_true",
        help="--database already holds a built index: search and look up, build nothing",
    )
    ap.add_argument(
        "--forms",
        type=lambda v: [f.strip() for f in v.split(",") if f.strip()],
        help=f"HTTP search forms, comma-separated (default all: {', '.join(HTTP_FORMS)}); "
        f"{LOOKUP_FORM}: the NHS-number lookup, measured only when named",
    )
    ap.add_argument(
        "--rebuild",
        action="store_true",
        help="at the end, build again over the index (the retired ids' successors timed)",
    )
    ap.add_argument(
        "--running",
        action="store_true",
        help="use simulators already answering on the ports (same --people), start the rest",
    )
    args = ap.parse_args()
    r = run(args)
    print(json.dumps(r, indent=1))
    if "build_s" not in r:  # a kept index, searched only
        r.update(build_s="-", peak_mb="-", candidates_mean="-", candidates_max="-")
        r.update(precision="-", recall="-", changes_s="-")
    print(
        "| people | build | peak | candidates mean/max | NHS p99 | search p99 (32) "
        "| HTTP search p99 (32) | P/R | 1,000 changes |"
    )
    print(
        f"| {r['people']:,} | {r['build_s']} s | {r['peak_mb']} MB | {r['candidates_mean']}/"
        f"{r['candidates_max']} | {r['nhs_lookup_p99_ms']} ms | {r['search_p99_ms_32_clients']} ms"
        f" | {r['http_search_p99_ms']} ms | {r['precision']}/{r['recall']} | {r['changes_s']} s |"
    )
    if isinstance(r.get("missed_links"), dict):
        m = r["missed_links"]
        print(
            f"missed links: {m['missed']} of {r['perturbed_records']:,} perturbed records; "
            f"never compared by blocking {m['never_compared']} (no key in common "
            f"{m['no_key_in_common']}, only blocks over the cap {m['only_capped_blocks']}); "
            f"compared and scored below the link threshold {m['below_threshold']}"
        )
    us = r["nhs_lookup_us"]
    print(
        f"NHS-number lookups: {us['lookups']:,} a round, medians of {us['rounds']} rounds: "
        f"p50 {us['p50']} us, p99 {us['p99']} us (each round's p99: {us['p99_each']})"
    )
    for form, m in r["http_search"].items():
        bare = m["bare_fastapi_rps"]
        print(
            f"HTTP {form:18} p50 {m['p50_ms']:7.1f}  p95 {m['p95_ms']:7.1f}  "
            f"p99 {m['p99_ms']:7.1f} ms"
            f"  {m['rps']:6.0f} req/s  {m['cpu_ms_per_request']} ms CPU/req  errors {m['errors']}"
            f"  found {m['found_of_50']}/50  machine {m['machine_ns'][0]}/{m['machine_ns'][1]} ns"
            f"  steal {m['steal_percent']}%  disk read {m['disk_read_mb']} MB"
            f" written {m['disk_written_mb']} MB"
            + (f"  bare FastAPI {bare:,.0f} req/s" if bare else "")
        )
    if args.out:
        args.out.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
