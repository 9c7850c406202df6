"""The official Kubernetes Python client against a real ApiServer: VersionApi,
paging with ``_continue``, JSON patch, ``delete_collection``, namespaces and
dry runs. The client is synchronous (urllib3): it runs in a worker thread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from kubernetes import client

from tests.cloudgateway.test_api import TOKEN, Api, start_api

T = TypeVar("T")


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


def api_client(api: Api) -> client.ApiClient:
    config = client.Configuration(host=f"http://127.0.0.1:{api.port}")
    config.api_key = {"authorization": TOKEN}
    config.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(config)


async def call(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kw))


def configmap(name: str, labels: dict[str, str] | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels), data={"k": name}
    )


async def test_version_api(api: Api) -> None:
    info = await call(client.VersionApi(api_client(api)).get_code)
    assert info.git_version == "v1.30.0-edgeflock" and info.major == "1"


async def test_paging_patch_and_delete_collection(api: Api) -> None:
    core = client.CoreV1Api(api_client(api))
    for i in range(5):
        await call(
            core.create_namespaced_config_map,
            "default",
            configmap(f"c{i}", {"even": str(i % 2 == 0).lower()}),
        )
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = await call(core.list_namespaced_config_map, "default", limit=2, _continue=token)
        pages += 1
        seen += [cm.metadata.name for cm in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"c{i}" for i in range(5)] and pages == 3
    patched = await call(
        core.patch_namespaced_config_map,
        "c0",
        "default",
        [{"op": "replace", "path": "/data/k", "value": "patched"}],
    )
    assert patched.data == {"k": "patched"}
    await call(core.delete_collection_namespaced_config_map, "default", label_selector="even=true")
    left = await call(core.list_namespaced_config_map, "default")
    assert [cm.metadata.name for cm in left.items] == ["c1", "c3"]


async def test_namespaces_and_dry_run(api: Api) -> None:
    core = client.CoreV1Api(api_client(api))
    names = [ns.metadata.name for ns in (await call(core.list_namespace)).items]
    assert "default" in names and "kube-system" in names
    with pytest.raises(client.ApiException) as info:
        await call(core.create_namespaced_config_map, "team", configmap("a"))
    assert info.value.status == 404
    await call(core.create_namespace, client.V1Namespace(metadata=client.V1ObjectMeta(name="team")))
    made = await call(core.create_namespaced_config_map, "team", configmap("a"), dry_run="All")
    assert made.metadata.uid and made.metadata.creation_timestamp is not None
    assert (await call(core.list_namespaced_config_map, "team")).items == []
    await call(core.create_namespaced_config_map, "team", configmap("a"))
    await call(core.delete_namespace, "team")
    assert (await call(core.list_config_map_for_all_namespaces)).items == []
