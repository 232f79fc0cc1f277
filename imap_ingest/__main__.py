"""``python -m imap_ingest``."""

import sys

from .cli import main

sys.exit(main())
