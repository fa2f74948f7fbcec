"""``python -m daemon.cli``: what the ``triage`` console script runs."""

import sys

from daemon.cli import main

sys.exit(main())
