"""Every request the server saw and what became of it, in SQLite, so that none goes missing unnoticed.

    ledger = Ledger("serve.sqlite")
    ledger.received(request_id, tier, seconds, prompt)       # before anything can fail
    ledger.decided(request_id, decision)                     # accepted (202) or rejected (503 + reason)
    ledger.finished(request_id, ok=True, variant="full")     # or ok=False, reason="replica died twice"
    ledger.account()   # {"received": n, "accepted": ..., "completed": ..., "failed": ..., "in_flight": ..., "balanced": bool}

A request is one row whose `state` moves received -> accepted | rejected | invalid, and accepted ->
completed | failed; each sub-task attempt is a row of `attempts` (kind, section, variant, attempt,
start, end, error), written when it starts and closed when it ends. `account()` gives the load test's count check: accepted = completed + failed + in flight. One writer (the router replica) holds the
connection; WAL mode lets a reader (the load test, a dashboard) look while it writes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    tier TEXT,
    seconds REAL,
    prompt TEXT,
    state TEXT NOT NULL,
    http_status INTEGER,
    reason TEXT,
    variant TEXT,
    received_at REAL NOT NULL,
    predicted_finish_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS attempts (
    request_id TEXT NOT NULL REFERENCES requests(id),
    kind TEXT NOT NULL,
    section INTEGER NOT NULL,
    variant TEXT,
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    error TEXT
);
"""
STATES = ("received", "accepted", "rejected", "invalid", "completed", "failed")


class Ledger:
    """The SQLite record of requests and sub-task attempts (`path`, or ":memory:"). Times are
    `time.time()` seconds; thread-safe for the one process that writes."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def received(self, request_id: str, tier: str | None, seconds: float | None, prompt: str | None) -> None:
        """A request arrived (before validation: a malformed body is recorded too, as `invalid`)."""
        try:
            self._write("INSERT INTO requests (id, tier, seconds, prompt, state, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (request_id, tier, seconds, prompt, "received", time.time()))
        except sqlite3.IntegrityError:
            raise ValueError(f"request id {request_id!r} was already received; send a new id for a new request") from None

    def invalid(self, request_id: str, status: int, reason: str) -> None:
        self._write("UPDATE requests SET state='invalid', http_status=?, reason=?, finished_at=? WHERE id=?",
                    (status, reason, time.time(), request_id))

    def decided(self, request_id: str, accepted: bool, status: int, reason: str, variant: str | None = None,
                predicted_finish_at: float | None = None) -> None:
        self._write("UPDATE requests SET state=?, http_status=?, reason=?, variant=?, predicted_finish_at=?, "
                    "finished_at=? WHERE id=?",
                    ("accepted" if accepted else "rejected", status, reason, variant, predicted_finish_at,
                     None if accepted else time.time(), request_id))

    def attempt_started(self, request_id: str, kind: str, section: int, variant: str | None, attempt: int) -> None:
        """A sub-task attempt began: its row has no `finished_at` until `attempt_finished`, so a
        reader sees what is running now."""
        self._write("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                    (request_id, kind, section, variant, attempt, time.time()))

    def attempt_finished(self, request_id: str, kind: str, section: int, attempt: int, error: str | None = None) -> None:
        self._write("UPDATE attempts SET finished_at=?, error=? WHERE request_id=? AND kind=? AND section=? AND attempt=?",
                    (time.time(), error, request_id, kind, section, attempt))

    def running(self, kind: str = "synthesis") -> dict[str, int]:
        """Attempts of `kind` started and not finished, per variant."""
        with self._lock:
            return dict(self._db.execute("SELECT variant, COUNT(*) FROM attempts WHERE kind=? AND finished_at IS NULL "
                                         "GROUP BY variant", (kind,)).fetchall())

    def finished(self, request_id: str, ok: bool, status: int, reason: str = "") -> None:
        self._write("UPDATE requests SET state=?, http_status=?, reason=?, finished_at=? WHERE id=? AND state='accepted'",
                    ("completed" if ok else "failed", status, reason, time.time(), request_id))

    def rows(self, table: str = "requests") -> list[dict]:
        if table not in ("requests", "attempts"):
            raise ValueError(f"table {table!r}: the ledger has 'requests' and 'attempts'")
        with self._lock:
            cur = self._db.execute(f"SELECT * FROM {table}")
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def account(self) -> dict:
        """Counts per state; `settled` when no request is still undecided or running and every
        rejection or failure carries its reason (the load test also checks these counts against
        the answers its client received)."""
        with self._lock:
            counts = dict(self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall())
            silent = self._db.execute("SELECT COUNT(*) FROM requests WHERE state IN ('failed', 'rejected', 'invalid') "
                                      "AND (reason IS NULL OR reason = '')").fetchone()[0]
        n = {s: counts.get(s, 0) for s in STATES}
        accepted = n["accepted"] + n["completed"] + n["failed"]
        return {"received": sum(n.values()), "invalid": n["invalid"], "rejected": n["rejected"], "accepted": accepted,
                "completed": n["completed"], "failed": n["failed"], "in_flight": n["accepted"],
                "not_yet_decided": n["received"], "failed_without_reason": silent,
                "settled": n["accepted"] == 0 and n["received"] == 0 and silent == 0}

    def close(self) -> None:
        with self._lock:
            self._db.close()
