"""`python -m detection_service`: run the detection service, settings from QUARRY_* variables.

`python -m detection_service migrate [--dry-run] [--json]` applies its state's schema
migrations instead (what `quarry migrate` runs). `quarry serve detection` and `quarry up`
run this (quarry/serving/service_entry.py).
"""

import sys

from detection_service.server import main
from detection_service.store import SERVICE_SCHEMA
from quarry.serving.service_entry import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point("detection", main, SERVICE_SCHEMA))
