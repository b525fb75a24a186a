"""`python -m config_service`: run the config service, settings from QUARRY_* variables.

`python -m config_service migrate [--dry-run] [--json]` applies its state's schema
migrations instead (what `quarry migrate` runs). `quarry serve config` and `quarry up`
run this (quarry/serving/service_entry.py).
"""

import sys

from config_service.server import main
from config_service.store import SERVICE_SCHEMA
from quarry.serving.service_entry import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point("config", main, SERVICE_SCHEMA))
