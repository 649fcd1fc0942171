"""`python -m sync_agent` is `sync-agent`."""

import sys

from .cli import main

sys.exit(main())
