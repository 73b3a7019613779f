"""A real control plane (SQLite, both listeners, TLS) for the RPC broker and
restore tests, and an API client holding a real API token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import keyring.backends.fail
import pytest

from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.services.api_tokens import create_api_token
from server_core.services.context import OPERATOR

from .agents import Api


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
        )
    )
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def api(cp: ControlPlane, session: aiohttp.ClientSession) -> Api:
    raw = await cp.store.transaction(create_api_token, "tests", OPERATOR)
    return Api(session, cp.api_url, raw)
