"""``python -m diffdfkd.cli`` (and ``torchrun -m diffdfkd.cli``): the ``diffdfkd`` command."""

import sys

from diffdfkd.cli import main

sys.exit(main())
