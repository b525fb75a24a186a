"""`python -m gateway`: run the gateway, settings from QUARRY_* variables.

`quarry serve gateway` and `quarry up` run this (quarry/serving/service_entry.py).
"""

import sys

from gateway.server import main
from quarry.serving.service_entry import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point("gateway", main))
