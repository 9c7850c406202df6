"""The etcd client against a real etcd (Debian's etcd-server, scripts/etcd):
the declared messages and field numbers work with etcd, failures map to the
client's errors, and a dead member is skipped."""

from __future__ import annotations

import threading

import pytest

from cloudgateway.etcd._client import (
    EtcdClient,
    EtcdCompacted,
    EtcdFutureRevision,
    EtcdUnavailable,
    parse_endpoints,
    pb,
    prefix_end,
)
from tests.conftest import EtcdCluster


def test_parse_endpoints() -> None:
    assert parse_endpoints("etcd://a:1,b:2") == ["a:1", "b:2"]
    assert parse_endpoints("127.0.0.1:2379") == ["127.0.0.1:2379"]
    for bad in ("", "etcd://", "a", "a:b", "a:0", "a:70000", "http://a:1/x"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_prefix_end() -> None:
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


def test_kv_txn_watch_lease_on_real_etcd(etcd: EtcdCluster) -> None:
    c = EtcdClient(etcd.endpoints)
    try:
        put = pb.RequestOp(request_put=pb.PutRequest(key=b"k/a", value=b"1"))
        absent = pb.Compare(
            key=b"k/a",
            target=pb.Compare.CREATE,
            result=pb.Compare.EQUAL,
            create_revision=0,
        )
        first = c.txn([absent], [put])
        assert first.succeeded
        rev = first.header.revision
        assert not c.txn([absent], [put]).succeeded  # the guard holds
        got = c.range(b"k/a")
        assert [(kv.key, kv.value, kv.mod_revision) for kv in got.kvs] == [(b"k/a", b"1", rev)]

        w = c.watch(b"k/", prefix_end(b"k/"), start_revision=rev, prev_kv=True)
        seen: list[tuple[int, bytes, int]] = []

        def follow() -> None:
            for resp in w.responses():
                seen.extend((e.type, e.kv.key, e.kv.mod_revision) for e in resp.events)
                if len(seen) >= 2:
                    w.cancel()

        t = threading.Thread(target=follow)
        t.start()
        c.call("DeleteRange", pb.DeleteRangeRequest(key=b"k/a"))
        t.join(10)
        assert not t.is_alive()
        assert seen == [
            (pb.Event.PUT, b"k/a", rev),
            (pb.Event.DELETE, b"k/a", rev + 1),
        ]  # a failed txn writes nothing

        lease = c.lease_grant(10)
        assert 0 < c.lease_keepalive(lease) <= 10
        c.lease_revoke(lease)
        assert c.lease_keepalive(lease) == 0

        with pytest.raises(EtcdFutureRevision):
            c.range(b"k/a", revision=rev + 100)
        c.call("Compact", pb.CompactionRequest(revision=rev + 1))
        with pytest.raises(EtcdCompacted):
            c.range(b"k/a", revision=rev)
        late = c.watch(b"k/", prefix_end(b"k/"), start_revision=rev)
        with pytest.raises(EtcdCompacted):
            next(iter(late.responses()))  # created, then canceled: compacted
        late.cancel()
    finally:
        c.close()


def test_dead_member_is_skipped(etcd3: EtcdCluster) -> None:
    c = EtcdClient(etcd3.endpoints, timeout=3.0)
    try:
        c.call("Put", pb.PutRequest(key=b"x", value=b"1"))
        etcd3.kill(0)
        # reads move on to a live member; the first member is the one that died
        assert c.range(b"x").kvs[0].value == b"1"
        assert c.failovers >= 0
    finally:
        c.close()


def test_no_member_is_unavailable(etcd: EtcdCluster) -> None:
    c = EtcdClient(etcd.endpoints, timeout=1.0)
    try:
        etcd.kill(0)
        with pytest.raises(EtcdUnavailable):
            c.range(b"x")
        with pytest.raises(EtcdUnavailable):
            c.call("Put", pb.PutRequest(key=b"x", value=b"1"))
    finally:
        c.close()
