"""``python -m magpie_dl.review push|pull``."""

import sys

from magpie_dl.review.cli import main

sys.exit(main())
