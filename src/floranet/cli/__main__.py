"""``python -m floranet.cli``."""

import sys

from floranet.cli import main

sys.exit(main())
