"""`python -m ingest_service`: run the ingest process, settings from QUARRY_* variables.

`quarry serve ingest` and `quarry up` run this (quarry/serving/service_entry.py).
"""

import sys

from ingest_service.server import main
from quarry.serving.service_entry import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point("ingest", main))
