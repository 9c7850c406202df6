"""``python -m firmware_tools`` is ``edgeflash``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
