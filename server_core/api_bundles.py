"""Operator API: offline installer bundles (mounted by ApiListener).

``POST /api/v1/hosts/{host_id}/offline-bundle`` with ``{"os": "linux"|"windows",
"arch": "amd64", "restic_path": "/abs/path/on/the/app/machine"}`` (``arch`` and
``restic_path`` optional) answers the bundle itself as an attachment. It holds a
fresh one-time enrolment token: the response is marked ``no-store``, and the
file is written 0600 while it is built and deleted once sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import IO, Protocol

from aiohttp import web

from server_core.api_common import ACTOR_KEY, int_param, read_body
from server_core.offline_bundle import (
    BundleRequest,
    OfflineBundle,
    Progress,
    bundle_filename,
    parse_bundle_request,
)
from server_core.services.context import Actor

ROUTE = "/api/v1/hosts/{host_id}/offline-bundle"
_CHUNK = 256 * 1024


class OfflineBundles(Protocol):
    async def build(
        self,
        request: BundleRequest,
        dest: Path,
        actor: Actor,
        *,
        progress: Progress | None = None,
    ) -> OfflineBundle: ...


class OfflineBundlesApi:
    def __init__(self, bundles: OfflineBundles) -> None:
        self._bundles = bundles

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(ROUTE, self.create)

    async def create(self, request: web.Request) -> web.StreamResponse:
        host_id = int_param(request, "host_id")
        wanted = parse_bundle_request(host_id, await read_body(request))
        loop = asyncio.get_running_loop()
        workdir = Path(await loop.run_in_executor(None, _private_dir))
        try:
            # The final name is only known once the host's name is; the file
            # name inside the work dir does not matter.
            dest = workdir / bundle_filename("host", wanted.os, wanted.arch)
            bundle = await self._bundles.build(wanted, dest, request[ACTOR_KEY])
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/zip"
                    if bundle.os == "windows"
                    else "application/x-sh",
                    "Content-Disposition": f'attachment; filename="{bundle.filename}"',
                    "Content-Length": str(bundle.size),
                    "Cache-Control": "no-store",
                    "X-Content-SHA256": bundle.sha256,
                    "X-Enrolment-Token-Expires-At": f"{bundle.grant.expires_at:.0f}",
                }
            )
            await response.prepare(request)
            f = await loop.run_in_executor(None, bundle.path.open, "rb")
            try:
                while chunk := await loop.run_in_executor(None, _read, f):
                    await response.write(chunk)
            finally:
                await loop.run_in_executor(None, f.close)
            await response.write_eof()
            return response
        finally:
            await loop.run_in_executor(None, _remove, workdir)


def _private_dir() -> str:
    return tempfile.mkdtemp(prefix="restic-manager-bundle-")  # mode 0700


def _read(f: IO[bytes]) -> bytes:
    return f.read(_CHUNK)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
