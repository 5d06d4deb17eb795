"""`python -m gems.interfaces.cli`: the `gems` command."""

import sys

from gems.interfaces.cli import main

sys.exit(main())
