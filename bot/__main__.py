"""`python -m bot` runs the `kindling` command."""

import sys

from bot.cli import main

sys.exit(main())
