"""``python -m imap_ingest``."""

import sys

from .compat import entry

sys.exit(entry())
