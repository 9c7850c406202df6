"""The edgeflock release this tree is: one place, read by the wheel's metadata
(pyproject ``dynamic``), the agent's hello and its Node's ``kubeletVersion``.
Stdlib-free on purpose: the launcher and the agent import it at start."""

VERSION = "0.1.0"
