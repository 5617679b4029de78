"""The coordinator's durable state: one SQLite database plus checkpoint files, under a state directory.

Layout of ``DIR``::

    DIR/room.sqlite3                    identities, sites, runs, run_sites, rounds, spend, meta
    DIR/checkpoints/<run_id>/round-<r>.msgpack   global params + server optimiser state after round r
    DIR/coordinator.key                 the coordinator's own Ed25519 key (signs its audit log)
    DIR/audit.jsonl                     the coordinator's audit log
    DIR/coordinator.url                 the URL it listens on (written once listening)
    DIR/limits.toml                     optional: the operator's bounds on run requests (a [run] table)

A checkpoint is at most :data:`MAX_CHECKPOINT_BYTES` (its parameters at most one frame): the writer
refuses a bigger one before writing, and the reader uses the same limits, so whatever the room
writes it can read back (``start_run`` refuses a model whose checkpoint would not fit, before
building it).

Checkpoints are written to a temporary file, fsynced and renamed *before* the database row that
says the round is done is committed, so after a crash (``kill -9``) the database never points at a
missing checkpoint. SQLite runs in WAL mode with ``synchronous=FULL``. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedjax_room.errors import ConfigError, StateError
from fedjax_room.files import atomic_write  # re-exported: the coordinator's state files are written with it
from fedjax_room.protocol.codec import MAX_FRAME_BYTES, Tree, decode_tree, digest, encode_tree, pack, unpack

__all__ = ["MAX_CHECKPOINT_BYTES", "Identity", "RoundRow", "RunRow", "Store", "atomic_write"]

#: Largest checkpoint file (parameters + server optimiser state) the store writes and reads back.
MAX_CHECKPOINT_BYTES = 4 * MAX_FRAME_BYTES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, public_key BLOB NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL, enrolled_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
    audited INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY, schema TEXT NOT NULL, record_count TEXT NOT NULL, policy TEXT NOT NULL,
    ledger TEXT NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, analyst TEXT NOT NULL,
    spec TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL, rounds_done INTEGER NOT NULL,
    error TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS run_sites (
    run_id TEXT NOT NULL, site TEXT NOT NULL, state TEXT NOT NULL, plan TEXT, error TEXT,
    round INTEGER, PRIMARY KEY (run_id, site));
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL, sites TEXT NOT NULL,
    dropped TEXT NOT NULL, model_digest TEXT NOT NULL, loss REAL, accuracy REAL, epsilon TEXT,
    eval_sites TEXT, PRIMARY KEY (run_id, round));
CREATE TABLE IF NOT EXISTS defence (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, report TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (run_id, round));
CREATE TABLE IF NOT EXISTS spend (
    site TEXT NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL, phase TEXT NOT NULL,
    epsilon REAL NOT NULL, ledger_epsilon REAL NOT NULL, delta REAL NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (site, run_id, round, phase));
CREATE TABLE IF NOT EXISTS cancels (
    run_id TEXT PRIMARY KEY, by TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, released TEXT NOT NULL, PRIMARY KEY (run_id, round));
CREATE TABLE IF NOT EXISTS site_spend (
    site TEXT NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL, epsilon REAL NOT NULL,
    PRIMARY KEY (site, run_id, round));
"""


@dataclasses.dataclass(frozen=True)
class Identity:
    """An enrolled party."""

    name: str
    role: str
    public_key: bytes
    fingerprint: str
    revoked: bool


@dataclasses.dataclass(frozen=True)
class RunRow:
    """A run as stored."""

    id: str
    analyst: str
    spec: dict[str, Any]
    config: dict[str, Any]
    status: str
    rounds_done: int
    error: dict[str, str] | None


@dataclasses.dataclass(frozen=True)
class RoundRow:
    """A finished (aggregated, perhaps evaluated) round as stored."""

    run_id: str
    round: int
    status: str
    sites: list[str]
    dropped: list[str]
    model_digest: str
    loss: float | None
    accuracy: float | None
    epsilon: dict[str, float]
    eval_sites: list[str]


def _name_ok(name: str) -> str:
    from fedjax_room.protocol.fields import is_id  # the names the protocol carries (protocol/fields.py)

    if not is_id(name):
        raise ConfigError(
            f"name {name!r} must be 1-64 ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return name


class Store:
    """SQLite + files. Open with :meth:`open`; every write is one transaction."""

    #: the reader's (and so the writer's) limits on a checkpoint file and on its parameter payload
    max_checkpoint_bytes: int = MAX_CHECKPOINT_BYTES
    max_params_bytes: int = MAX_FRAME_BYTES

    def __init__(self, state_dir: Path, db: sqlite3.Connection) -> None:
        self.state_dir = state_dir
        self._db = db

    def run_limits(self) -> Any:
        """The operator's bounds on run requests: ``DIR/limits.toml`` ``[run]`` table over the defaults
        (:class:`~fedjax_room.protocol.config.RunLimits`); raises :class:`ConfigError` when it is malformed."""
        import tomllib

        from fedjax_room.protocol.config import RunLimits

        path = self.state_dir / "limits.toml"
        if not path.exists():
            return RunLimits()
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}); fix or remove it") from None
        extra = set(data) - {"run"}
        if extra:
            raise ConfigError(f"{path}: unknown tables {sorted(extra)}; put run bounds in a [run] table")
        try:
            return RunLimits.from_dict(data.get("run", {}))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str]) -> Store:
        """Open (creating if needed) the store in ``state_dir``."""
        from fedjax_room.files import open_private, private_dir

        path = private_dir(state_dir)  # 0700; the database (and its -wal/-shm, which copy its mode) 0600
        os.close(open_private(path / "room.sqlite3", os.O_RDWR | os.O_CREAT))
        try:
            db = sqlite3.connect(path / "room.sqlite3", timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path / 'room.sqlite3'} is not a usable room database ({exc}); move it away") from None
        store = cls(path, db)
        if store._meta("room_id") is None:
            with store._tx():
                store._db.execute("INSERT OR IGNORE INTO meta VALUES ('room_id', ?)", (secrets.token_hex(8),))
        return store

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def room_id(self) -> str:
        """This room's random id (signed into every handshake)."""
        value = self._meta("room_id")
        assert value is not None
        return value

    # ------------------------------------------------------------------ identities

    def enroll(self, name: str, role: str, public_key: bytes, fingerprint: str) -> tuple[Identity, bool]:
        """Enroll ``public_key`` as ``name`` with ``role``; returns (identity, created).

        Enrolling the same key under the same name and role again is a no-op; a name or a key
        already used otherwise raises :class:`ConfigError`.
        """
        _name_ok(name)
        if role not in ("site", "analyst"):
            raise ConfigError(f"role must be 'site' or 'analyst', got {role!r}")
        if len(public_key) != 32:
            raise ConfigError("an Ed25519 public key is 32 raw bytes")
        with self._tx():
            by_name = self._db.execute("SELECT * FROM identities WHERE name = ?", (name,)).fetchone()
            by_key = self._db.execute("SELECT * FROM identities WHERE public_key = ?", (public_key,)).fetchone()
            if by_name and by_key and by_name[0] == by_key[0] and by_name[1] == role and not by_name[5]:
                return self._identity(by_name), False
            if by_name:
                raise ConfigError(f"the name {name!r} is already enrolled with another key or role; pick another name")
            if by_key:
                raise ConfigError(f"this public key is already enrolled as {by_key[0]!r}; one key, one identity")
            self._db.execute(
                "INSERT INTO identities VALUES (?, ?, ?, ?, ?, 0, 0)",
                (name, role, public_key, fingerprint, time.time()),
            )
        ident = self.identity(name)
        assert ident is not None
        return ident, True

    def revoke(self, name: str) -> None:
        """Mark ``name`` revoked: its key no longer authenticates."""
        with self._tx():
            cur = self._db.execute("UPDATE identities SET revoked = 1 WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise ConfigError(f"no identity named {name!r} is enrolled")

    @staticmethod
    def _identity(row: tuple[Any, ...]) -> Identity:
        return Identity(name=row[0], role=row[1], public_key=bytes(row[2]), fingerprint=row[3], revoked=bool(row[5]))

    def identity(self, name: str) -> Identity | None:
        """The identity enrolled as ``name``, if any."""
        row = self._db.execute("SELECT * FROM identities WHERE name = ?", (name,)).fetchone()
        return self._identity(row) if row else None

    def identity_by_key(self, public_key: bytes) -> Identity | None:
        """The identity enrolled with this raw public key, if any."""
        row = self._db.execute("SELECT * FROM identities WHERE public_key = ?", (bytes(public_key),)).fetchone()
        return self._identity(row) if row else None

    def unaudited_identities(self) -> list[Identity]:
        """Identities enrolled (offline) that the coordinator has not yet written to its audit log."""
        return [self._identity(r) for r in self._db.execute("SELECT * FROM identities WHERE audited = 0 ORDER BY name")]

    def mark_audited(self, name: str) -> None:
        """Record that ``identity_enrolled`` was audited for ``name``."""
        with self._tx():
            self._db.execute("UPDATE identities SET audited = 1 WHERE name = ?", (name,))

    def revoked_names(self) -> set[str]:
        """Names of every revoked identity (the coordinator closes their live connections)."""
        return {r[0] for r in self._db.execute("SELECT name FROM identities WHERE revoked = 1")}

    def unaudited_revocations(self) -> list[Identity]:
        """Identities revoked (offline, ``fedjax-room revoke``) whose ``identity_revoked`` is not yet audited."""
        rows = self._db.execute("SELECT * FROM identities WHERE revoked = 1 AND audited < 2 ORDER BY name")
        return [self._identity(r) for r in rows]

    def mark_revocation_audited(self, name: str) -> None:
        """Record that ``identity_revoked`` was audited for ``name``."""
        with self._tx():
            self._db.execute("UPDATE identities SET audited = 2 WHERE name = ?", (name,))

    def identities(self) -> list[Identity]:
        """Every enrolled identity, by name."""
        return [self._identity(r) for r in self._db.execute("SELECT * FROM identities ORDER BY name")]

    # ------------------------------------------------------------------ sites

    def save_site(self, name: str, *, schema: dict, record_count: str, policy: dict, ledger: dict) -> None:
        """Remember what a site reported about itself (schema, coarse count, policy and ledger summaries)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO sites VALUES (?, ?, ?, ?, ?, ?)",
                (name, json.dumps(schema), record_count, json.dumps(policy), json.dumps(ledger), time.time()),
            )

    def update_site_ledger(self, name: str, ledger: Mapping[str, Any]) -> None:
        """Merge ``ledger`` into the site's reported ledger summary."""
        with self._tx():
            row = self._db.execute("SELECT ledger FROM sites WHERE name = ?", (name,)).fetchone()
            if row is None:
                return
            merged = {**json.loads(row[0]), **ledger}
            self._db.execute("UPDATE sites SET ledger = ? WHERE name = ?", (json.dumps(merged), name))

    def sites(self) -> dict[str, dict[str, Any]]:
        """``{name: {"schema", "record_count", "policy", "ledger", "last_seen"}}`` for every site that reported."""
        out = {}
        for name, schema, count, policy, ledger, seen in self._db.execute("SELECT * FROM sites ORDER BY name"):
            out[name] = {
                "schema": json.loads(schema),
                "record_count": count,
                "policy": json.loads(policy),
                "ledger": json.loads(ledger),
                "last_seen": seen,
            }
        return out

    # ------------------------------------------------------------------ runs

    def create_run(self, analyst: str, spec: dict, config: dict, run_id: str | None = None) -> str:
        """Record a new pending run; returns its id: ``run_id`` (a tuning trial's ``trial-<hex>``) or ``run-<n>``,
        ``n`` one past the last ``run-`` id (trials take no number: an id says nothing of how many ran)."""
        now = time.time()
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO runs (id, analyst, spec, config, status, rounds_done, created, updated) "
                "VALUES ('', ?, ?, ?, 'pending', 0, ?, ?)",
                (analyst, json.dumps(spec, sort_keys=True), json.dumps(config, sort_keys=True), now, now),
            )
            if run_id is None:
                (last,) = self._db.execute(
                    "SELECT MAX(CAST(SUBSTR(id, 5) AS INTEGER)) FROM runs WHERE id LIKE 'run-%'"
                ).fetchone()
                run_id = f"run-{(last or 0) + 1}"
            self._db.execute("UPDATE runs SET id = ? WHERE seq = ?", (run_id, cur.lastrowid))
        return run_id

    def mark_published(self, run_id: str) -> None:
        """Record that tuning trial ``run_id`` is its session's published best (protocol/tuning.py)."""
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, '1')", (f"published:{run_id}",))

    def published_runs(self) -> set[str]:
        """The tuning trials published as their session's best (every other trial is hidden from analysts)."""
        rows = self._db.execute("SELECT key FROM meta WHERE key LIKE 'published:%'")
        return {key.removeprefix("published:") for (key,) in rows}

    @staticmethod
    def _run(row: tuple[Any, ...]) -> RunRow:
        _, run_id, analyst, spec, config, status, done, error, *_ = row
        return RunRow(
            id=run_id,
            analyst=analyst,
            spec=json.loads(spec),
            config=json.loads(config),
            status=status,
            rounds_done=done,
            error=json.loads(error) if error else None,
        )

    def run(self, run_id: str) -> RunRow | None:
        """The run ``run_id``, if it exists."""
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._run(row) if row else None

    def runs(self) -> list[RunRow]:
        """Every run, oldest first."""
        return [self._run(r) for r in self._db.execute("SELECT * FROM runs ORDER BY seq")]

    def set_run_status(self, run_id: str, status: str, error: dict[str, str] | None = None) -> None:
        """Set a run's status (and error)."""
        with self._tx():
            self._db.execute(
                "UPDATE runs SET status = ?, error = ?, updated = ? WHERE id = ?",
                (status, json.dumps(error) if error else None, time.time(), run_id),
            )

    def set_run_site(
        self,
        run_id: str,
        site: str,
        state: str,
        *,
        plan: dict | None = None,
        error: dict | None = None,
        round: int | None = None,
    ) -> None:
        """Record a site's part in a run: ``accepted`` (with its plan), ``refused`` or ``left`` (with why)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO run_sites VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, site, state, json.dumps(plan) if plan else None, json.dumps(error) if error else None, round),
            )

    def run_sites(self, run_id: str) -> dict[str, dict[str, Any]]:
        """``{site: {"state", "plan", "error", "round"}}`` for a run."""
        out = {}
        for _, site, state, plan, error, rnd in self._db.execute(
            "SELECT * FROM run_sites WHERE run_id = ? ORDER BY site", (run_id,)
        ):
            out[site] = {
                "state": state,
                "plan": json.loads(plan) if plan else None,
                "error": json.loads(error) if error else None,
                "round": rnd,
            }
        return out

    # ------------------------------------------------------------------ rounds and checkpoints

    def checkpoint_path(self, run_id: str, round: int) -> Path:
        """Where the model after ``round`` of ``run_id`` is kept (round 0: the initial model)."""
        return self.state_dir / "checkpoints" / run_id / f"round-{round}.msgpack"

    def save_checkpoint(self, run_id: str, round: int, params: Tree, opt_state: Tree) -> str:
        """Write the checkpoint file (atomically); returns the params digest.

        Refuses (:class:`StateError`, nothing written) a checkpoint the reader would call corrupt: parameters
        over :attr:`max_params_bytes` or a file over :attr:`max_checkpoint_bytes`. Safe to call from a worker
        thread (it touches only the file, not the database)."""
        params_bytes = pack(encode_tree(params))
        if len(params_bytes) > self.max_params_bytes:
            raise StateError(
                f"the parameters of {run_id} take {len(params_bytes)} bytes, over the limit of "
                f"{self.max_params_bytes}; the model is too large for this room"
            )
        blob = pack({"round": round, "params": params_bytes, "opt_state": pack(encode_tree(opt_state))})
        if len(blob) > self.max_checkpoint_bytes:
            raise StateError(
                f"the checkpoint of {run_id} takes {len(blob)} bytes, over the limit of {self.max_checkpoint_bytes}; "
                "the model (with its server optimiser state) is too large for this room"
            )
        atomic_write(self.checkpoint_path(run_id, round), blob)
        return digest(params_bytes)

    def has_checkpoint(self, run_id: str, round: int) -> bool:
        """Whether the checkpoint after ``round`` exists."""
        return self.checkpoint_path(run_id, round).exists()

    def load_checkpoint(self, run_id: str, round: int) -> tuple[Tree, Tree, bytes]:
        """``(params, opt_state, params_bytes)`` after ``round``; raises :class:`StateError` if missing/corrupt."""
        path = self.checkpoint_path(run_id, round)
        try:
            blob = unpack(path.read_bytes(), max_bytes=self.max_checkpoint_bytes)
            params_bytes = blob["params"]
            params = decode_tree(unpack(params_bytes, max_bytes=self.max_params_bytes))
            return params, decode_tree(unpack(blob["opt_state"], max_bytes=self.max_checkpoint_bytes)), params_bytes
        except FileNotFoundError:
            raise StateError(f"checkpoint {path} is missing; the state directory is incomplete") from None
        except (KeyError, TypeError, Exception) as exc:
            raise StateError(f"checkpoint {path} is corrupt ({exc}); restore it from a backup") from None

    def commit_round(
        self, run_id: str, round: int, *, params: Tree, opt_state: Tree, sites: list[str], dropped: list[str]
    ) -> str:
        """Checkpoint, then record round ``round`` as aggregated and ``rounds_done = round``; returns the digest."""
        model_digest = self.save_checkpoint(run_id, round, params, opt_state)
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, 'aggregated', ?, ?, ?, NULL, NULL, NULL, NULL)",
                (run_id, round, json.dumps(sorted(sites)), json.dumps(sorted(dropped)), model_digest),
            )
            self._db.execute(
                "UPDATE runs SET rounds_done = ?, status = 'running', updated = ? WHERE id = ?",
                (round, time.time(), run_id),
            )
        return model_digest

    def record_metrics(
        self,
        run_id: str,
        round: int,
        *,
        loss: float | None,
        accuracy: float | None,
        epsilon: dict[str, float],
        eval_sites: list[str],
    ) -> None:
        """Mark a round evaluated, with its DP-noised metrics and per-site epsilon."""
        with self._tx():
            self._db.execute(
                "UPDATE rounds SET status = 'evaluated', loss = ?, accuracy = ?, epsilon = ?, eval_sites = ? "
                "WHERE run_id = ? AND round = ?",
                (loss, accuracy, json.dumps(epsilon, sort_keys=True), json.dumps(sorted(eval_sites)), run_id, round),
            )

    def rounds(self, run_id: str) -> list[RoundRow]:
        """A run's rounds, in order."""
        out = []
        for row in self._db.execute("SELECT * FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)):
            run, rnd, status, sites, dropped, model_digest, loss, acc, eps, eval_sites = row
            out.append(
                RoundRow(
                    run_id=run,
                    round=rnd,
                    status=status,
                    sites=json.loads(sites),
                    dropped=json.loads(dropped),
                    model_digest=model_digest,
                    loss=loss,
                    accuracy=acc,
                    epsilon=json.loads(eps) if eps else {},
                    eval_sites=json.loads(eval_sites) if eval_sites else [],
                )
            )
        return out

    # ------------------------------------------------------------------ poisoning defence

    def record_defence(self, run_id: str, round: int, report: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        """Keep what the defence did in ``round`` (its report) and its state after it (trust per site)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO defence VALUES (?, ?, ?, ?)",
                (run_id, round, json.dumps(report, sort_keys=True), json.dumps(state, sort_keys=True)),
            )

    def defences(self, run_id: str) -> dict[int, dict[str, Any]]:
        """``{round: report}`` of a run."""
        rows = self._db.execute("SELECT round, report FROM defence WHERE run_id = ? ORDER BY round", (run_id,))
        return {int(r): json.loads(rep) for r, rep in rows}

    def record_eval(self, run_id: str, round: int, released: Mapping[str, Any]) -> None:
        """Keep what an evaluated round released (post-processed figures and their noise scale)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO evals VALUES (?, ?, ?)", (run_id, round, json.dumps(released, sort_keys=True))
            )

    def evals(self, run_id: str) -> dict[int, dict[str, Any]]:
        """``{round: released}`` of a run's evaluated rounds."""
        rows = self._db.execute("SELECT round, released FROM evals WHERE run_id = ? ORDER BY round", (run_id,))
        return {int(r): json.loads(rel) for r, rel in rows}

    def defence_state(self, run_id: str, before: int) -> dict[str, Any] | None:
        """The defence state after the last round before ``before`` (None: no round yet)."""
        row = self._db.execute(
            "SELECT state FROM defence WHERE run_id = ? AND round < ? ORDER BY round DESC LIMIT 1", (run_id, before)
        ).fetchone()
        return json.loads(row[0]) if row else None

    # ------------------------------------------------------------------ cancellation

    def request_cancel(self, run_id: str, by: str, reason: str = "") -> None:
        """Ask the (running) coordinator to cancel ``run_id`` (``fedjax-room cancel``); it acts at its next tick."""
        if self.run(run_id) is None:
            raise ConfigError(f"no run {run_id!r} in this room")
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO cancels VALUES (?, ?, ?, ?, 0)", (run_id, by, reason[:500], time.time())
            )

    def pending_cancels(self) -> list[tuple[str, str, str]]:
        """``(run_id, by, reason)`` of cancel requests the coordinator has not acted on, oldest first."""
        rows = self._db.execute("SELECT run_id, by, reason FROM cancels WHERE done = 0 ORDER BY at")
        return [(r, b, why) for r, b, why in rows]

    def mark_cancel_done(self, run_id: str) -> None:
        """The coordinator acted on the cancel request for ``run_id``."""
        with self._tx():
            self._db.execute("UPDATE cancels SET done = 1 WHERE run_id = ?", (run_id,))

    # ------------------------------------------------------------------ spend

    def record_spend(
        self, site: str, run_id: str, round: int, phase: str, *, epsilon: float, ledger_epsilon: float, delta: float
    ) -> None:
        """What a site reported spending for one release (idempotent per (site, run, round, phase))."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO spend VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (site, run_id, round, phase, epsilon, ledger_epsilon, delta, time.time()),
            )

    def run_spend(self, run_id: str) -> dict[str, dict[str, float]]:
        """``{site: {"epsilon", "ledger_epsilon", "delta"}}``: each site's latest report for a run."""
        out: dict[str, dict[str, float]] = {}
        for site, eps, ledger, delta in self._db.execute(
            "SELECT site, epsilon, ledger_epsilon, delta FROM spend WHERE run_id = ? ORDER BY round, phase",
            (run_id,),
        ):
            prev = out.get(site)
            if prev is None or eps >= prev["epsilon"]:
                out[site] = {"epsilon": eps, "ledger_epsilon": ledger, "delta": delta}
        return out

    def record_site_spend(self, site: str, run_id: str, round: int, epsilon: float) -> None:
        """A site's reported site-level (whole-site, distributed DP) epsilon of a run after ``round``."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO site_spend VALUES (?, ?, ?, ?)", (site, run_id, round, epsilon))

    def run_site_spend(self, run_id: str) -> dict[str, float]:
        """``{site: site-level epsilon}``: each site's largest report for a run (runs with distributed DP)."""
        rows = self._db.execute("SELECT site, MAX(epsilon) FROM site_spend WHERE run_id = ? GROUP BY site", (run_id,))
        return {site: float(eps) for site, eps in rows}

    def spend_rows(self) -> list[dict[str, Any]]:
        """Every spend report (for audits and tests)."""
        cols = ("site", "run_id", "round", "phase", "epsilon", "ledger_epsilon", "delta", "at")
        return [dict(zip(cols, r, strict=True)) for r in self._db.execute("SELECT * FROM spend ORDER BY at")]


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
