"""``medclass watch``: poll a PACS for studies, score (and explain) each once, push the results back.

Every ``interval`` seconds a QIDO-RS search (the ``--query`` filters) lists the studies with their
instance counts (or, with ``--changes`` on an Orthanc server, its ``/changes`` log gives the studies that
became stable since the sequence number kept in the state). A study is taken once its count was the same at two polls in a row (still arriving
otherwise), processed by the :class:`~medclass.pacs.score.PacsScorer` (and the explain callback), and
recorded in ``STATE/watch.sqlite`` with the count it had (plus what was pushed into it). A study whose
count later grows is taken again: its new instances are scored (done rows are skipped).

Durability: the scores are committed per batch (``STATE/scores.csv``) and a study is recorded only after
its results are pushed, in one SQLite transaction. After ``kill -9`` the next start redoes at most the
study that was running: its done rows are skipped and its SR has the same UID, so nothing is twice.

Outages: a failed poll or a study the server cannot serve logs **one** warning line, then polls again with
exponential backoff (``interval`` doubling up to ``max_backoff``); when the server answers again one line
says how long it was away. SIGINT/SIGTERM stop after the current study.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medclass.errors import ConfigError, PacsError, PacsUnavailable
from medclass.pacs.client import PacsClient
from medclass.pacs.score import PacsScorer, StudyResult
from medclass.pacs.uids import check_uid

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    uid TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- done | failed
    instances INTEGER NOT NULL,    -- the count it had when recorded (outputs pushed into it included)
    error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class WatchState:
    """The studies already handled, in ``folder/watch.sqlite`` (one transaction per study)."""

    def __init__(self, folder: Path, model_sha256: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "watch.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='model_sha256'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('model_sha256', ?)", (model_sha256,))
        elif row[0] != model_sha256:
            raise ConfigError(
                f"was written for another model (weights sha256 {row[0][:12]}…); use another --state",
                folder,
            )

    def seen(self, uid: str) -> tuple[str, int] | None:
        row = self.db.execute("SELECT status, instances FROM studies WHERE uid=?", (uid,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def record(self, uid: str, status: str, instances: int, error: str = "") -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?, ?)",
                (uid, status, instances, error[:500], time.time()),
            )

    def get_meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def count(self, status: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM studies WHERE status=?", (status,)).fetchone()[0])

    def close(self) -> None:
        self.db.close()


class OrthancChanges:
    """New studies from Orthanc's ``/changes`` log (``StableStudy`` events), resumed from the sequence
    number kept in the state; the Orthanc REST root is the DICOMweb root without its last path part."""

    def __init__(self, client: PacsClient, state: WatchState, rest_root: str | None = None) -> None:
        self.client, self.state = client, state
        self.root = (rest_root or client.connection.url.rsplit("/", 1)[0]).rstrip("/")
        self.since = int(state.get_meta("changes_seq", "0"))
        self.last = self.since

    def _get(self, path: str) -> Any:
        def fetch() -> Any:
            r = self.client.session.get(self.root + path, timeout=self.client.connection.timeout)
            r.raise_for_status()
            return r.json()

        return self.client.call(f"Orthanc {path.split('?')[0]}", fetch)

    def __call__(self) -> dict[str, int]:
        """StudyInstanceUID → instance count of the studies that became stable since the last call."""
        found: dict[str, int] = {}
        since = self.since
        for _ in range(1000):
            page = self._get(f"/changes?since={since}&limit=1000")
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "StableStudy":
                    study = self._get(f"/studies/{change['ID']}")
                    uid = check_uid(
                        study.get("MainDicomTags", {}).get("StudyInstanceUID"), "StudyInstanceUID"
                    )
                    found[uid] = len(self._get(f"/studies/{change['ID']}/instances"))
            since = int(page.get("Last", since))
            if page.get("Done", True):
                break
        self.last = since
        return found

    def commit(self) -> None:
        """Remember that every study returned so far is handled."""
        self.state.set_meta("changes_seq", str(self.last))
        self.since = self.last


@dataclass
class WatchSummary:
    studies: int = 0
    polls: int = 0
    outages: int = 0


class Watcher:
    """The polling loop (see the module docstring). ``explain(uid)`` (optional) explains and pushes one
    study after it is scored and returns its :class:`StudyResult`."""

    def __init__(
        self,
        scorer: PacsScorer,
        state: WatchState,
        *,
        query: dict[str, str] | None = None,
        interval: float = 30.0,
        max_backoff: float = 300.0,
        explain: Callable[[str], StudyResult] | None = None,
        on_study: Callable[[StudyResult], None] | None = None,
        stop: threading.Event | None = None,
        changes: OrthancChanges | None = None,
    ) -> None:
        self.scorer, self.state, self.query = scorer, state, dict(query or {})
        self.interval, self.max_backoff = max(0.1, interval), max(interval, max_backoff)
        self.explain, self.on_study = explain, on_study
        self.stop = stop or threading.Event()
        self.changes = changes
        self.pending: dict[str, int] = {}  # uid → count at the last poll (not yet stable)
        self.summary = WatchSummary()
        self._down_since: float | None = None

    def run(self) -> WatchSummary:
        """Poll until :attr:`stop` is set."""
        delay = self.interval
        while not self.stop.is_set():
            try:
                self.poll()
            except PacsUnavailable as exc:
                self._outage(exc)
                delay = min(delay * 2, self.max_backoff)
                self.stop.wait(delay)
                continue
            delay = self.interval
            self.stop.wait(self.interval)
        return self.summary

    def poll(self) -> None:
        """One pass: list the studies, process the stable new ones. Raises :class:`PacsUnavailable`."""
        stable = self.changes is not None  # Orthanc reports StableStudy itself
        counts = self.changes() if self.changes is not None else self.scorer.client.study_counts(self.query)
        self.summary.polls += 1
        for uid, count in counts.items():
            if self.stop.is_set():
                return
            seen = self.state.seen(uid)
            if seen is not None and (seen[0] == "failed" or count <= seen[1]):
                continue
            if not stable and self.pending.get(uid) != count:  # new, or still growing: wait for the next poll
                self.pending[uid] = count
                continue
            self._one(uid, count)
        if self.changes is not None:
            self.changes.commit()
        self._back()  # a whole pass went through: a server that answers once and fails again is one outage

    def _one(self, uid: str, count: int) -> None:
        result = self.scorer.study(uid)
        pushed = result.pushed
        if not result.unavailable and not result.error and self.explain is not None:
            extra = self.explain(uid)
            pushed += extra.pushed
            result.unavailable, result.error = extra.unavailable, extra.error
        if result.unavailable:
            raise PacsUnavailable(result.error or f"study {uid}: server unavailable")
        self.pending.pop(uid, None)
        status = "failed" if result.error and not result.scored else "done"
        self.state.record(uid, status, count + pushed, result.error)
        self.summary.studies += 1
        if self.on_study is not None:
            self.on_study(result)

    def _outage(self, exc: PacsError) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.summary.outages += 1
            log.warning(
                "PACS %s unavailable (%s); retrying with backoff up to %.0f s, nothing is lost",
                self.scorer.client.connection.shown, exc, self.max_backoff,
            )  # fmt: skip

    def _back(self) -> None:
        if self._down_since is not None:
            log.warning("PACS %s answers again after %.0f s", self.scorer.client.connection.shown,
                        time.monotonic() - self._down_since)  # fmt: skip
            self._down_since = None
