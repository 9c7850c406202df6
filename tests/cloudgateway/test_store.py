"""The revisioned store: each backend's contract, the async facade under trio.

Every test of the store's contract runs once per backend kind (``KINDS``, the
``backend_kind`` fixture's params: a new backend adds an entry that makes empty
stores; "etcd" runs on one real etcd per session, a root per store). Revisions
are only asserted to increase, except for SQLite, whose writes move them by
exactly one. The last section, "SQLite specifics", checks what only the SQLite
backend has: its file's tables, its query costs, a real full disk; etcd's own
tests (replicas, faults) are in test_etcd_store.py."""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import apsw
import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import edgeproto
from cloudgateway._backend import NodeOf
from cloudgateway._errors import GatewayError
from cloudgateway._store import (
    UNCHANGED,
    AlreadyExists,
    Backend,
    Compacted,
    Conflict,
    Event,
    FutureRevision,
    NotFound,
    Record,
    SqliteBackend,
    Store,
    StoreError,
    SubscriptionLost,
)
from cloudgateway.etcd._backend import EtcdBackend
from cloudgateway.etcd._client import EtcdClient
from tests.conftest import EtcdCluster, fill_up

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


# ---- the backends under test ---------------------------------------------------------


class Opener(Protocol):
    """Opens a connection to one store (again: a second call sees the same data)."""

    def __call__(self, *, node_of: NodeOf = edgeproto.owner_node) -> Backend: ...


class BackendKind(Protocol):
    name: str

    def new_store(self) -> contextlib.AbstractContextManager[Opener]:
        """A new, empty store for the block; removed afterwards."""
        ...


@dataclass
class SqliteKind:
    root: Path
    name = "sqlite"

    @contextlib.contextmanager
    def new_store(self) -> Iterator[Opener]:
        with tempfile_dir(self.root) as d:

            def open_(*, node_of: NodeOf = edgeproto.owner_node) -> Backend:
                return SqliteBackend(str(d / "store.db"), node_of=node_of)

            yield open_


@contextlib.contextmanager
def tempfile_dir(root: Path) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(dir=root))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class EtcdKind:
    """Stores on one real etcd for the session, each under its own root: a
    store's revisions are etcd's, shared with the stores before it."""

    cluster: EtcdCluster
    name = "etcd"
    count = 0

    @contextlib.contextmanager
    def new_store(self) -> Iterator[Opener]:
        EtcdKind.count += 1
        root = f"/test{EtcdKind.count}/"

        def open_(*, node_of: NodeOf = edgeproto.owner_node) -> Backend:
            client = EtcdClient(self.cluster.endpoints, timeout=5.0)
            return EtcdBackend(client, node_of=node_of, root=root, owns_client=True)

        yield open_


KINDS: dict[str, Callable[[pytest.FixtureRequest], BackendKind]] = {
    "sqlite": lambda request: SqliteKind(
        request.getfixturevalue("tmp_path_factory").mktemp("sqlite")
    ),
    "etcd": lambda request: EtcdKind(request.getfixturevalue("session_etcd")),
}


@pytest.fixture(scope="session")
def session_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One real etcd for the store suite (stores use their own roots)."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd") / "etcd")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", params=sorted(KINDS))
def backend_kind(request: pytest.FixtureRequest) -> BackendKind:
    return KINDS[request.param](request)


@pytest.fixture
def open_store(backend_kind: BackendKind) -> Iterator[Opener]:
    with backend_kind.new_store() as opener:
        yield opener


@pytest.fixture
def backend(open_store: Opener) -> Iterator[Backend]:
    b = open_store()
    yield b
    b.close()


def open_backend(path: Path) -> SqliteBackend:
    return SqliteBackend(str(path / "store.db"), node_of=edgeproto.owner_node)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    b = open_backend(tmp_path)
    yield b
    b.close()


def pod(name: str, node: str | None = None, ns: str = "default", **spec: Any) -> dict[str, Any]:
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


def cm(name: str, data: dict[str, str], ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }


def keys(records: list[Record]) -> list[str]:
    return [r.key for r in records]


# ---- basic writes and reads -----------------------------------------------------------


def test_create_get_update_delete(backend: Backend) -> None:
    base = backend.current_rev()
    value = pod("a", "pi-01")
    ev = backend.create("pods/default/a", value)
    assert value == pod("a", "pi-01"), "input must not be mutated"
    assert ev.type == "ADDED" and ev.rev > base and ev.key == "pods/default/a" and ev.prev is None
    rec = ev.record
    assert (rec.mod_rev, rec.create_rev, rec.spec_rev, rec.node) == (
        ev.rev,
        ev.rev,
        ev.rev,
        "pi-01",
    )
    meta = rec.value["metadata"]
    assert meta["resourceVersion"] == str(ev.rev)
    assert meta["generation"] == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert RFC3339.match(meta["creationTimestamp"])
    assert backend.get("pods/default/a") == rec
    assert backend.current_rev() == ev.rev

    changed = pod("a", "pi-01", restartPolicy="Never")
    ev2 = backend.update("pods/default/a", changed)
    assert changed == pod("a", "pi-01", restartPolicy="Never")
    assert ev2.type == "MODIFIED" and ev2.rev > ev.rev and ev2.prev == rec
    assert ev2.record.value["spec"]["restartPolicy"] == "Never"
    assert ev2.record.value["metadata"]["resourceVersion"] == str(ev2.rev)
    assert ev2.record.value["metadata"]["generation"] == 2
    assert ev2.record.value["metadata"]["uid"] == meta["uid"]
    assert ev2.record.value["metadata"]["creationTimestamp"] == meta["creationTimestamp"]
    assert (ev2.record.create_rev, ev2.record.spec_rev) == (ev.rev, ev2.rev)
    assert backend.get("pods/default/a") == ev2.record

    ev3 = backend.delete("pods/default/a")
    assert ev3.type == "DELETED" and ev3.rev > ev2.rev and ev3.prev == ev2.record
    assert ev3.record.mod_rev == ev3.rev
    assert ev3.record.value["metadata"]["resourceVersion"] == str(ev3.rev)
    assert ev3.record.value["spec"] == ev2.record.value["spec"]
    with pytest.raises(NotFound) as info:
        backend.get("pods/default/a")
    assert info.value.key == "pods/default/a"
    assert backend.current_rev() == ev3.rev


def test_each_write_moves_the_revision_up(backend: Backend) -> None:
    """Revisions strictly increase; SQLite's move by exactly one per write (on
    a shared etcd, other keys take revisions too)."""
    base = backend.current_rev()
    revs = [
        backend.create("pods/default/a", pod("a")).rev,
        backend.create("configmaps/default/c", cm("c", {"k": "v"})).rev,
        backend.update("pods/default/a", pod("a", "pi-01")).rev,
        backend.update_status("pods/default/a", {"phase": "Running"}).rev,
        backend.delete("configmaps/default/c").rev,
        backend.create("configmaps/default/c", cm("c", {"k": "w"})).rev,
    ]
    assert [base, *revs] == sorted(set([base, *revs]))
    assert backend.current_rev() == revs[-1]
    if isinstance(backend, SqliteBackend):
        assert revs == [1, 2, 3, 4, 5, 6]


def test_store_keeps_given_uid_and_timestamp_on_create(backend: Backend) -> None:
    value = pod("a")
    value["metadata"].update(
        uid="1234", creationTimestamp="2020-01-01T00:00:00Z", resourceVersion="77", generation=9
    )
    rec = backend.create("pods/default/a", value).record
    assert rec.value["metadata"]["uid"] == "1234"
    assert rec.value["metadata"]["creationTimestamp"] == "2020-01-01T00:00:00Z"
    assert rec.value["metadata"]["resourceVersion"] == str(rec.mod_rev)
    assert rec.value["metadata"]["generation"] == 1


def test_already_exists_and_not_found(backend: Backend) -> None:
    made = backend.create("pods/default/a", pod("a")).rev
    with pytest.raises(AlreadyExists) as info:
        backend.create("pods/default/a", pod("a"))
    assert info.value.key == "pods/default/a"
    for op in (
        lambda: backend.get("pods/default/zz"),
        lambda: backend.update("pods/default/zz", pod("zz")),
        lambda: backend.update_status("pods/default/zz", {}),
        lambda: backend.delete("pods/default/zz"),
    ):
        with pytest.raises(NotFound) as nf:
            op()
        assert nf.value.key == "pods/default/zz"
        assert isinstance(nf.value, StoreError) and isinstance(nf.value, GatewayError)
    assert backend.current_rev() == made
    # A deleted key can be created again, with a new create_rev and uid.
    first = backend.get("pods/default/a")
    deleted = backend.delete("pods/default/a").rev
    with pytest.raises(NotFound):
        backend.delete("pods/default/a")
    again = backend.create("pods/default/a", pod("a")).record
    assert again.create_rev == again.mod_rev > deleted
    assert again.value["metadata"]["uid"] != first.value["metadata"]["uid"]


def test_optimistic_concurrency(backend: Backend) -> None:
    rec = backend.create("pods/default/a", pod("a")).record
    rec2 = backend.update("pods/default/a", pod("a", "pi-01"), expect_rev=rec.mod_rev).record
    for op in (
        lambda: backend.update("pods/default/a", pod("a", "pi-02"), expect_rev=rec.mod_rev),
        lambda: backend.update_status("pods/default/a", {"x": 1}, expect_rev=rec.mod_rev),
        lambda: backend.delete("pods/default/a", expect_rev=rec.mod_rev),
    ):
        with pytest.raises(Conflict) as info:
            op()
        assert info.value.key == "pods/default/a"
    assert backend.get("pods/default/a") == rec2
    assert backend.current_rev() == rec2.mod_rev
    rev3 = backend.update_status("pods/default/a", {"x": 1}, expect_rev=rec2.mod_rev).rev
    rev4 = backend.delete("pods/default/a", expect_rev=rev3).rev
    assert backend.current_rev() == rev4


def test_update_with_another_uid_conflicts(backend: Backend) -> None:
    made = backend.create("pods/default/a", pod("a")).rev
    stale = pod("a", "pi-01")
    stale["metadata"]["uid"] = "of-an-earlier-incarnation"
    with pytest.raises(Conflict):
        backend.update("pods/default/a", stale)
    assert backend.current_rev() == made


def test_status_writes_keep_spec_rev_and_generation(backend: Backend) -> None:
    made = backend.create("pods/default/a", pod("a", "pi-01")).rev
    ev = backend.update_status("pods/default/a", {"phase": "Running"})
    assert ev.record.spec_rev == made and ev.record.mod_rev == ev.rev > made
    assert ev.record.value["status"] == {"phase": "Running"}
    assert ev.record.value["metadata"]["generation"] == 1
    assert ev.record.value["spec"] == pod("a", "pi-01")["spec"]
    # A full update that changes only .status (and a stale resourceVersion) keeps it too.
    value = dict(ev.record.value)
    value["status"] = {"phase": "Failed"}
    ev2 = backend.update("pods/default/a", value)
    assert ev2.record.spec_rev == made and ev2.record.value["metadata"]["generation"] == 1
    # None removes .status, still a status-only write.
    ev3 = backend.update_status("pods/default/a", None)
    assert "status" not in ev3.record.value and ev3.record.spec_rev == made
    # A label is not status: spec_rev and generation move.
    labelled = pod("a", "pi-01")
    labelled["metadata"]["labels"] = {"app": "x"}
    ev4 = backend.update("pods/default/a", labelled)
    assert ev4.record.spec_rev == ev4.rev and ev4.record.value["metadata"]["generation"] == 2
    assert backend.get("pods/default/a", rev=ev2.rev).spec_rev == made
    assert backend.get("pods/default/a").spec_rev == ev4.rev


# ---- history --------------------------------------------------------------------------


def test_reads_at_old_revisions(backend: Backend) -> None:
    r = [backend.current_rev()]
    r.append(backend.create("pods/default/a", pod("a", "pi-01")).rev)  # 1
    r.append(backend.create("pods/default/b", pod("b", "pi-01")).rev)  # 2
    r.append(backend.update("pods/default/a", pod("a", "pi-02")).rev)  # 3
    r.append(backend.delete("pods/default/b").rev)  # 4
    r.append(backend.create("pods/default/b", pod("b", "pi-03")).rev)  # 5
    r.append(backend.delete("pods/default/a").rev)  # 6

    assert backend.get("pods/default/a", rev=r[1]).node == "pi-01"
    assert backend.get("pods/default/a", rev=r[2]).value["metadata"]["resourceVersion"] == str(r[1])
    assert backend.get("pods/default/a", rev=r[5]).node == "pi-02"
    with pytest.raises(NotFound):
        backend.get("pods/default/a", rev=r[6])
    with pytest.raises(NotFound):
        backend.get("pods/default/b", rev=r[4])
    assert backend.get("pods/default/b", rev=r[3]).node == "pi-01"
    assert backend.get("pods/default/b", rev=r[5]).create_rev == r[5]
    with pytest.raises(NotFound):
        backend.get("pods/default/a", rev=r[0])

    assert backend.list("pods/", rev=r[0]) == ([], r[0])
    recs, at = backend.list("pods/", rev=r[3])
    assert at == r[3] and keys(recs) == ["pods/default/a", "pods/default/b"]
    assert [x.mod_rev for x in recs] == [r[3], r[2]]
    assert keys(backend.list("pods/", rev=r[4])[0]) == ["pods/default/a"]
    assert keys(backend.list("pods/", rev=r[5])[0]) == ["pods/default/a", "pods/default/b"]
    recs, at = backend.list("pods/")
    assert at == r[6] and keys(recs) == ["pods/default/b"]
    assert backend.list("pods/", rev=r[6]) == (recs, r[6])

    got = backend.get_many(["pods/default/b", "pods/default/zz", "pods/default/a"], rev=r[3])
    assert keys(got) == ["pods/default/b", "pods/default/a"]
    assert keys(backend.get_many(["pods/default/a", "pods/default/b", "pods/default/b"])) == [
        "pods/default/b"
    ]

    with pytest.raises(FutureRevision):
        backend.get("pods/default/b", rev=r[6] + 1)
    with pytest.raises(FutureRevision):
        backend.list("pods/", rev=r[6] + 1)
    with pytest.raises(FutureRevision):
        backend.get_many(["pods/default/b"], rev=r[6] + 99)


def test_list_prefix_ranges(backend: Backend) -> None:
    revs = []
    for key in (
        "pods/default/a",
        "pods/default2/b",
        "pods/defaulz/c",
        "pods/kube/d",
        "configmaps/default/e",
        "nodes//pi-01",
    ):
        revs.append(backend.create(key, {"metadata": {"name": key.rsplit("/", 1)[1]}}).rev)
    assert keys(backend.list("pods/default/")[0]) == ["pods/default/a"]
    assert keys(backend.list("pods/default")[0]) == ["pods/default/a", "pods/default2/b"]
    assert keys(backend.list("pods/")[0]) == [
        "pods/default/a",
        "pods/default2/b",
        "pods/defaulz/c",
        "pods/kube/d",
    ]
    assert len(backend.list("")[0]) == 6
    assert keys(backend.list("", rev=revs[2])[0]) == [
        "pods/default/a",
        "pods/default2/b",
        "pods/defaulz/c",
    ]
    assert backend.list("secrets/")[0] == []
    top = "pods/\U0010ffff"
    backend.create(top + "/x", {"metadata": {"name": "x"}})
    assert keys(backend.list(top)[0]) == [top + "/x"]
    assert keys(backend.list("pods/\ud7ff")[0]) == []


def test_list_pages_after_a_key_with_a_limit_at_a_revision(backend: Backend) -> None:
    for name in "abcdef":
        backend.create(f"configmaps/default/{name}", {"metadata": {"name": name}})
    backend.delete("configmaps/default/b")
    last = backend.update(
        "configmaps/default/c", {"metadata": {"name": "c"}, "data": {"v": "2"}}
    ).rev
    page, rev = backend.list("configmaps/", limit=2)
    assert keys(page) == ["configmaps/default/a", "configmaps/default/c"] and rev == last
    backend.delete("configmaps/default/d")
    last = backend.create("configmaps/default/cc", {"metadata": {"name": "cc"}}).rev
    # The next page at the first one's revision: tombstones do not use up the limit.
    page, at = backend.list("configmaps/", rev=rev, after=page[-1].key, limit=2)
    assert keys(page) == ["configmaps/default/d", "configmaps/default/e"] and at == rev
    page, _ = backend.list("configmaps/", rev=rev, after=page[-1].key, limit=2)
    assert keys(page) == ["configmaps/default/f"]
    # Now: d's tombstone is skipped, cc is there.
    page, at = backend.list("configmaps/", after="configmaps/default/a", limit=3)
    assert keys(page) == [
        "configmaps/default/c",
        "configmaps/default/cc",
        "configmaps/default/e",
    ]
    assert at == last
    assert page[0].value["data"] == {"v": "2"}
    assert backend.list("configmaps/", after="configmaps/default/f")[0] == []
    with pytest.raises(StoreError):
        backend.list("configmaps/", limit=0)


def test_list_by_node_follows_a_pod_moving_between_nodes(backend: Backend) -> None:
    r = [backend.current_rev()]
    r.append(backend.create("nodes//pi-01", {"metadata": {"name": "pi-01"}}).rev)  # 1
    r.append(backend.create("pods/default/a", pod("a", "pi-01")).rev)  # 2
    r.append(backend.create("pods/default/b", pod("b", "pi-02")).rev)  # 3
    labelled = cm("c", {"k": "v"})
    labelled["metadata"]["labels"] = {"edgeflock.io/node": "pi-01"}
    r.append(backend.create("configmaps/default/c", labelled).rev)  # 4
    r.append(backend.update("pods/default/a", pod("a", "pi-02")).rev)  # 5: moves
    r.append(backend.update_status("pods/default/a", {"phase": "Running"}).rev)  # 6
    r.append(backend.update("pods/default/a", pod("a", "pi-01")).rev)  # 7: moves back
    r.append(backend.delete("pods/default/b").rev)  # 8
    r.append(backend.create("pods/default/b", pod("b", "pi-01")).rev)  # 9

    def on(node: str, n: int | None = None, prefix: str = "pods/") -> list[str]:
        return keys(backend.list_by_node(prefix, node, rev=None if n is None else r[n]))

    assert on("pi-01", 2) == ["pods/default/a"]
    assert on("pi-02", 2) == []
    assert on("pi-02", 3) == ["pods/default/b"]
    assert on("pi-01", 5) == []
    assert on("pi-02", 5) == ["pods/default/a", "pods/default/b"]
    assert on("pi-02", 6) == ["pods/default/a", "pods/default/b"]
    assert on("pi-01", 7) == ["pods/default/a"]
    assert on("pi-02", 7) == ["pods/default/b"]
    assert on("pi-02", 8) == []
    assert on("pi-01") == ["pods/default/a", "pods/default/b"]
    assert on("pi-01", 9) == on("pi-01")
    assert on("pi-02") == []
    assert on("pi-01", prefix="") == [
        "configmaps/default/c",
        "nodes//pi-01",
        "pods/default/a",
        "pods/default/b",
    ]
    assert on("pi-01", 4, prefix="configmaps/") == ["configmaps/default/c"]
    assert on("pi-03") == []
    recs = backend.list_by_node("pods/", "pi-02", rev=r[6])
    assert recs[0].value["status"] == {"phase": "Running"} and recs[0].mod_rev == r[6]


# ---- compaction -----------------------------------------------------------------------


def _history(backend: Backend) -> list[int]:
    """Eleven writes; the revision before them, then each one's (``r[n]``: write n)."""
    r = [backend.current_rev()]
    r.append(backend.create("pods/default/a", pod("a", "pi-01")).rev)  # 1
    r.append(backend.create("pods/default/b", pod("b", "pi-01")).rev)  # 2
    r.append(backend.update("pods/default/a", pod("a", "pi-02")).rev)  # 3
    r.append(backend.delete("pods/default/b").rev)  # 4
    r.append(backend.update_status("pods/default/a", {"phase": "Running"}).rev)  # 5
    r.append(backend.create("configmaps/default/c", cm("c", {"k": "1"})).rev)  # 6
    r.append(backend.delete("configmaps/default/c").rev)  # 7
    r.append(backend.create("pods/default/b", pod("b", "pi-02")).rev)  # 8
    r.append(backend.update("pods/default/a", pod("a", "pi-01")).rev)  # 9
    r.append(backend.delete("pods/default/a").rev)  # 10
    r.append(backend.create("pods/default/d", pod("d", "pi-01")).rev)  # 11
    return r


def _snapshot(backend: Backend, rev: int) -> Any:
    def fetch(fn: Any) -> Any:
        try:
            return fn()
        except NotFound:
            return None

    names = ["pods/default/a", "pods/default/b", "configmaps/default/c", "pods/default/d"]
    return (
        backend.list("", rev=rev),
        [fetch(lambda k=k: backend.get(k, rev=rev)) for k in names],
        backend.get_many(names, rev=rev),
        backend.list_by_node("pods/", "pi-01", rev=rev),
        backend.list_by_node("", "pi-02", rev=rev),
        backend.changes_since("", rev),
        backend.changes_since("pods/", rev, limit=2),
    )


def test_compaction_keeps_reads_at_and_after_the_horizon(backend: Backend) -> None:
    r = _history(backend)
    before = {n: _snapshot(backend, r[n]) for n in range(0, 12)}
    for horizon in (3, 7):  # 4 is a delete, right after the first horizon
        backend.compact(r[horizon])
        assert backend.compact_rev() == r[horizon]
        for n in range(horizon, 12):
            assert _snapshot(backend, r[n]) == before[n], (horizon, n)
    for n in range(0, 7):
        with pytest.raises(Compacted):
            backend.get("pods/default/a", rev=r[n])
        with pytest.raises(Compacted):
            backend.list("pods/", rev=r[n])
        with pytest.raises(Compacted):
            backend.list_by_node("pods/", "pi-01", rev=r[n])
        with pytest.raises(Compacted):
            backend.get_many(["pods/default/a"], rev=r[n])
        with pytest.raises(Compacted):
            backend.changes_since("pods/", r[n])
    # Compacting again further, to the head, and no-ops.
    backend.compact(r[3])
    backend.compact(r[7])
    assert backend.compact_rev() == r[7]
    backend.compact(r[11])
    assert _snapshot(backend, r[11]) == before[11]
    head = backend.current_rev()
    with pytest.raises(FutureRevision):
        backend.compact(head + 1)
    assert backend.compact_rev() == r[11]
    assert backend.current_rev() == head >= r[11]  # refused writes take no revision
    if isinstance(backend, SqliteBackend):
        assert head == r[11]


def test_compact_keep(backend: Backend) -> None:
    r = _history(backend)
    head = backend.current_rev()
    backend.compact_keep(4)
    assert backend.compact_rev() == head - 4
    backend.compact_keep(backend.current_rev() - (head - 5))  # below the horizon: no-op
    assert backend.compact_rev() == head - 4
    backend.compact_keep(100)
    assert backend.compact_rev() == head - 4
    head = backend.current_rev()
    backend.compact_keep(0)
    assert backend.compact_rev() == head
    assert keys(backend.list("")[0]) == ["pods/default/b", "pods/default/d"]
    assert backend.create("pods/default/a", pod("a")).rev > head >= r[11]


# ---- changes_since --------------------------------------------------------------------


def test_changes_since(backend: Backend) -> None:
    r = _history(backend)
    evs = backend.changes_since("pods/", r[0])
    assert [(e.type, e.rev, e.key) for e in evs] == [
        ("ADDED", r[1], "pods/default/a"),
        ("ADDED", r[2], "pods/default/b"),
        ("MODIFIED", r[3], "pods/default/a"),
        ("DELETED", r[4], "pods/default/b"),
        ("MODIFIED", r[5], "pods/default/a"),
        ("ADDED", r[8], "pods/default/b"),
        ("MODIFIED", r[9], "pods/default/a"),
        ("DELETED", r[10], "pods/default/a"),
        ("ADDED", r[11], "pods/default/d"),
    ]
    assert evs[0].prev is None and evs[5].prev is None
    assert evs[2].prev == evs[0].record and evs[4].prev == evs[2].record
    deleted = evs[7]
    assert deleted.prev == evs[6].record
    assert deleted.record.mod_rev == r[10] and deleted.record.node == "pi-01"
    assert deleted.record.value["metadata"]["resourceVersion"] == str(r[10])
    assert deleted.record.value["spec"] == evs[6].record.value["spec"]
    assert evs[4].record.spec_rev == r[3] and evs[4].record.value["status"] == {"phase": "Running"}

    assert [e.rev for e in backend.changes_since("", r[5])] == r[6:12]
    assert [e.rev for e in backend.changes_since("configmaps/", r[0])] == [r[6], r[7]]
    assert [e.rev for e in backend.changes_since("pods/", r[2], limit=3)] == r[3:6]
    assert backend.changes_since("pods/", r[11]) == []
    assert backend.changes_since("configmaps/", r[8]) == []
    with pytest.raises(FutureRevision):
        backend.changes_since("pods/", r[11] + 1)

    # The events match what the writes returned.
    b2_events = [e for e in backend.changes_since("", r[0]) if e.key == "pods/default/b"]
    assert b2_events[-1].record == backend.get("pods/default/b")

    backend.compact(r[8])
    with pytest.raises(Compacted):
        backend.changes_since("pods/", r[7])
    after = backend.changes_since("pods/", r[8])
    assert after == evs[6:]
    assert after[0].prev is not None and after[0].prev.mod_rev == r[5]


def test_write_events_equal_history_events(backend: Backend) -> None:
    base = backend.current_rev()
    made = [
        backend.create("pods/default/a", pod("a", "pi-01")),
        backend.update_status("pods/default/a", {"phase": "Pending"}),
        backend.update("pods/default/a", pod("a", "pi-02")),
        backend.delete("pods/default/a"),
        backend.create("pods/default/a", pod("a")),
    ]
    assert backend.changes_since("pods/", base) == made


# ---- read snapshots -------------------------------------------------------------------


def test_read_sees_one_snapshot(backend: Backend, open_store: Opener) -> None:
    made = backend.create("pods/default/a", pod("a", "pi-01")).rev
    writer = open_store()  # a second connection to the same store
    try:

        def run(b: Backend) -> Any:
            first = b.current_rev()
            # A write through another connection, from another thread, commits
            # while this read transaction is open (WAL).
            t = threading.Thread(target=lambda: writer.create("pods/default/b", pod("b", "pi-01")))
            t.start()
            t.join(10)
            assert not t.is_alive()
            nested = b.read(lambda b2: b2.list("pods/"))
            return (
                first,
                b.current_rev(),
                b.list("pods/"),
                nested,
                b.list_by_node("pods/", "pi-01"),
                b.get_many(["pods/default/b"]),
            )

        first, second, listed, nested, by_node, many = backend.read(run)
        assert first == second == made
        assert listed == nested == ([backend.get("pods/default/a")], made)
        assert keys(by_node) == ["pods/default/a"]
        assert many == []
        other = writer.current_rev()
        assert other > made
        assert backend.current_rev() == other
        assert keys(backend.list("pods/")[0]) == ["pods/default/a", "pods/default/b"]
        # A write through the first backend continues from the other's revision.
        assert backend.create("pods/default/c", pod("c")).rev > other
    finally:
        writer.close()


def test_read_refuses_writes_and_survives_errors(backend: Backend) -> None:
    made = backend.create("pods/default/a", pod("a")).rev
    with pytest.raises(StoreError, match="inside read"):
        backend.read(lambda b: b.create("pods/default/b", pod("b")))
    with pytest.raises(NotFound):
        backend.read(lambda b: b.get("pods/default/zz"))
    with pytest.raises(ZeroDivisionError):
        backend.read(lambda b: 1 / 0)
    # The backend is usable afterwards: no transaction was left open.
    rev = backend.create("pods/default/b", pod("b")).rev
    assert rev > made
    assert backend.read(lambda b: b.current_rev()) == rev


# ---- persistence and bad input --------------------------------------------------------


def test_reopen_continues_revisions(open_store: Opener) -> None:
    b = open_store()
    r = _history(b)
    b.compact(r[4])
    before = _snapshot(b, r[11])
    head = b.current_rev()
    b.close()
    b.close()  # idempotent
    with pytest.raises(StoreError):
        b.get("pods/default/b")
    b = open_store()
    try:
        assert b.current_rev() == head and b.compact_rev() == r[4]
        assert _snapshot(b, r[11]) == before
        assert b.create("pods/default/x", pod("x")).rev > head
        assert b.update("pods/default/b", pod("b", "pi-09")).record.create_rev == r[8]
    finally:
        b.close()


def test_node_of_failure_writes_nothing(open_store: Opener) -> None:
    calls: list[str] = []

    def node_of(key: str, obj: dict[str, Any]) -> str | None:
        calls.append(key)
        if obj.get("spec", {}).get("boom"):
            raise ValueError("no node for this")
        return edgeproto.owner_node(key, obj)

    b = open_store(node_of=node_of)
    try:
        made = b.create("pods/default/a", pod("a", "pi-01")).rev
        with pytest.raises(StoreError, match="no node for this") as info:
            b.create("pods/default/b", pod("b", boom=True))
        assert info.value.key == "pods/default/b"
        with pytest.raises(StoreError):
            b.update("pods/default/a", pod("a", "pi-02", boom=True))
        assert b.current_rev() == made
        assert keys(b.list("")[0]) == ["pods/default/a"]
        assert b.get("pods/default/a").node == "pi-01"
        assert keys(b.list_by_node("", "pi-01")) == ["pods/default/a"]
        assert calls.count("pods/default/b") == 1
    finally:
        b.close()
    # The real owner_node rejects malformed keys the same way.
    real = open_store()
    try:
        with pytest.raises(StoreError, match="malformed key"):
            real.create("not-a-key", {"metadata": {}})
        assert real.current_rev() == made
    finally:
        real.close()


def test_node_of_returning_a_non_string(open_store: Opener) -> None:
    b = open_store(node_of=lambda k, o: 42)  # type: ignore[arg-type,return-value]
    try:
        base = b.current_rev()
        with pytest.raises(StoreError, match="not a string"):
            b.create("pods/default/a", pod("a"))
        assert b.current_rev() == base
    finally:
        b.close()


@pytest.mark.parametrize(
    "value, message",
    [
        ([1, 2], "must be an object"),
        (None, "must be an object"),
        ({"metadata": []}, "metadata must be an object"),
        ({"metadata": {}, "x": {1, 2}}, "not storable as JSON"),
        ({"metadata": {}, "x": float("nan")}, "not storable as JSON"),
        ({"metadata": {}, "x": object()}, "not storable as JSON"),
    ],
)
def test_bad_values_are_refused(backend: Backend, value: Any, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        backend.create("pods/default/a", value)
    made = backend.create("pods/default/b", pod("b")).rev
    with pytest.raises(StoreError, match=message):
        backend.update("pods/default/b", value)
    assert backend.current_rev() == made


def test_bad_arguments_are_refused(backend: Backend) -> None:
    made = backend.create("pods/default/a", pod("a")).rev
    horizon = backend.compact_rev()
    cases = [
        lambda: backend.create("", pod("a")),
        lambda: backend.create(7, pod("a")),  # type: ignore[arg-type]
        lambda: backend.create("pods/default/\x00", pod("a")),
        lambda: backend.create("pods/default/\ud800", pod("a")),
        lambda: backend.get("pods/default/a", rev=-1),
        lambda: backend.get("pods/default/a", rev="1"),  # type: ignore[arg-type]
        lambda: backend.list("pods/", rev=True),
        lambda: backend.list(None),  # type: ignore[arg-type]
        lambda: backend.list_by_node("pods/", ""),
        lambda: backend.get_many(["pods/default/a", 3]),  # type: ignore[list-item]
        lambda: backend.update("pods/default/a", pod("a"), expect_rev=-3),
        lambda: backend.update_status("pods/default/a", {"t": float("inf")}),
        lambda: backend.update_status("pods/default/a", {"t": b"bytes"}),
        lambda: backend.delete("pods/default/a", expect_rev="1"),  # type: ignore[arg-type]
        lambda: backend.changes_since("pods/", 0, limit=0),
        lambda: backend.changes_since("pods/", -1),
        lambda: backend.compact(-1),
        lambda: backend.compact_keep(-1),
    ]
    for case in cases:
        with pytest.raises(StoreError):
            case()
    assert backend.current_rev() == made and backend.compact_rev() == horizon
    assert backend.get("pods/default/a").mod_rev == made


# ---- a model-based test ---------------------------------------------------------------

MODEL_KEYS = (
    "pods/default/a",
    "pods/default/b",
    "pods/kube/c",
    "configmaps/default/d",
    "nodes//n1",
)
MODEL_NODES = ("n1", "n2")


def model_value(key: str, node: str | None, data: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"n": data}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": {"name": key.rsplit("/", 1)[1]}, "spec": spec}


class StoreMachine(RuleBasedStateMachine):
    """The store against a dict of per-key histories kept in memory."""

    def __init__(self, kind: BackendKind) -> None:
        super().__init__()
        self.place = contextlib.ExitStack()
        self.open = self.place.enter_context(kind.new_store())
        self.b = self.open()
        self.rev = self.b.current_rev()
        self.compacted = self.b.compact_rev()
        self.sqlite = isinstance(self.b, SqliteBackend)
        self.hist: dict[str, list[tuple[int, Record | None]]] = {k: [] for k in MODEL_KEYS}
        self.events: list[Event] = []

    def teardown(self) -> None:
        self.b.close()
        self.place.close()

    # model helpers
    def at(self, key: str, rev: int) -> Record | None:
        state = None
        for r, rec in self.hist[key]:
            if r <= rev:
                state = rec
        return state

    def head(self, key: str) -> Record | None:
        return self.at(key, self.rev)

    def pick_rev(self, n: int) -> int:
        return self.compacted + n % (self.rev - self.compacted + 1)

    def record(self, ev: Event) -> None:
        assert ev.rev > self.rev  # increasing; by exactly one on SQLite
        assert ev.rev == self.rev + 1 or not self.sqlite
        self.rev = ev.rev
        self.hist[ev.key].append((ev.rev, None if ev.type == "DELETED" else ev.record))
        self.events.append(ev)

    def check_write(self, ev: Event, prev: Record | None) -> None:
        rec = ev.record
        assert ev.prev == prev
        assert rec.key == ev.key and rec.mod_rev == ev.rev > self.rev
        assert rec.value["metadata"]["resourceVersion"] == str(ev.rev)
        if ev.type != "DELETED":
            assert rec.node == edgeproto.owner_node(ev.key, rec.value)

    # writes
    @rule(
        key=st.sampled_from(MODEL_KEYS),
        node=st.sampled_from((None, *MODEL_NODES)),
        n=st.integers(0, 3),
    )
    def create(self, key: str, node: str | None, n: int) -> None:
        prev = self.head(key)
        if prev is not None:
            try:
                self.b.create(key, model_value(key, node, n))
            except AlreadyExists:
                return
            raise AssertionError("create of an existing key")
        ev = self.b.create(key, model_value(key, node, n))
        assert ev.type == "ADDED"
        self.check_write(ev, None)
        assert ev.record.create_rev == ev.record.spec_rev == ev.rev
        assert ev.record.value["metadata"]["generation"] == 1
        assert ev.record.value["spec"]["n"] == n
        self.record(ev)

    @rule(
        key=st.sampled_from(MODEL_KEYS),
        node=st.sampled_from((None, *MODEL_NODES)),
        n=st.integers(0, 3),
        expect=st.sampled_from(("none", "right", "stale")),
    )
    def update(self, key: str, node: str | None, n: int, expect: str) -> None:
        prev = self.head(key)
        if prev is None:
            try:
                self.b.update(key, model_value(key, node, n))
            except NotFound:
                return
            raise AssertionError("update of a missing key")
        if expect == "stale":
            try:
                self.b.update(key, model_value(key, node, n), expect_rev=prev.mod_rev - 1)
            except Conflict:
                return
            raise AssertionError("stale update accepted")
        ev = self.b.update(
            key, model_value(key, node, n), expect_rev=prev.mod_rev if expect == "right" else None
        )
        assert ev.type == "MODIFIED"
        self.check_write(ev, prev)
        spec_changed = ev.record.value["spec"] != prev.value["spec"]
        assert ev.record.spec_rev == (ev.rev if spec_changed else prev.spec_rev)
        gen = prev.value["metadata"]["generation"]
        assert ev.record.value["metadata"]["generation"] == gen + spec_changed
        assert ev.record.create_rev == prev.create_rev
        assert "status" not in ev.record.value
        self.record(ev)

    @rule(key=st.sampled_from(MODEL_KEYS), status=st.one_of(st.none(), st.integers(0, 2)))
    def update_status(self, key: str, status: int | None) -> None:
        prev = self.head(key)
        if prev is None:
            try:
                self.b.update_status(key, status)
            except NotFound:
                return
            raise AssertionError("update_status of a missing key")
        ev = self.b.update_status(key, status)
        self.check_write(ev, prev)
        assert ev.record.spec_rev == prev.spec_rev
        assert ev.record.value.get("status") == status
        assert ev.record.value["spec"] == prev.value["spec"]
        self.record(ev)

    @rule(key=st.sampled_from(MODEL_KEYS))
    def delete(self, key: str) -> None:
        prev = self.head(key)
        if prev is None:
            try:
                self.b.delete(key)
            except NotFound:
                return
            raise AssertionError("delete of a missing key")
        ev = self.b.delete(key)
        assert ev.type == "DELETED"
        self.check_write(ev, prev)
        assert ev.record.value["spec"] == prev.value["spec"]
        self.record(ev)

    @rule(n=st.integers(0, 1000))
    def compact(self, n: int) -> None:
        target = self.pick_rev(n)
        self.b.compact(target)
        self.compacted = max(self.compacted, target)
        self.rev = self.b.current_rev()  # etcd records its horizon: a revision of its own

    @rule()
    def reopen(self) -> None:
        self.b.close()
        self.b = self.open()

    # reads
    @rule(key=st.sampled_from(MODEL_KEYS), n=st.integers(0, 1000))
    def get(self, key: str, n: int) -> None:
        rev = self.pick_rev(n)
        want = self.at(key, rev)
        try:
            got: Record | None = self.b.get(key, rev=rev)
        except NotFound:
            got = None
        assert got == want

    @rule(
        prefix=st.sampled_from(("", "pods/", "pods/default/", "configmaps/", "nodes/")),
        n=st.integers(0, 1000),
    )
    def list_at(self, prefix: str, n: int) -> None:
        rev = self.pick_rev(n)
        want = [r for k in sorted(MODEL_KEYS) if k.startswith(prefix) and (r := self.at(k, rev))]
        assert self.b.list(prefix, rev=rev) == (want, rev)
        present = [r for k in reversed(MODEL_KEYS) if (r := self.at(k, rev))]
        assert self.b.get_many(reversed(MODEL_KEYS), rev=rev) == present

    @rule(node=st.sampled_from(MODEL_NODES), n=st.integers(0, 1000), current=st.booleans())
    def list_by_node_at(self, node: str, n: int, current: bool) -> None:
        rev = self.rev if current else self.pick_rev(n)
        want = [r for k in sorted(MODEL_KEYS) if (r := self.at(k, rev)) and r.node == node]
        assert self.b.list_by_node("", node, rev=None if current else rev) == want
        assert self.b.list_by_node("pods/", node, rev=rev) == [
            r for r in want if r.key.startswith("pods/")
        ]

    @rule(n=st.integers(0, 1000), limit=st.integers(1, 5))
    def changes_since(self, n: int, limit: int) -> None:
        rev = self.pick_rev(n)
        assert self.b.changes_since("", rev) == [e for e in self.events if e.rev > rev]
        want = [e for e in self.events if e.rev > rev and e.key.startswith("pods/")][:limit]
        assert self.b.changes_since("pods/", rev, limit=limit) == want

    @rule(n=st.integers(1, 5))
    def out_of_range(self, n: int) -> None:
        try:
            self.b.get(MODEL_KEYS[0], rev=self.rev + n)
        except FutureRevision:
            pass
        else:
            raise AssertionError("read in the future")
        if self.compacted - n >= 0 and self.compacted > 0:
            try:
                self.b.list("", rev=self.compacted - n)
            except Compacted:
                pass
            else:
                raise AssertionError("read before the horizon")

    @invariant()
    def revisions(self) -> None:
        assert self.b.current_rev() == self.rev
        assert self.b.compact_rev() == self.compacted

    @invariant()
    def heads(self) -> None:
        want = [r for k in sorted(MODEL_KEYS) if (r := self.head(k))]
        assert self.b.list("") == (want, self.rev)


def test_store_model(backend_kind: BackendKind) -> None:
    examples = 40 if backend_kind.name == "sqlite" else 15  # etcd: real round trips
    run_state_machine_as_test(
        lambda: StoreMachine(backend_kind),
        settings=settings(max_examples=examples, stateful_step_count=30, deadline=None),
    )


# ---- the async facade -----------------------------------------------------------------


@pytest.fixture
async def store(backend: Backend, nursery: trio.Nursery) -> Store:
    s = Store(backend, subscriber_buffer=64)
    await nursery.start(s.run)
    return s


async def test_facade_reads_and_writes(store: Store) -> None:
    base = store.current_rev()
    ev = await store.create("pods/default/a", pod("a", "pi-01"))
    r1 = ev.rev
    assert store.current_rev() == r1 > base
    assert await store.get("pods/default/a") == ev.record
    r2 = (await store.update("pods/default/a", pod("a", "pi-02"), expect_rev=r1)).rev
    r3 = (await store.update_status("pods/default/a", {"phase": "Running"}, expect_rev=r2)).rev
    r4 = (await store.create("pods/default/b", pod("b", "pi-02"))).rev
    r5 = (await store.delete("pods/default/b", expect_rev=r4)).rev
    assert store.current_rev() == r5
    records, rev = await store.list("pods/")
    assert rev == r5 and keys(records) == ["pods/default/a"]
    assert keys(await store.list_by_node("pods/", "pi-01", rev=r1)) == ["pods/default/a"]
    assert keys(await store.list_by_node("pods/", "pi-02")) == ["pods/default/a"]
    assert keys(await store.get_many(k for k in ["pods/default/b", "pods/default/a"])) == [
        "pods/default/a"
    ]
    assert [e.rev for e in await store.changes_since("pods/", r2, limit=2)] == [r3, r4]
    with pytest.raises(Conflict):
        await store.update("pods/default/a", pod("a"), expect_rev=r1)
    with pytest.raises(NotFound):
        await store.delete("pods/default/b")
    assert store.current_rev() == r5
    await store.compact(r4)
    head = await store.call(store.backend.current_rev)
    await store.compact_keep(0)
    assert store.backend.compact_rev() == head
    with pytest.raises(StoreError):
        Store(store.backend, subscriber_buffer=0)


async def test_facade_starts_at_the_backend_revision(
    open_store: Opener, nursery: trio.Nursery
) -> None:
    b = open_store()
    try:
        b.create("pods/default/a", pod("a"))
        r2 = b.create("pods/default/b", pod("b")).rev
        store = Store(b)
        await nursery.start(store.run)
        assert store.current_rev() == r2
        r3 = (await store.create("pods/default/c", pod("c"))).rev
        assert r3 > r2
        assert store.current_rev() == r3
    finally:
        nursery.cancel_scope.cancel()
        b.close()


async def test_subscribers_get_every_write_in_order(store: Store) -> None:
    base = store.current_rev()
    with store.subscribe() as sub, store.subscribe(buffer=1000) as big:
        revs: list[int] = []

        async def writer(i: int) -> None:
            key = f"pods/default/p{i}"
            revs.append((await store.create(key, pod(f"p{i}"))).rev)
            for n in range(5):
                revs.append((await store.update(key, pod(f"p{i}", restartPolicy=str(n)))).rev)
            revs.append((await store.update_status(key, {"phase": "Running"})).rev)
            revs.append((await store.delete(key)).rev)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(writer, i)
            got: list[Event] = []
            with trio.fail_after(20):
                while len(got) < 8 * 8:
                    got.append(await sub.receive())
        assert [e.rev for e in got] == sorted(revs) and len(set(revs)) == 64
        assert got[0].rev > base
        assert got == await store.changes_since("", base)
        per_key: dict[str, list[str]] = {}
        for e in got:
            per_key.setdefault(e.key, []).append(e.type)
        assert all(t == ["ADDED", *["MODIFIED"] * 6, "DELETED"] for t in per_key.values()), per_key
        stats = sub.statistics()
        assert stats == {"capacity": 64, "buffered": 0, "delivered": 64, "lost": 0}
        assert big.statistics()["buffered"] == 64
        seen = []
        async for ev in big:
            seen.append(ev)
            if len(seen) == 64:
                break
        assert seen == got
    assert store.statistics() == {
        "rev": max(revs),
        "subscribers": 0,
        "subscribers_lost": 0,
        "events_published": 64,
    }


async def test_slow_subscriber_is_cut_off_not_waited_for(store: Store) -> None:
    with store.subscribe(buffer=2) as slow, store.subscribe(buffer=10) as fast:
        revs = []
        with trio.fail_after(10):
            for i in range(5):
                revs.append((await store.create(f"pods/default/p{i}", pod(f"p{i}"))).rev)
        assert store.current_rev() == revs[-1]
        assert slow.lost and not fast.lost
        assert slow.statistics()["lost"] == 1
        with pytest.raises(SubscriptionLost):
            await slow.receive()
        with pytest.raises(SubscriptionLost):
            async for _ in slow:
                raise AssertionError("a lost subscription yields nothing")
        assert [(await fast.receive()).rev for _ in range(5)] == revs
        assert store.statistics()["subscribers_lost"] == 1
        assert store.statistics()["subscribers"] == 1
        # Re-subscribing works: the new subscription gets the next writes.
        with store.subscribe(buffer=2) as again:
            deleted = await store.delete("pods/default/p0")
            ev = await again.receive()
            assert ev.type == "DELETED" and ev.rev == deleted.rev > revs[-1]
    with pytest.raises(SubscriptionLost, match="closed"):
        await again.receive()


async def test_failed_writes_publish_nothing(store: Store) -> None:
    with store.subscribe() as sub:
        r1 = (await store.create("pods/default/a", pod("a"))).rev
        with pytest.raises(AlreadyExists):
            await store.create("pods/default/a", pod("a"))
        with pytest.raises(StoreError):
            await store.create("pods/default/b", {"metadata": "nope"})
        with pytest.raises(Conflict):
            await store.delete("pods/default/a", expect_rev=r1 + 9)
        r2 = (await store.delete("pods/default/a")).rev
        assert [(await sub.receive()).rev for _ in range(2)] == [r1, r2]
        assert sub.statistics()["buffered"] == 0
    assert store.statistics()["events_published"] == 2


async def test_writers_arriving_together_share_one_commit_and_keep_their_own_outcome(
    store: Store,
) -> None:
    taken = (await store.create("pods/default/taken", pod("taken"))).rev
    commits: list[int] = []
    real = store.backend.write_many

    def counting(writes: Any) -> Any:
        commits.append(len(writes))
        return real(writes)

    store.backend.write_many = counting  # type: ignore[method-assign]
    outcomes: dict[int, Any] = {}

    async def writer(i: int) -> None:
        name = "taken" if i == 7 else f"p{i}"  # one of them fails: AlreadyExists
        try:
            outcomes[i] = await store.create(f"pods/default/{name}", pod(name))
        except StoreError as exc:
            outcomes[i] = exc

    with store.subscribe(buffer=1000) as sub:
        async with trio.open_nursery() as n:
            for i in range(600):
                n.start_soon(writer, i)
        # 599 writes in far fewer commits (the first writer commits alone; the
        # rest queue behind it and go in batches of at most 256)
        assert sum(commits) == 600 and len(commits) <= 5 and max(commits) <= 256
        assert isinstance(outcomes[7], AlreadyExists)
        revs = sorted(o.rev for i, o in outcomes.items() if i != 7)
        assert len(set(revs)) == 599 and revs[0] > taken
        if isinstance(store.backend, SqliteBackend):
            assert revs == list(range(2, 601))
        got = [(await sub.receive()).rev for _ in range(599)]
        assert got == revs  # every success published once, in revision order
    records, rev = await store.list("pods/")
    assert rev == revs[-1] and len(records) == 600


async def test_a_writer_cancelled_while_queued_writes_nothing(store: Store) -> None:
    await store.create("pods/default/a", pod("a"))
    release = trio.Event()

    async def hold_the_writers_back(task_status: trio.TaskStatus[None]) -> None:
        async with store._write_lock:
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as n:
        await n.start(hold_the_writers_back)
        with trio.move_on_after(0.05):
            await store.create("pods/default/never", pod("never"))
        assert store._pending == []
        release.set()
    await store.create("pods/default/b", pod("b"))
    records, _ = await store.list("pods/")
    assert keys(records) == ["pods/default/a", "pods/default/b"]


async def test_modify_reads_and_writes_in_one_transaction(store: Store) -> None:
    made = (await store.create("pods/default/a", pod("a"))).rev

    def bump(rec: Record) -> Any:
        status = dict(rec.value.get("status") or {})
        status["n"] = status.get("n", 0) + 1
        return status

    # 50 concurrent read-modify-writes: none is lost, none conflicts
    async with trio.open_nursery() as n:
        for _ in range(50):
            n.start_soon(functools.partial(store.modify, "pods/default/a", bump, status=True))
    rec = await store.get("pods/default/a")
    assert rec.value["status"] == {"n": 50} and rec.spec_rev == made

    assert await store.modify("pods/default/a", lambda r: UNCHANGED) is None
    assert (await store.get("pods/default/a")).mod_rev == rec.mod_rev

    def boom(rec: Record) -> Any:
        raise ValueError("edit refused")

    with pytest.raises(ValueError, match="edit refused"):
        await store.modify("pods/default/a", boom)
    with pytest.raises(Conflict):
        await store.modify("pods/default/a", bump, status=True, expect_rev=made)
    with pytest.raises(NotFound):
        await store.modify("pods/default/zz", bump)
    ev = await store.modify("pods/default/a", lambda r: pod("a", "pi-09"), expect_rev=rec.mod_rev)
    assert ev is not None and ev.record.node == "pi-09" and ev.record.spec_rev == ev.rev
    assert (await store.get("pods/default/a")).mod_rev == ev.rev


# ---- SQLite specifics -----------------------------------------------------------------


def test_value_is_stored_as_compact_json_readable_by_sqlite(
    sqlite_backend: SqliteBackend, tmp_path: Path
) -> None:
    sqlite_backend.create("configmaps/default/c", cm("c", {"k": "vä"}))
    other = apsw.Connection(str(tmp_path / "store.db"))
    try:
        (text,) = other.execute(
            "SELECT value FROM kv WHERE key = 'configmaps/default/c'"
        ).fetchone()
    finally:
        other.close()
    assert '"data":{"k":"vä"}' in text
    assert " " not in text
    assert "resourceVersion" not in text


def test_list_by_node_reads_the_index_not_the_prefix(sqlite_backend: SqliteBackend) -> None:
    """10,000 creates (one transaction each), then list_by_node for a node with a
    handful of pods must touch a handful of rows, at the head and in history."""
    for i in range(10_000):
        node = "small" if i % 1000 == 0 else "big"
        sqlite_backend.create(f"pods/default/p{i:05d}", pod(f"p{i:05d}", node))
    assert sqlite_backend.current_rev() == 10_000
    sqlite_backend.update("pods/default/p00001", pod("p00001", "small"))  # 10001
    sqlite_backend.update_status("pods/default/p00000", {"phase": "Running"})  # 10002
    sqlite_backend.delete("pods/default/p01000")  # 10003

    steps: list[int] = []

    def trace(event: dict[str, Any]) -> None:
        steps.append(event["stmt_status"]["SQLITE_STMTSTATUS_VM_STEP"])

    def cost(fn: Any) -> tuple[Any, int]:
        steps.clear()
        sqlite_backend._conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, trace)
        try:
            result = fn()
        finally:
            sqlite_backend._conn.trace_v2(0, None)
        return result, sum(steps)

    now, now_cost = cost(lambda: sqlite_backend.list_by_node("pods/", "small"))
    then, then_cost = cost(lambda: sqlite_backend.list_by_node("pods/", "small", rev=10_000))
    _, list_cost = cost(lambda: sqlite_backend.list("pods/"))
    assert len(now) == 10 and "pods/default/p00001" in keys(now)
    assert "pods/default/p01000" not in keys(now)
    assert len(then) == 10 and "pods/default/p01000" in keys(then)
    assert "pods/default/p00001" not in keys(then)
    assert list_cost > 10_000  # the measure sees a prefix scan...
    assert now_cost < 1_000 and then_cost < 1_000  # ...and these are not one


def test_opening_bad_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        SqliteBackend(str(tmp_path / "missing" / "s.db"), node_of=edgeproto.owner_node)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        SqliteBackend(str(junk), node_of=edgeproto.owner_node)
    newer = tmp_path / "newer.db"
    conn = apsw.Connection(str(newer))
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteBackend(str(newer), node_of=edgeproto.owner_node)


def test_pre_release_files_are_refused(tmp_path: Path) -> None:
    """A file without a schema version but with tables was written before the
    schema was versioned: refused, untouched, instead of read half-way."""
    path = tmp_path / "old.db"
    conn = apsw.Connection(str(path))
    conn.execute(
        "CREATE TABLE kv(key TEXT NOT NULL, mod_rev INTEGER NOT NULL, create_rev INTEGER NOT NULL,"
        " spec_rev INTEGER NOT NULL, node TEXT, deleted INTEGER NOT NULL DEFAULT 0, value TEXT,"
        " PRIMARY KEY (key, mod_rev)) WITHOUT ROWID;"
        "CREATE TABLE meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
        "INSERT INTO meta VALUES ('rev', 1), ('compact_rev', 0);"
        """INSERT INTO kv VALUES ('pods/default/a', 1, 1, 1, 'n1', 0, '{"metadata":{"name":"a"}}');"""
    )
    conn.close()
    with pytest.raises(StoreError, match="pre-release"):
        SqliteBackend(str(path), node_of=edgeproto.owner_node)
    conn = apsw.Connection(str(path))
    try:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert sorted(t for (t,) in tables) == ["kv", "meta"]
        assert conn.execute("SELECT key, mod_rev FROM kv").fetchall() == [("pods/default/a", 1)]
        assert conn.execute("PRAGMA user_version").fetchall() == [(0,)]
    finally:
        conn.close()


def test_a_new_file_gets_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteBackend(str(path), node_of=edgeproto.owner_node).close()
    conn = apsw.Connection(str(path))
    try:
        assert conn.execute("PRAGMA user_version").fetchall() == [(1,)]
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    assert sorted(t for (t,) in tables) == ["cur", "kv", "meta"]
    # and it opens again as it is
    b = SqliteBackend(str(path), node_of=edgeproto.owner_node)
    try:
        assert b.create("pods/default/a", pod("a")).rev == 1
    finally:
        b.close()


def _rows(path: Path) -> list[tuple[str, int, int]]:
    other = apsw.Connection(str(path))
    try:
        return other.execute(
            "SELECT key, mod_rev, deleted FROM kv ORDER BY key, mod_rev"
        ).fetchall()
    finally:
        other.close()


def test_compaction_deletes_superseded_rows_and_tombstones(
    sqlite_backend: SqliteBackend, tmp_path: Path
) -> None:
    _history(sqlite_backend)
    sqlite_backend.compact(7)
    # Superseded rows and tombstones at or before 7 are gone; the rest stays.
    assert _rows(tmp_path / "store.db") == [
        ("pods/default/a", 5, 0),
        ("pods/default/a", 9, 0),
        ("pods/default/a", 10, 1),
        ("pods/default/b", 8, 0),
        ("pods/default/d", 11, 0),
    ]
    sqlite_backend.compact(11)
    assert _rows(tmp_path / "store.db") == [("pods/default/b", 8, 0), ("pods/default/d", 11, 0)]


async def test_a_full_disk_fails_writes_clearly_and_loses_nothing(small_fs: Path) -> None:
    """A real full filesystem (tmpfs): batched writes fail with the disk's
    error, committed data stays, and writing resumes once there is room."""
    backend = SqliteBackend(str(small_fs / "store.db"), node_of=edgeproto.owner_node)
    try:
        store = Store(backend, subscriber_buffer=1000)
        for i in range(20):
            await store.create(f"pods/default/ok{i}", pod(f"ok{i}"))
        filler = fill_up(small_fs)
        outcomes: list[Any] = []

        async def writer(i: int) -> None:
            big = pod(f"big{i}")
            big["metadata"]["annotations"] = {"pad": "x" * 20000}
            try:
                outcomes.append(await store.create(f"pods/default/big{i}", big))
            except StoreError as exc:
                outcomes.append(exc)

        with store.subscribe() as sub:
            async with trio.open_nursery() as n:
                for i in range(30):
                    n.start_soon(writer, i)
            failed = [o for o in outcomes if isinstance(o, StoreError)]
            assert failed and all("full" in str(e) for e in failed)
            # what did commit was published, and only that
            written = sorted(o.rev for o in outcomes if isinstance(o, Event))
            assert [(await sub.receive()).rev for _ in written] == written
            assert sub.statistics()["buffered"] == 0
        records, rev = await store.list("pods/")
        assert rev == 20 + len(written) and len(records) == rev
        filler.unlink()
        await store.create("pods/default/after", pod("after"))
        assert (await store.get("pods/default/ok7")).value["metadata"]["name"] == "ok7"
        check = backend._conn.execute("PRAGMA integrity_check").fetchall()
        assert check == [("ok",)]
    finally:
        backend.close()
