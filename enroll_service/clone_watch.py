"""Which node identities are suspected clones (enrolled too often within the clone window).

The set is rebuilt by `recount` and kept current at each enrollment, so the gauge needs no
scan of the enrollment history each time (docs/enrollment.md, ADR 0006).
"""

from __future__ import annotations

import logging
import time

from enroll_service import metrics
from enroll_service.node_identity import ClonePolicy, EnrollmentHistory
from enroll_service.store import NodeStore

log = logging.getLogger(__name__)


class CloneWatch:
    def __init__(self, policy: ClonePolicy, store: NodeStore) -> None:
        self.policy = policy
        self._store = store
        self._suspected: set[str] = set()

    def history(self, identity: str, now: int) -> EnrollmentHistory:
        """The identity's enrollments within the clone window."""
        return self._store.enrollment_history(identity, self.policy.window_start(now))

    def suspected_identities(self, now: int | None = None) -> set[str]:
        now = int(time.time()) if now is None else now
        histories = self._store.enrollment_histories(self.policy.window_start(now))
        return {i for i, h in histories.items() if self.policy.suspected_clone(h)}

    def recount(self, now: int) -> None:
        self._suspected = self.suspected_identities(now)
        metrics.SUSPECTED_CLONES.set(len(self._suspected))

    def note(self, identity: str, now: int) -> None:
        """After an enrollment of identity: is it a suspected clone now?"""
        history = self.history(identity, now)
        if self.policy.suspected_clone(history):
            if identity not in self._suspected:
                log.warning("identity %r is a suspected clone: %s", identity, history)
            self._suspected.add(identity)
        else:
            self._suspected.discard(identity)
        metrics.SUSPECTED_CLONES.set(len(self._suspected))
