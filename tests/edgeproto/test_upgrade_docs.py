"""edgeproto.upgrade: the release manifest, its signature, the Node assignment and
the board's upgrade report — round trips and every refusal."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproto.upgrade import (
    CHUNK_SIZE,
    Assignment,
    NodeState,
    ReleaseManifest,
    UpgradeError,
    UpgradeReport,
    chunk_count,
    decode_assignment,
    decode_manifest,
    encode_assignment,
    encode_manifest,
    parse_report,
    report_body,
    sign_manifest,
    verify_manifest,
)
from tests.edgeagent.hub_standin import keypair


def manifest_of(data: bytes, version: str = "0.2.0", arch: str = "x86_64") -> ReleaseManifest:
    chunks = tuple(
        hashlib.sha256(data[i : i + CHUNK_SIZE]).hexdigest()
        for i in range(0, len(data), CHUNK_SIZE)
    )
    return ReleaseManifest(
        version, arch, len(data), hashlib.sha256(data).hexdigest(), chunks, "2026-12-02T12:00:00Z"
    )


def test_manifest_round_trip_and_chunk_ranges() -> None:
    data = bytes(range(256)) * (CHUNK_SIZE // 128 + 3)  # two full pieces and a short one
    m = manifest_of(data)
    assert len(m.chunks) == chunk_count(len(data)) == 3
    raw = encode_manifest(m)
    assert decode_manifest(raw) == m
    pieces = [data[o : o + n] for o, n in (m.chunk_range(i) for i in range(3))]
    assert b"".join(pieces) == data
    assert [hashlib.sha256(p).hexdigest() for p in pieces] == list(m.chunks)


def test_signature_verifies_only_with_the_release_key() -> None:
    private, public = keypair()
    _, other = keypair()
    raw = encode_manifest(manifest_of(b"x" * 100))
    sig = sign_manifest(private, raw)
    verify_manifest(public, raw, sig)
    with pytest.raises(UpgradeError, match="does not verify"):
        verify_manifest(other, raw, sig)
    tampered = raw.replace(b'"0.2.0"', b'"0.2.1"')
    with pytest.raises(UpgradeError, match="does not verify"):
        verify_manifest(public, tampered, sig)
    with pytest.raises(UpgradeError, match="not a PEM public key"):
        verify_manifest(b"junk", raw, sig)
    with pytest.raises(UpgradeError, match="not a PEM private key"):
        sign_manifest(b"junk", raw)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("sha256"), "missing"),
        (lambda d: d.update(extra=1), "unknown"),
        (lambda d: d.update(chunkSize=1024), "chunkSize"),
        (lambda d: d.update(arch="mips"), "arch"),
        (lambda d: d.update(size=0), "size"),
        (lambda d: d.update(size=True), "size"),
        (lambda d: d.update(version="../x"), "version"),
        (lambda d: d.update(sha256="ABC"), "sha256"),
        (lambda d: d["chunks"].append("0" * 64), "chunk hashes"),
        (lambda d: d.update(chunks=["zz" * 32]), "chunk hash"),
    ],
)
def test_bad_manifests_are_refused(edit: object, message: str) -> None:
    doc = json.loads(encode_manifest(manifest_of(b"y" * 10)))
    edit(doc)  # type: ignore[operator]
    with pytest.raises(UpgradeError, match=message):
        decode_manifest(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def test_non_canonical_manifest_is_refused() -> None:
    doc = json.loads(encode_manifest(manifest_of(b"y" * 10)))
    with pytest.raises(UpgradeError, match="canonical"):
        decode_manifest(json.dumps(doc, indent=1).encode())


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_manifest_decoder_raises_only_upgrade_errors(data: bytes) -> None:
    try:
        decode_manifest(data)
    except UpgradeError:
        pass


def test_assignment_round_trip_and_refusals() -> None:
    a = Assignment("up-1", "uid-1", "0.2.0", "a" * 64, 1234, 300)
    assert decode_assignment(encode_assignment(a)) == a
    for bad in ("", "{", "[]", '{"job":"x"}', None, "x" * 5000):
        with pytest.raises(UpgradeError):
            decode_assignment(bad)
    doc = json.loads(encode_assignment(a))
    doc["healthTimeoutSeconds"] = 0
    with pytest.raises(UpgradeError, match="healthTimeoutSeconds"):
        decode_assignment(json.dumps(doc))


def test_report_round_trip_and_refusals() -> None:
    r = UpgradeReport("up-1", "uid-1", "0.2.0", NodeState.ROLLED_BACK, "crashed 3 times", "t")
    assert parse_report(report_body(r)) == r
    assert NodeState.ROLLED_BACK.terminal and not NodeState.SWITCHED.terminal
    body = report_body(r)
    for edit, message in (
        ({"state": "pending"}, "pending"),
        ({"state": "exploded"}, "unknown state"),
        ({"reason": 5}, "reason"),
        ({"job": ""}, "job"),
        ({"extra": 1}, "exactly"),
    ):
        with pytest.raises(UpgradeError, match=message):
            parse_report({**body, **edit})
