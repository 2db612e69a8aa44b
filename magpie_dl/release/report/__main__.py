"""``python -m magpie_dl.release.report OUT_DIR``."""

import sys

from magpie_dl.release.report.cli import main

sys.exit(main())
