"""`python -m recsys.outofcore`."""

import sys

from recsys.outofcore.cli import main

sys.exit(main())
