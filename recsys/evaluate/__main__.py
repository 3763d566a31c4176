"""`python -m recsys.evaluate`."""

import sys

from recsys.evaluate.cli import main

sys.exit(main())
