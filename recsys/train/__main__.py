"""`python -m recsys.train`."""

import sys

from recsys.train.cli import main

sys.exit(main())
