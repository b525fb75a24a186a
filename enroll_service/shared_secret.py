"""The shared enroll secret every osquery node presents to enroll.

It comes from QUARRY_ENROLL_SECRET when set, otherwise from a file (by default
`state_dir/enroll_secret`, made by quarry/state/directory.py before the service starts)
that osquery's --enroll_secret_path can point at too.
The file is re-read for every enrollment call (once per group a gateway sends), so
rotating it needs no restart.
"""

from __future__ import annotations

import hmac

from quarry.runtime.settings import Settings
from quarry.state.directory import enroll_secret_file


def current_secret(settings: Settings) -> str:
    """The secret in force now; empty when none is configured or the file is unreadable."""
    if settings.enroll_secret:
        return settings.enroll_secret
    try:
        # osquery trims the file it sends, so we trim ours the same way.
        return enroll_secret_file(settings).read_text().strip()
    except OSError:
        return ""


def secret_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison; an empty expected secret never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
