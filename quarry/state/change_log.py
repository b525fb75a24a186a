"""How a service's writes reach the watch streams of every replica: the change outbox.

A service announces each change inside the write transaction that made it:

    with changes.recording() as record:
        node = store.revoke(node_id)         # joins the same transaction
        record("nodes", Event(...))

On SQLite (one process owns the state) the event goes straight to the local feed once the
transaction commits. On PostgreSQL it is appended to the `changes` table in that same
transaction, and a NOTIFY wakes every replica's relay, which reads the rows past its
cursor in `seq` order and publishes them to its local feeds; a poll every few seconds
covers a missed notification. Writers of one service hold its advisory lock until they
commit, so `seq` order is commit order and a cursor never skips a row (ADR 0009). Local
writes take the same path as remote ones on PostgreSQL: one path, one order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from quarry.state.database import (
    CONNECTION_OPTIONS,
    POSTGRESQL,
    PostgresDatabase,
    StateDatabase,
)
from quarry.state.migrations import Migration
from quarry.state.table_schema import BLOB, INTEGER, SERIAL, TEXT, Column, Index, Table

log = logging.getLogger(__name__)

# The relay polls this often even without a notification (a NOTIFY lost to a reconnect).
POLL_INTERVAL_S = 2.0
# Rows older than this are pruned; a watcher away longer re-snapshots on reconnect anyway.
RETENTION_S = 3600
PRUNE_INTERVAL_S = 60.0
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
READ_BATCH = 1000
SETTLE_TIMEOUT_S = 5.0

CHANGES_TABLE = Table(
    "changes",
    (
        Column("seq", SERIAL),
        Column("feed", TEXT),
        Column("payload", BLOB),
        Column("created_at_ms", INTEGER),
    ),
    primary_key=("seq",),
    indexes=(
        Index("changes_by_feed", ("feed", "seq")),
        Index("changes_by_time", ("created_at_ms",)),
    ),
)
# PostgreSQL only: SQLite needs no outbox, its one process publishes directly.
MIGRATIONS = (Migration(1, "change outbox", tables=(CHANGES_TABLE,), dialects=(POSTGRESQL,)),)


@dataclass(frozen=True)
class Feed:
    """One kind of change: how to publish it locally, and its bytes in the outbox."""

    publish: Callable[[Any], None]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


Record = Callable[[str, Any], None]


class ChangeLog:
    """The feeds of one service, fed from its own writes (SQLite) or from the outbox."""

    def __init__(self, database: StateDatabase, service: str, feeds: dict[str, Feed]) -> None:
        self._database = database
        self._feeds = feeds
        self._channel = f"quarry_changes_{service}"
        self._cursor = 0
        self.relayed = 0
        # The newest change this replica recorded, and callers waiting to see it relayed.
        self._recorded = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @contextmanager
    def recording(self) -> Iterator[Record]:
        """A write transaction, and a function announcing the changes it makes.

        Never await inside it: the transaction (and SQLite's lock) belongs to the thread,
        and another coroutine on the loop would join it."""
        with self._database.transaction() as tx:
            notified = False

            def record(feed: str, event: Any) -> None:
                nonlocal notified
                chosen = self._feeds[feed]
                if not self._database.shared:
                    tx.after_commit(lambda: chosen.publish(event))
                    return
                row = tx.execute(
                    "INSERT INTO changes (feed, payload, created_at_ms) VALUES (?, ?, ?)"
                    " RETURNING seq",
                    (feed, chosen.encode(event), int(time.time() * 1000)),
                ).fetchone()
                tx.after_commit(lambda: self._note_recorded(row[0]))
                if not notified:
                    # Delivered at commit, and only if it commits.
                    tx.execute("SELECT pg_notify(?, '')", (self._channel,))
                    notified = True

            yield record

    def _note_recorded(self, seq: int) -> None:
        self._recorded = max(self._recorded, seq)

    async def settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Return once this replica's watchers were sent every change it recorded, so a
        caller answered after a write finds it in any stream it opens next (as on SQLite).
        A relay that cannot keep up only delays the answer by timeout_s."""
        if self._cursor >= self._recorded:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._recorded, waiter))
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            log.warning("change relay behind by %d changes", self._recorded - self._cursor)

    def _wake_waiters(self) -> None:
        still = []
        for seq, waiter in self._waiters:
            if seq <= self._cursor:
                if not waiter.done():
                    waiter.set_result(None)
            elif not waiter.done():
                still.append((seq, waiter))
        self._waiters = still

    def start_position(self) -> None:
        """Relay only what commits from now on (what came before is in every snapshot)."""
        if self._database.shared:
            row = self._database.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
            self._cursor = row[0]

    async def relay_forever(self) -> None:
        """PostgreSQL: publish every change of this service's feeds, in commit order."""
        if not isinstance(self._database, PostgresDatabase):
            return
        import psycopg

        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._database.url, autocommit=True, **CONNECTION_OPTIONS
                )
                async with conn:
                    await conn.execute(f"LISTEN {self._channel}")
                    attempt = 0
                    await self._follow(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("change relay: %s; reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _follow(self, conn: Any) -> None:
        pruned_at = 0.0
        while True:
            await self._catch_up(conn)
            if time.monotonic() - pruned_at >= PRUNE_INTERVAL_S:
                await self._prune(conn)
                pruned_at = time.monotonic()
            async for _ in conn.notifies(timeout=POLL_INTERVAL_S, stop_after=1):
                pass

    async def _catch_up(self, conn: Any) -> None:
        while True:
            cursor = await conn.execute(
                "SELECT seq, feed, payload FROM changes WHERE feed = ANY(%s) AND seq > %s"
                " ORDER BY seq LIMIT %s",
                (list(self._feeds), self._cursor, READ_BATCH),
            )
            rows = await cursor.fetchall()
            for seq, feed, payload in rows:
                self._publish(feed, bytes(payload))
                self._cursor = seq
            self._wake_waiters()
            if len(rows) < READ_BATCH:
                return

    def _publish(self, feed: str, payload: bytes) -> None:
        chosen = self._feeds[feed]
        try:
            event = chosen.decode(payload)
        except Exception:
            # A row this version cannot read (a newer replica wrote it): skip, keep going.
            log.exception("change %s of feed %s unreadable; skipped", self._cursor, feed)
            return
        try:
            chosen.publish(event)
        except Exception:
            # Its subscribers re-read state on reconnect; relaying it again and again would
            # not help them, and would stall every later change behind it.
            log.exception("a change of feed %s could not be published; skipped", feed)
            return
        self.relayed += 1

    async def _prune(self, conn: Any) -> None:
        oldest_kept = int(time.time() * 1000) - RETENTION_S * 1000
        await conn.execute(
            "DELETE FROM changes WHERE feed = ANY(%s) AND created_at_ms < %s",
            (list(self._feeds), oldest_kept),
        )


def protobuf_feed(publish: Callable[[Any], None], message_class: Any) -> Feed:
    """A feed of protobuf messages: their wire bytes in the outbox."""
    return Feed(publish, lambda message: message.SerializeToString(), message_class.FromString)
