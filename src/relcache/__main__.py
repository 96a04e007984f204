"""``python -m relcache`` (also under torchrun)."""

import sys

from relcache.cli import main

sys.exit(main())
