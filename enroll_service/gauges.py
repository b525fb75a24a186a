"""The enroll gauges that move with the clock alone: suspected clones (the clone window
slides), secrets by state (they expire) and valid nodes (other replicas enroll and revoke)."""

from __future__ import annotations

import time

from enroll_service import metrics
from enroll_service.clone_watch import CloneWatch
from enroll_service.enroll_secrets import STATES
from enroll_service.store import NodeStore


def refresh_gauges(store: NodeStore, clones: CloneWatch) -> None:
    """Recount what changes with the clock alone; prune the enrollment history."""
    now = int(time.time())
    clones.recount(now)
    states = [record.state(now) for record in store.secrets()]
    for state in STATES:
        metrics.SECRETS.labels(state).set(states.count(state))
    # Other replicas enroll and revoke too: recount rather than trust our own tally.
    metrics.VALID_NODES.set(store.recount_valid())
    store.forget_enrollments_before(clones.policy.window_start(now))
