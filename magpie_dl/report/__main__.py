"""``python -m magpie_dl.report OUT_DIR``."""

import sys

from magpie_dl.report.cli import main

sys.exit(main())
