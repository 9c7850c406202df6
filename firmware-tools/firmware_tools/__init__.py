"""edgeflock firmware tools (``edgeflash``): bake and flash agent-ready images.

Not built yet: see the firmware-tools issue.
"""
