"""`python -m hearth.cli`: the same as the `hearth` console script."""

import sys

from hearth.cli.main import main

sys.exit(main())
