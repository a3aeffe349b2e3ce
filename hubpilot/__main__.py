"""``python -m hubpilot``: the ``hubpilot`` command, for an environment whose scripts folder is
not on the PATH."""

import sys

from hubpilot.cli import main

sys.exit(main())
