"""Campaigns and per-host states, in SQLite or PostgreSQL.

A campaign is open while it is neither cancelled nor expired. Each targeted host has
one row per campaign that only moves forward:

    targeted | offline  --read-->  delivered  --write-->  answered | failed
    targeted            --campaign closes unread-->  expired

`offline` is set at launch for hosts not seen for a while; like `expired`, it still
moves on if the host reads the campaign while it is open, or answers late. The first
answer wins, so a re-sent distributed write changes nothing. A host that read the
campaign and never answered (its discovery query found nothing, or it died) stays
`delivered`. All SQL of the service lives here, behind CampaignStore, in SQL both
backends run (quarry/state/database.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from quarry.state.database import SQLITE, StateDatabase, StateStore, Transaction
from quarry.state.migrations import Migration
from quarry.state.service_database import SchemaComponent, ServiceSchema
from quarry.state.table_schema import INTEGER, TEXT, Column, Index, Table

CAMPAIGNS = Table(
    "campaigns",
    (
        Column("campaign_id", TEXT),
        Column("sql", TEXT),
        Column("target_all", INTEGER),
        Column("node_ids_json", TEXT),
        Column("created_at", INTEGER),
        Column("expires_at", INTEGER),
        Column("cancelled", INTEGER, default=0),
        Column("author", TEXT),
        # When CLOSE was announced (cancel or expiry); 0 while it has not been.
        Column("closed_at", INTEGER, default=0),
        # Added before migrations were versioned (ADDED_CAMPAIGN_COLUMNS).
        Column("targeting_json", TEXT, default="{}"),
        Column("discovery_sql", TEXT, default=""),
        Column("open_targeting", INTEGER, default=0),
        Column("targeted", INTEGER, default=0),
    ),
    primary_key=("campaign_id",),
    indexes=(Index("campaigns_to_close", ("closed_at", "expires_at")),),
)
HOST_STATES = Table(
    "host_states",
    (
        Column("campaign_id", TEXT),
        Column("node_id", TEXT),
        Column("host_identifier", TEXT, default=""),
        Column("state", TEXT),
        Column("status", INTEGER, default=0),
        Column("message", TEXT, default=""),
        Column("row_count", INTEGER, default=0),
        Column("wall_time_ms", INTEGER, default=0),
        Column("user_time", INTEGER, default=0),
        Column("system_time", INTEGER, default=0),
        Column("memory", INTEGER, default=0),
        Column("delivered_at", INTEGER, default=0),
        Column("answered_at", INTEGER, default=0),
    ),
    primary_key=("campaign_id", "node_id"),
    indexes=(Index("host_states_by_state", ("campaign_id", "state")),),
)
# Columns added to `campaigns` after the first release, before migrations were
# versioned: an SQLite file of that time gets them when it is migrated.
ADDED_CAMPAIGN_COLUMNS = ("targeting_json", "discovery_sql", "open_targeting", "targeted")


def _upgrade_unversioned_campaigns(tx: Transaction, dialect: str) -> None:
    """An SQLite file from before ADDED_CAMPAIGN_COLUMNS gets them."""
    if dialect != SQLITE:
        return
    present = {row[1] for row in tx.execute("PRAGMA table_info(campaigns)")}
    for name in ADDED_CAMPAIGN_COLUMNS:
        if name not in present:
            tx.execute(CAMPAIGNS.add_column(name, SQLITE))


MIGRATIONS = (
    Migration(
        1,
        "campaigns and host states",
        tables=(CAMPAIGNS, HOST_STATES),
        python=_upgrade_unversioned_campaigns,
    ),
)
SERVICE_SCHEMA = ServiceSchema("distributed", (SchemaComponent("distributed", MIGRATIONS),))

TARGETED, DELIVERED, ANSWERED, FAILED = "targeted", "delivered", "answered", "failed"
EXPIRED, OFFLINE = "expired", "offline"
STATES = (TARGETED, OFFLINE, DELIVERED, ANSWERED, FAILED, EXPIRED)
# States a read moves to delivered, and an answer to answered or failed.
UNREAD = (TARGETED, OFFLINE, EXPIRED)
UNANSWERED = (*UNREAD, DELIVERED)
CAMPAIGN_COLUMNS = (
    "campaign_id, sql, target_all, node_ids_json, created_at, expires_at, cancelled, author,"
    " targeting_json, discovery_sql, open_targeting, targeted"
)
HOST_COLUMNS = (
    "node_id, host_identifier, state, status, message, row_count, wall_time_ms, user_time,"
    " system_time, memory, delivered_at, answered_at"
)
OPEN = "cancelled = 0 AND expires_at > ?"
OPEN_C = "cancelled = 0 AND c.expires_at > ?"
# ListCampaigns' status filter -> SQL condition, and whether it takes `now`.
STATUS_FILTERS = {
    "open": (OPEN, True),
    "closed": (f"NOT ({OPEN})", True),
    "cancelled": ("cancelled = 1", False),
}
# The author of the campaigns the config service starts to evaluate a label ("label
# NAME", protos/v1/distributed.proto ListCampaignsRequest).
LABEL_AUTHORS = "label %"


@dataclass(frozen=True)
class CampaignQuery:
    """Which campaigns ListCampaigns returns (newest first)."""

    include_closed: bool = False
    status: str = ""
    author: str = ""
    include_labels: bool = True
    limit: int = 0


@dataclass(frozen=True)
class CampaignRecord:
    campaign_id: str
    sql: str
    target_all: bool
    node_ids: list[str]
    created_at: int
    expires_at: int
    cancelled: bool
    author: str
    # tags, platforms, labels, percent, min_osquery_version (see targeting.Targets).
    targeting: dict = field(default_factory=dict)
    discovery_sql: str = ""
    open_targeting: bool = False
    targeted: int = 0


@dataclass(frozen=True)
class HostRecord:
    node_id: str
    host_identifier: str
    state: str
    status: int = 0
    message: str = ""
    row_count: int = 0
    wall_time_ms: int = 0
    user_time: int = 0
    system_time: int = 0
    memory: int = 0
    delivered_at: int = 0
    answered_at: int = 0


@dataclass(frozen=True)
class AnswerRecord:
    """One node's answer to one campaign, as the gateway reports it."""

    campaign_id: str
    host: HostRecord


@dataclass
class ActivityOutcome:
    """What a batch changed: new deliveries and answers, and what it ignored."""

    delivered: list[tuple[str, HostRecord]] = field(default_factory=list)  # newly delivered
    repeated_deliveries: int = 0
    answers: list[AnswerRecord] = field(default_factory=list)  # newly stored
    duplicate_answers: int = 0
    unknown_campaign_deliveries: int = 0
    unknown_campaign_answers: int = 0


class CampaignStore(StateStore):
    def __init__(self, database: StateDatabase) -> None:
        super().__init__(database)

    def create(self, campaign: CampaignRecord, targets: list[tuple[str, str, str]]) -> None:
        """Store a campaign and one row per (node_id, host_identifier, first state)."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO campaigns ({CAMPAIGN_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    campaign.campaign_id,
                    campaign.sql,
                    int(campaign.target_all),
                    json.dumps(campaign.node_ids),
                    campaign.created_at,
                    campaign.expires_at,
                    int(campaign.cancelled),
                    campaign.author,
                    json.dumps(campaign.targeting),
                    campaign.discovery_sql,
                    int(campaign.open_targeting),
                    campaign.targeted,
                ),
            )
            db.executemany(
                "INSERT INTO host_states (campaign_id, node_id, host_identifier, state)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                ((campaign.campaign_id, node, host, state) for node, host, state in targets),
            )

    def campaign(self, campaign_id: str) -> CampaignRecord | None:
        row = self._db.execute(
            f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE campaign_id = ?", (campaign_id,)
        ).fetchone()
        return _campaign(row) if row else None

    def hosts(self, campaign_id: str, node_ids: Sequence[str] = ()) -> list[HostRecord]:
        """Every host of a campaign, or only those of `node_ids`."""
        where, args = "campaign_id = ?", [campaign_id]
        if node_ids:
            where += f" AND node_id IN ({','.join('?' * len(node_ids))})"
            args.extend(node_ids)
        rows = self._db.execute(
            f"SELECT {HOST_COLUMNS} FROM host_states WHERE {where} ORDER BY node_id", args
        )
        return [HostRecord(*row) for row in rows]

    def counts(self, campaign_id: str) -> dict[str, int]:
        """Hosts per state (every state present, zeros included)."""
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM host_states WHERE campaign_id = ? GROUP BY state",
            (campaign_id,),
        )
        return {state: 0 for state in STATES} | {state: int(n) for state, n in rows}

    def counts_in_open(self, now: int) -> dict[str, int]:
        """Hosts per state across every open campaign (the metrics' gauge)."""
        rows = self._db.execute(
            "SELECT h.state, COUNT(*) FROM host_states h"
            f" JOIN campaigns c ON c.campaign_id = h.campaign_id WHERE c.{OPEN_C} GROUP BY h.state",
            (now,),
        )
        return {state: 0 for state in STATES} | {state: int(n) for state, n in rows}

    def campaigns(self, include_closed: bool, now: int) -> list[CampaignRecord]:
        where, args = ("1 = 1", ()) if include_closed else (OPEN, (now,))
        rows = self._db.execute(
            f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE {where} ORDER BY created_at", args
        )
        return [_campaign(row) for row in rows]

    def listed(self, query: CampaignQuery, now: int) -> list[CampaignRecord]:
        """The campaigns a person asked for, newest first."""
        conditions: list[str] = []
        args: list[object] = []
        if query.status:
            condition, takes_now = STATUS_FILTERS[query.status]
            conditions.append(condition)
            args += [now] if takes_now else []
        elif not query.include_closed:
            conditions.append(OPEN)
            args.append(now)
        if query.author:
            conditions.append("author = ?")
            args.append(query.author)
        if not query.include_labels:
            conditions.append("author NOT LIKE ?")
            args.append(LABEL_AUTHORS)
        where = " AND ".join(conditions) or "1 = 1"
        limit = f" LIMIT {int(query.limit)}" if query.limit > 0 else ""
        rows = self._db.execute(
            f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE {where}"
            f" ORDER BY created_at DESC, campaign_id DESC{limit}",
            args,
        )
        return [_campaign(row) for row in rows]

    def count_open(self, now: int) -> int:
        return self._db.execute(f"SELECT COUNT(*) FROM campaigns WHERE {OPEN}", (now,)).fetchone()[
            0
        ]

    def answered_in_open(self, now: int) -> list[tuple[str, str]]:
        """(campaign, node) for every node that answered a campaign still open."""
        rows = self._db.execute(
            "SELECT h.campaign_id, h.node_id FROM host_states h"
            " JOIN campaigns c ON c.campaign_id = h.campaign_id"
            " WHERE h.state IN (?, ?) AND c.cancelled = 0 AND c.expires_at > ?",
            (ANSWERED, FAILED, now),
        )
        return list(rows)

    def cancel(self, campaign_id: str, now: int) -> CampaignRecord | None:
        """Cancel: no host reads it any more, so the hosts that have not are expired."""
        with self._transaction() as db:
            db.execute(
                "UPDATE campaigns SET cancelled = 1,"
                " closed_at = CASE WHEN closed_at = 0 THEN ? ELSE closed_at END"
                " WHERE campaign_id = ?",
                (now, campaign_id),
            )
            _expire_unread(db, campaign_id)
        return self.campaign(campaign_id)

    def close_expired(self, now: int) -> list[CampaignRecord]:
        """Expired campaigns whose CLOSE has not been announced yet, now marked announced;
        their hosts still targeted become expired."""
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE closed_at = 0 AND expires_at <= ?",
                (now,),
            ).fetchall()
            db.execute(
                "UPDATE campaigns SET closed_at = ? WHERE closed_at = 0 AND expires_at <= ?",
                (now, now),
            )
            for row in rows:
                _expire_unread(db, row[0])
        return [_campaign(row) for row in rows]

    def record_activity(
        self, deliveries: list[tuple[str, HostRecord]], answers: list[AnswerRecord]
    ) -> ActivityOutcome:
        """Apply deliveries (campaign, host with delivered_at) and answers in one transaction."""
        outcome = ActivityOutcome()
        with self._transaction() as db:
            known: dict[str, bool] = {}
            for campaign_id, delivery in deliveries:
                if not _known(db, known, campaign_id):
                    outcome.unknown_campaign_deliveries += 1
                elif _deliver(db, campaign_id, delivery):
                    outcome.delivered.append((campaign_id, delivery))
                else:
                    outcome.repeated_deliveries += 1
            for answer in answers:
                if not _known(db, known, answer.campaign_id):
                    outcome.unknown_campaign_answers += 1
                elif _answer(db, answer):
                    outcome.answers.append(answer)
                else:
                    outcome.duplicate_answers += 1
        return outcome


def _known(db: Transaction, known: dict[str, bool], campaign_id: str) -> bool:
    if campaign_id not in known:
        row = db.execute("SELECT 1 FROM campaigns WHERE campaign_id = ?", (campaign_id,))
        known[campaign_id] = row.fetchone() is not None
    return known[campaign_id]


def _expire_unread(db: Transaction, campaign_id: str) -> None:
    db.execute(
        "UPDATE host_states SET state = ? WHERE campaign_id = ? AND state = ?",
        (EXPIRED, campaign_id, TARGETED),
    )


def _deliver(db: Transaction, campaign_id: str, host: HostRecord) -> bool:
    """Mark delivered (adding the host if an open campaign reached a node that was not
    targeted at launch); True if new."""
    # The first delivery time stands; an answer that arrived first keeps its state.
    cursor = db.execute(
        "INSERT INTO host_states (campaign_id, node_id, host_identifier, state, delivered_at)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (campaign_id, node_id) DO UPDATE SET delivered_at = excluded.delivered_at,"
        " host_identifier = CASE WHEN host_states.host_identifier = ''"
        " THEN excluded.host_identifier ELSE host_states.host_identifier END,"
        f" state = CASE WHEN host_states.state IN {UNREAD!r} THEN '{DELIVERED}'"
        " ELSE host_states.state END"
        " WHERE host_states.delivered_at = 0",
        (campaign_id, host.node_id, host.host_identifier, DELIVERED, host.delivered_at),
    )
    return cursor.rowcount > 0


def _answer(db: Transaction, answer: AnswerRecord) -> bool:
    """Store the answer unless this node already answered this campaign; True if stored."""
    h = answer.host
    cursor = db.execute(
        "INSERT INTO host_states (campaign_id, node_id, host_identifier, state, status, message,"
        " row_count, wall_time_ms, user_time, system_time, memory, answered_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (campaign_id, node_id) DO UPDATE SET"
        " host_identifier = CASE WHEN excluded.host_identifier = ''"
        " THEN host_states.host_identifier ELSE excluded.host_identifier END,"
        " state = excluded.state, status = excluded.status, message = excluded.message,"
        " row_count = excluded.row_count, wall_time_ms = excluded.wall_time_ms,"
        " user_time = excluded.user_time, system_time = excluded.system_time,"
        " memory = excluded.memory, answered_at = excluded.answered_at"
        f" WHERE host_states.state IN {UNANSWERED!r}",
        (
            answer.campaign_id,
            h.node_id,
            h.host_identifier,
            h.state,
            h.status,
            h.message,
            h.row_count,
            h.wall_time_ms,
            h.user_time,
            h.system_time,
            h.memory,
            h.answered_at,
        ),
    )
    return cursor.rowcount > 0


def _campaign(row: tuple) -> CampaignRecord:
    return CampaignRecord(
        campaign_id=row[0],
        sql=row[1],
        target_all=bool(row[2]),
        node_ids=json.loads(row[3]),
        created_at=row[4],
        expires_at=row[5],
        cancelled=bool(row[6]),
        author=row[7],
        targeting=json.loads(row[8]),
        discovery_sql=row[9],
        open_targeting=bool(row[10]),
        targeted=row[11],
    )
