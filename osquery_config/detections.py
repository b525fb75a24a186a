"""Detection rules of the managed state: SQL over the logs in ClickHouse that returns the
rows to alert on (docs/detections.md, docs/adr/0021-detections-on-arrival.md).

A rule is part of the GitOps files (`detections:` beside `blocks:` and `labels:`) and is
checked at `quarry config apply` like the rest. Its SQL names the rows to look at with the
`{arrived}` placeholder, which the engine replaces with the window of rows that arrived
since the rule's last run (`stored_at`, stamped by ClickHouse at insert), so each row is
evaluated once. Only shape and meaning live here; running rules is detection_service's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quarry.runtime.sql_text import statements

ARRIVED = "{arrived}"
SEVERITIES = ("info", "low", "medium", "high", "critical")
FIELDS = ("sql", "severity", "schedule", "dedup_key", "resolve_after", "description")
DEFAULT_DEDUP_KEY = ("host_identifier",)
DEFAULT_SCHEDULE_S = 30
DEFAULT_RESOLVE_AFTER_S = 3600
MIN_SCHEDULE_S = 5
MAX_SCHEDULE_S = 86_400
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
READS = re.compile(r"^\s*(\(\s*)*(SELECT|WITH)\b", re.I)


class InvalidDetection(ValueError):
    """A rule that cannot run as written: every problem found, one a line."""

    def __init__(self, *problems: str) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Detection:
    """One rule: which rows to alert on, how bad, how hits group into one alert, how often."""

    name: str
    sql: str
    severity: str = "medium"
    schedule: int = DEFAULT_SCHEDULE_S
    dedup_key: tuple[str, ...] = DEFAULT_DEDUP_KEY
    resolve_after: int = DEFAULT_RESOLVE_AFTER_S
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dedup_key", tuple(self.dedup_key))

    def to_document(self) -> dict[str, object]:
        document: dict[str, object] = {
            "sql": self.sql,
            "severity": self.severity,
            "schedule": self.schedule,
            "dedup_key": list(self.dedup_key),
            "resolve_after": self.resolve_after,
        }
        if self.description:
            document["description"] = self.description
        return document

    def window_sql(self, start: int, end: int) -> str:
        """The rule's SQL over the rows that arrived in [start, end) (unix seconds)."""
        return self.sql.replace(ARRIVED, arrived_condition(start, end)).strip().rstrip(";")


def arrived_condition(start: int, end: int) -> str:
    # Whole seconds on both sides: stored_at is a DateTime, so [start, end) windows that
    # share their bounds cover every second once (ClickHouse 18.16 reads this too).
    return f"(stored_at >= toDateTime({int(start)}) AND stored_at < toDateTime({int(end)}))"


def parse_detection(name: str, value: object) -> Detection:
    """A rule from its document (YAML or JSON), or InvalidDetection saying what to fix."""
    if not isinstance(value, dict):
        raise InvalidDetection(f"detection {name!r} must be a mapping with at least 'sql'")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise InvalidDetection(
            f"detection {name!r}: unknown field {unknown[0]!r} (expected {', '.join(FIELDS)})"
        )
    sql = value.get("sql")
    if not isinstance(sql, str):
        raise InvalidDetection(f"detection {name!r}: 'sql' must be a string of SQL")
    dedup_key = value.get("dedup_key", list(DEFAULT_DEDUP_KEY))
    if not isinstance(dedup_key, list) or not all(isinstance(c, str) for c in dedup_key):
        raise InvalidDetection(f"detection {name!r}: 'dedup_key' must be a list of column names")
    description = value.get("description", "")
    if not isinstance(description, str):
        raise InvalidDetection(f"detection {name!r}: 'description' must be a string")
    return Detection(
        name=name,
        sql=sql,
        severity=str(value.get("severity", "medium")),
        schedule=_whole_seconds(name, value, "schedule", DEFAULT_SCHEDULE_S),
        dedup_key=tuple(dedup_key),
        resolve_after=_whole_seconds(name, value, "resolve_after", DEFAULT_RESOLVE_AFTER_S),
        description=description,
    )


def _whole_seconds(name: str, value: dict, field: str, default: int) -> int:
    seconds = value.get(field, default)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise InvalidDetection(f"detection {name!r}: {field!r} must be a whole number of seconds")
    return seconds


def check_detection(rule: Detection) -> None:
    """Raise InvalidDetection naming every reason the engine could not run the rule."""
    where = f"detection {rule.name!r}"
    problems = []
    if not NAME.match(rule.name):
        problems.append(
            f"{where}: a name is letters, digits, '_', '.' or '-' (at most 100), "
            "starting with a letter or digit"
        )
    count = len(statements(rule.sql))
    if count != 1:
        problems.append(f"{where}: 'sql' must be one statement (found {count})")
    elif not READS.match(rule.sql):
        problems.append(f"{where}: 'sql' must be a SELECT (or WITH ... SELECT)")
    if ARRIVED not in rule.sql:
        problems.append(
            f"{where}: 'sql' must contain {ARRIVED} in its WHERE clause (the rows that "
            "arrived since the last run), e.g. WHERE {arrived} AND query = 'processes'"
        )
    if rule.severity not in SEVERITIES:
        problems.append(f"{where}: 'severity' must be one of {', '.join(SEVERITIES)}")
    if not MIN_SCHEDULE_S <= rule.schedule <= MAX_SCHEDULE_S:
        problems.append(f"{where}: 'schedule' must be {MIN_SCHEDULE_S} to {MAX_SCHEDULE_S} seconds")
    if rule.resolve_after < rule.schedule:
        problems.append(f"{where}: 'resolve_after' must be at least its schedule")
    if not rule.dedup_key:
        problems.append(f"{where}: 'dedup_key' must name at least one column")
    bad = [c for c in rule.dedup_key if not COLUMN.match(c)]
    if bad:
        problems.append(f"{where}: dedup_key column {bad[0]!r} is not a column name")
    if problems:
        raise InvalidDetection(*problems)
