"""``python -m mappers.modbus``: the same as the ``modbus-mapper`` command."""

import sys

from mappers.modbus._cli import main

sys.exit(main())
