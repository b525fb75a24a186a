"""`python -m quarry`: the same as the `quarry` command."""

import sys

from quarry.cli import main

sys.exit(main())
