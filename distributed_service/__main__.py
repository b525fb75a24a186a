"""`python -m distributed_service`: run the distributed service, settings from QUARRY_* variables.

`python -m distributed_service migrate [--dry-run] [--json]` applies its state's schema
migrations instead (what `quarry migrate` runs). `quarry serve distributed` and `quarry up`
run this (quarry/serving/service_entry.py).
"""

import sys

from distributed_service.server import main
from distributed_service.store import SERVICE_SCHEMA
from quarry.serving.service_entry import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point("distributed", main, SERVICE_SCHEMA))
