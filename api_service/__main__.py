"""`python -m api_service`: run the REST API, settings from QUARRY_* variables.

`quarry serve api` and `quarry up` run this (quarry/serving/service_entry.py).
"""

import sys

from api_service.server import main
from quarry.serving.service_entry import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point("api", main))
