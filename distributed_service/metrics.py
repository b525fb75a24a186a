"""Prometheus metrics of the distributed service (never labelled by campaign or host)."""

from prometheus_client import Counter, Gauge

from distributed_service.store import ANSWERED, FAILED, STATES

CAMPAIGNS_STARTED = Counter(
    "quarry_distributed_campaigns_started_total", "Live query campaigns started."
)
OPEN_CAMPAIGNS = Gauge(
    "quarry_distributed_open_campaigns", "Campaigns neither cancelled nor expired."
)
CAMPAIGNS_CLOSED = Counter(
    "quarry_distributed_campaigns_closed_total",
    "Campaigns closed, by reason (cancelled, expired).",
    ["reason"],
)
DELIVERIES = Counter(
    "quarry_distributed_deliveries_total",
    "Reported deliveries by outcome (new, repeat, unknown_campaign).",
    ["outcome"],
)
ANSWERS = Counter(
    "quarry_distributed_answers_total",
    "Reported answers by outcome (answered, failed, duplicate, unknown_campaign).",
    ["outcome"],
)
WATCH_STREAMS = Gauge("quarry_distributed_watch_streams", "Open WatchCampaigns streams.")
RESULT_ROWS = Counter(
    "quarry_distributed_result_rows_total",
    "Rows that answers reported (rate() gives result rows per second).",
)
OPEN_CAMPAIGN_HOSTS = Gauge(
    "quarry_distributed_open_campaign_hosts",
    "Hosts of the open campaigns by state (targeted, offline, delivered, answered, failed,"
    " expired).",
    ["state"],
)
PENDING_DELIVERIES = Gauge(
    "quarry_distributed_pending_deliveries",
    "Hosts of open campaigns that have not read them yet (targeted or offline).",
)

# Every bounded label value is exported from the start, at zero (docs/observability.md).
for _reason in ("cancelled", "expired"):
    CAMPAIGNS_CLOSED.labels(_reason)
for _outcome in ("new", "repeat", "unknown_campaign"):
    DELIVERIES.labels(_outcome)
for _outcome in (ANSWERED, FAILED, "duplicate", "unknown_campaign"):
    ANSWERS.labels(_outcome)
for _state in STATES:
    OPEN_CAMPAIGN_HOSTS.labels(_state)
