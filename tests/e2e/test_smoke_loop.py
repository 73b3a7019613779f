from __future__ import annotations

import asyncio

import qasync


async def test_runs_on_the_qasync_loop(ui) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, qasync.QEventLoop)
    hosts = await ui.hosts.list_hosts()
    assert hosts == []
