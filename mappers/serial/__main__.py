"""``python -m mappers.serial``: the same as the ``serial-mapper`` command."""

import sys

from mappers.serial._cli import main

sys.exit(main())
