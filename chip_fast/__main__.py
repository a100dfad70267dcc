"""``python -m chip_fast``: the ``chip-fast`` command, also where the package is not installed."""
import sys

from .cli import main

sys.exit(main())
