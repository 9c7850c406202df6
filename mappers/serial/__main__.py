"""``python -m mappers.serial``: the same as the ``serial-mapper`` command."""

import sys

from . import main

sys.exit(main())
