"""`python -m enroll_service`: run the enroll service, settings from QUARRY_* variables.

`python -m enroll_service migrate [--dry-run] [--json]` applies its state's schema
migrations instead (what `quarry migrate` runs). `quarry serve enroll` and `quarry up`
run this (quarry/serving/service_entry.py).
"""

import sys

from enroll_service.server import main
from enroll_service.store import SERVICE_SCHEMA
from quarry.serving.service_entry import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point("enroll", main, SERVICE_SCHEMA))
