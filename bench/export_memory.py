"""What a live query's export costs the API process in memory, against its size.

The export (GET /api/v1/queries/{query}/export) streams a page of 1000 rows at a time
from ClickHouse to the client, so the API's memory should not grow with the campaign.
This starts its own `quarry up`, stores `--rows` rows of one campaign directly in
quarry.distributed_results (an admin `quarry sql` INSERT: emulated hosts answer a few
rows each), downloads the CSV and the JSON export while sampling the API process's RSS
(VmRSS from /proc every 20 ms), and prints, for each, the bytes exported, the RSS before
and at its peak, and the ratio of the RSS growth to the bytes exported (one run).

    python -m bench.export_memory --rows 200000
"""

from __future__ import annotations

import argparse
import json
import ssl
import tempfile
import threading
import time
from pathlib import Path

import httpx

from quarry.runtime.settings import PORT_OFFSETS
from tests.quarry_cluster import QuarryCluster, quarry_cluster

VALUE_CHARS = 200


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError("no VmRSS")


class PeakRss:
    """The highest RSS of pid while the block runs, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def store_rows(cluster: QuarryCluster, campaign_id: str, rows: int) -> None:
    value = "x" * VALUE_CHARS
    cluster.sql(
        "INSERT INTO quarry.distributed_results (campaign_id, host_identifier, row_index,"
        " column_names, column_values, node_id, received_at, batch_id)"
        f" SELECT '{campaign_id}', concat('host-', toString(number % 50)), toUInt32(number),"
        f" ['n', 'text', 'kind'], [toString(number), '{value}', 'bench'], 'bench',"
        f" now(), 'bench' FROM system.numbers LIMIT {int(rows)}"
    )


def measure(cluster: QuarryCluster, client: httpx.Client, qid: str, kind: str) -> dict:
    pid = cluster.service_pid("api")
    before = rss_bytes(pid)
    exported = 0
    with PeakRss(pid) as peak:
        url = f"/api/v1/queries/{qid}/export"
        with client.stream("GET", url, params={"format": kind}) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                exported += len(chunk)
    growth = max(0, peak.peak - before)
    return {
        "format": kind,
        "exported_bytes": exported,
        "rss_before_bytes": before,
        "rss_peak_bytes": peak.peak,
        "rss_growth_per_exported_byte": round(growth / exported, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="quarry-export-") as tmp,
        quarry_cluster(Path(tmp)) as cluster,
    ):
        token = (cluster.state_dir / "admin_token").read_text().strip()
        client = httpx.Client(
            base_url=f"https://localhost:{cluster.port_base + PORT_OFFSETS['api_port']}",
            verify=ssl.create_default_context(cafile=cluster.ca_cert),
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        )
        # An open campaign with no host: only a record the export's check finds.
        started = client.post("/api/v1/queries", json={"sql": "SELECT 1", "ttl_seconds": 3600})
        started.raise_for_status()
        qid = started.json()["campaign_id"]
        store_rows(cluster, qid, args.rows)
        results = [measure(cluster, client, qid, kind) for kind in ("csv", "json")]
        print(json.dumps({"rows": args.rows, "exports": results}, indent=2))


if __name__ == "__main__":
    main()
