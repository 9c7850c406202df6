"""``edgeflock.io/v1alpha1`` ``releases``: the agent releases the gateway
keeps (``_releases.py``), as a cluster-scoped, Kubernetes-shaped resource on
the API port (admin token), with a ``pieces`` subresource for the content.

- ``GET  /apis/edgeflock.io/v1alpha1/releases``: a ``ReleaseList``.
- ``POST /apis/edgeflock.io/v1alpha1/releases`` with
  ``{"manifest": <base64 of the canonical manifest>, "signature": <base64>}``:
  201 and the ``Release`` (named by its sha256); 200 if it existed with the
  very same manifest (a resumed push); 409 if another manifest has that name;
  400 if the manifest does not decode, or (gateway started with
  ``--release-key``) the signature does not verify.
- ``GET  .../releases/SHA``: the ``Release``; ``DELETE``: forget it and its pieces.
- ``GET  .../releases/SHA/pieces``: ``{"kind": "ReleasePieces", "pieces": N,
  "missing": [indices]}`` (what a resumed push still has to send).
- ``PUT  .../releases/SHA/pieces/INDEX`` with ``application/octet-stream``:
  the piece, checked against the manifest (length and sha256; 400 naming the
  piece if it does not match); answers ``{"kind": "ReleasePiece", "index",
  "complete", "missing"}``.

A ``Release`` reads::

    {"apiVersion": "edgeflock.io/v1alpha1", "kind": "Release",
     "metadata": {"name": SHA, "creationTimestamp": CREATED},
     "spec": {"version", "arch", "size", "sha256", "chunkSize", "pieces"},
     "status": {"complete": bool, "piecesStored": n, "piecesMissing": n}}
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from edgeproto.upgrade import CHUNK_SIZE, MAX_CHUNKS

from ._http import Request, Response, json_response, status_body
from ._releases import ReleaseError, ReleaseInfo, Releases
from ._store import StoreError, Unavailable

__all__ = ["RELEASES_GROUP", "RELEASES_VERSION", "ReleasesApi", "release_object"]

RELEASES_GROUP = "edgeflock.io"
RELEASES_VERSION = "v1alpha1"
API_VERSION = f"{RELEASES_GROUP}/{RELEASES_VERSION}"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "AlreadyExists"}


def release_object(r: ReleaseInfo) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Release",
        "metadata": {"name": r.sha256, "creationTimestamp": r.created},
        "spec": {
            "version": r.version,
            "arch": r.arch,
            "size": r.size,
            "sha256": r.sha256,
            "chunkSize": CHUNK_SIZE,
            "pieces": r.pieces,
        },
        "status": {
            "complete": r.complete,
            "piecesStored": r.present,
            "piecesMissing": r.missing,
        },
    }


def _error(code: int, message: str, *, name: str | None = None) -> Response:
    details: dict[str, Any] = {"group": RELEASES_GROUP, "kind": "releases"}
    if name is not None:
        details["name"] = name
    return json_response(code, status_body(code, _REASONS.get(code, "Invalid"), message, details))


def _unavailable(exc: Unavailable) -> Response:
    body = status_body(503, "ServiceUnavailable", f"the release store is unavailable, retry: {exc}")
    body["details"]["retryAfterSeconds"] = 1
    resp = json_response(503, body)
    resp.headers.append(("retry-after", "1"))
    return resp


def _b64(body: dict[str, Any], field: str) -> bytes:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise ReleaseError(400, f"{field} is required: base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReleaseError(400, f"{field} is not base64: {exc}") from None


class ReleasesApi:
    """Serves ``/apis/edgeflock.io/v1alpha1/...`` (``rest``: the path after the version)."""

    def __init__(self, releases: Releases) -> None:
        self.releases = releases

    def resource_list(self) -> dict[str, Any]:
        verbs = ["create", "delete", "get", "list"]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": API_VERSION,
            "resources": [
                {
                    "name": "releases",
                    "singularName": "release",
                    "namespaced": False,
                    "kind": "Release",
                    "verbs": verbs,
                },
                {
                    "name": "releases/pieces",
                    "singularName": "",
                    "namespaced": False,
                    "kind": "ReleasePieces",
                    "verbs": ["get", "update"],
                },
            ],
        }

    async def serve(self, req: Request, version: str, rest: list[str]) -> Response:
        name = rest[1] if len(rest) >= 2 else None
        try:
            return await self._serve(req, version, rest)
        except ReleaseError as exc:
            return _error(exc.code, str(exc), name=name)
        except Unavailable as exc:
            return _unavailable(exc)
        except StoreError as exc:
            return _error(500, f"the release store failed: {exc}", name=name)

    async def _serve(self, req: Request, version: str, rest: list[str]) -> Response:
        method = req.method
        if version != RELEASES_VERSION or any(not p for p in rest) or len(rest) > 4:
            raise ReleaseError(
                404, f"the server could not find the requested resource ({req.path})"
            )
        if not rest:
            if method not in ("GET", "HEAD"):
                raise ReleaseError(405, f"{method} is not allowed on {req.path}")
            return json_response(200, self.resource_list())
        if rest[0] != "releases":
            raise ReleaseError(
                404, f"the server could not find the requested resource ({req.path})"
            )
        if len(rest) == 1:
            if method in ("GET", "HEAD"):
                items = [release_object(r) for r in await self.releases.list()]
                return json_response(
                    200,
                    {
                        "apiVersion": API_VERSION,
                        "kind": "ReleaseList",
                        "metadata": {},
                        "items": items,
                    },
                )
            if method == "POST":
                return await self._create(req)
            raise ReleaseError(405, f"{method} is not allowed on {req.path}")
        sha = rest[1]
        if not _SHA256.fullmatch(sha):
            raise ReleaseError(404, f'release "{sha}" not found (a release is named by its sha256)')
        if len(rest) == 2:
            if method in ("GET", "HEAD"):
                return json_response(200, release_object(await self.releases.info(sha)))
            if method == "DELETE":
                if not await self.releases.delete(sha):
                    raise ReleaseError(404, f'release "{sha}" not found')
                body = status_body(200, "", f'release "{sha}" deleted', {"name": sha})
                body["status"] = "Success"
                return json_response(200, body)
            raise ReleaseError(405, f"{method} is not allowed on {req.path}")
        if rest[2] != "pieces":
            raise ReleaseError(
                404, f"the server could not find the requested resource ({req.path})"
            )
        if len(rest) == 3:
            if method not in ("GET", "HEAD"):
                raise ReleaseError(405, f"{method} is not allowed on {req.path}")
            info = await self.releases.info(sha)
            missing = await self.releases.missing(sha)
            return json_response(
                200,
                {
                    "apiVersion": API_VERSION,
                    "kind": "ReleasePieces",
                    "metadata": {"name": sha},
                    "pieces": info.pieces,
                    "missing": missing,
                },
            )
        if method != "PUT":
            raise ReleaseError(405, f"{method} is not allowed on {req.path} (PUT a piece)")
        try:
            index = int(rest[3])
        except ValueError:
            raise ReleaseError(400, f"piece index {rest[3]!r} is not a number") from None
        if not 0 <= index < MAX_CHUNKS:
            raise ReleaseError(400, f"piece index {index} is out of range")
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/octet-stream":
            return json_response(
                415,
                status_body(
                    415,
                    "UnsupportedMediaType",
                    f"a piece is application/octet-stream, not {ctype or 'untyped'}",
                ),
            )
        info = await self.releases.put_piece(sha, index, req.body)
        return json_response(
            200,
            {
                "apiVersion": API_VERSION,
                "kind": "ReleasePiece",
                "index": index,
                "complete": info.complete,
                "missing": info.missing,
            },
        )

    async def _create(self, req: Request) -> Response:
        try:
            body = json.loads(req.body or b"null")
        except ValueError as exc:
            raise ReleaseError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ReleaseError(400, 'expected {"manifest": BASE64, "signature": BASE64}')
        unknown = sorted(set(body) - {"manifest", "signature", "apiVersion", "kind"})
        if unknown:
            raise ReleaseError(400, f"unknown fields {unknown}")
        info, created = await self.releases.create(_b64(body, "manifest"), _b64(body, "signature"))
        return json_response(201 if created else 200, release_object(info))
