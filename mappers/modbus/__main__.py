"""``python -m mappers.modbus``: the same as the ``modbus-mapper`` command."""

import sys

from . import main

sys.exit(main())
