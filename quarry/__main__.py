"""`python -m quarry`: the same as the `quarry` command."""

import sys

from quarry.cli.main import main

sys.exit(main())
