"""``python -m edgeagent._verify``: check a release manifest's signature in a
process of its own, so that the agent never imports ``cryptography`` (about
9 MiB resident, for good, for one check per upgrade).

stdin: CBOR ``[public key PEM, manifest bytes, signature bytes]``; exit 0 when
the signature verifies, else 1 with the reason on stderr (2: bad input).
"""

from __future__ import annotations

import sys

import cbor2

from edgeproto.upgrade import UpgradeError, verify_manifest


def main() -> int:
    try:
        key, manifest, signature = cbor2.loads(sys.stdin.buffer.read())
        if not all(isinstance(v, bytes) for v in (key, manifest, signature)):
            raise ValueError("expected three byte strings")
    except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
        print(f"bad input: {exc}", file=sys.stderr)
        return 2
    try:
        verify_manifest(key, manifest, signature)
    except UpgradeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
