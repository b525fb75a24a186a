"""An osquery client emulator: stands in for osqueryd, which cannot run here.

It speaks osquery's TLS remote protocol exactly as docs/osquery-protocol.md
describes it (headers and their order, body key order, gzip bytes, retries, transparent
resend, node_invalid handling), over asyncio, so one process can emulate thousands of hosts.

    from tests.emulator import HostProfile, LogBuffer, OsqueryNode, log_records

    async with OsqueryNode(
        server="localhost:8443", ca_file=tls.ca_cert, enroll_secret="s3cr3t",
        profile=HostProfile.make(7), retry_time_scale=0,
    ) as node:
        await node.get_node_key()            # enrolls (12 attempts, n² backoff)
        config = await node.fetch_config()   # dict, or None after 3 failed attempts
        record = log_records.status_record(node.host_identifier, 1736072430, "hello")
        assert await node.send_logs("status", [record])
        round_ = await node.run_distributed_once()   # read, run, write

`retry_time_scale=0` keeps osquery's retry logic but skips its sleeps; `node.retry_sleeps`
lists the sleeps osquery would have taken, and `node.counters` counts requests, resends and
connections. Share one `ssl_context` (see `osquery_ssl_context`) and one `HttpCounters`
across many nodes in a benchmark.
"""

from tests.emulator import log_records
from tests.emulator.host_profile import HostProfile
from tests.emulator.http_client import (
    HttpConnection,
    HttpCounters,
    HttpResponse,
    ServerAddress,
    osquery_headers,
    osquery_ssl_context,
)
from tests.emulator.node import (
    FLEET_ENDPOINTS,
    OSQUERY_DOC_ENDPOINTS,
    CarveResult,
    DistributedRound,
    DistributedWork,
    Endpoints,
    LogBuffer,
    OsqueryNode,
    QueryResult,
    gzip_like_osquery,
)
from tests.emulator.response import Verdict, judge_response, parse_body
from tests.emulator.tables import QueryOutcome, TableExecutor

__all__ = [
    "FLEET_ENDPOINTS",
    "OSQUERY_DOC_ENDPOINTS",
    "CarveResult",
    "DistributedRound",
    "DistributedWork",
    "Endpoints",
    "HostProfile",
    "HttpConnection",
    "HttpCounters",
    "HttpResponse",
    "LogBuffer",
    "OsqueryNode",
    "QueryOutcome",
    "QueryResult",
    "ServerAddress",
    "TableExecutor",
    "Verdict",
    "gzip_like_osquery",
    "judge_response",
    "log_records",
    "osquery_headers",
    "osquery_ssl_context",
    "parse_body",
]
