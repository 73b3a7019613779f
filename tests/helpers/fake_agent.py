"""A protocol-speaking WebSocket client standing in for an agent, for tests of the server side."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent import protocol as p


def pinned(cert_sha256: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(bytes.fromhex(cert_sha256))


async def enrol(
    session: aiohttp.ClientSession, url: str, pin: str, token: str, hostname: str = "h"
) -> dict[str, Any]:
    req = p.EnrolRequest(
        token=token, hostname=hostname, os="linux", arch="amd64", agent_version="0.0.1"
    )
    async with session.post(url + p.ENROL_PATH, json=p.to_dict(req), ssl=pinned(pin)) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise AssertionError(f"enrol failed: {resp.status} {body}")
        return dict(body)


@dataclass
class FakeAgent:
    ws: aiohttp.ClientWebSocketResponse

    @classmethod
    async def connect(
        cls, session: aiohttp.ClientSession, url: str, pin: str, bearer: str, *, hello: bool = True
    ) -> FakeAgent:
        ws = await session.ws_connect(
            url + p.WS_PATH, headers={"Authorization": f"Bearer {bearer}"}, ssl=pinned(pin)
        )
        agent = cls(ws)
        if hello:
            await agent.send(
                p.Hello(
                    protocol_version=p.PROTOCOL_VERSION,
                    agent_version="0.0.1",
                    hostname="h",
                    os="linux",
                    arch="amd64",
                )
            )
        return agent

    async def send(self, message: p.Message, msg_id: str | None = None) -> str:
        mid = msg_id or p.new_id()
        await self.ws.send_str(p.encode(message, msg_id=mid))
        return mid

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive(self, timeout: float = 5.0) -> p.Message | None:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        return p.decode(msg.data, allowed=p.SERVER_MESSAGES).payload

    async def expect(self, kind: type, timeout: float = 5.0) -> Any:
        """Skip other messages until one of ``kind`` arrives."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} received")
            try:
                got = await self.receive(timeout=left)
            except TimeoutError:
                raise AssertionError(f"no {kind.__name__} received") from None
            if got is None:
                raise AssertionError(f"connection closed while waiting for {kind.__name__}")
            if isinstance(got, kind):
                return got

    async def acked(self, ids: set[str], timeout: float = 5.0) -> None:
        pending = set(ids)
        while pending:
            ack = await self.expect(p.Ack, timeout)
            pending -= set(ack.ids)


def raw_frame(type_: str, payload: Any) -> str:
    return json.dumps({"type": type_, "id": p.new_id(), "ts": 1.0, "payload": payload})


# -- answering RPCs like the agent's snapshot index (tree.list / tree.find) ----------


async def receive_envelope(agent: FakeAgent, timeout: float = 5.0) -> p.Envelope | None:
    """The next server frame with its envelope (an RpcCall's id is its call id)."""
    msg = await agent.ws.receive(timeout=timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        return None
    return p.decode(msg.data, allowed=p.SERVER_MESSAGES)


@dataclass
class FakeIndex:
    """One snapshot's tree, answered as the agent's index would answer it.

    ``files`` maps each file's absolute path to (size, mtime); directories
    are implied by the paths (``dirs`` adds empty ones). The first
    ``building_polls`` listings answer "building" with a growing node count."""

    files: dict[str, tuple[int, float]]
    dirs: tuple[str, ...] = ()
    building_polls: int = 0
    nodes_per_poll: int = 40_000

    def __post_init__(self) -> None:
        self.children: dict[str, dict[str, str]] = {"/": {}}  # dir -> name -> type
        self.sizes: dict[str, tuple[int, int]] = {}  # dir -> (files, bytes) below
        self.polls = 0
        for path in [*self.dirs, *self.files]:
            parts = [x for x in path.split("/") if x]
            parent = "/"
            for n, part in enumerate(parts):
                here = ("" if parent == "/" else parent) + "/" + part
                is_file = n == len(parts) - 1 and path in self.files
                self.children[parent][part] = "file" if is_file else "dir"
                if not is_file:
                    self.children.setdefault(here, {})
                parent = here
        for path, (size, _mtime) in self.files.items():
            parent = path.rsplit("/", 1)[0] or "/"
            while True:
                files, total = self.sizes.get(parent, (0, 0))
                self.sizes[parent] = (files + 1, total + size)
                if parent == "/":
                    break
                parent = parent.rsplit("/", 1)[0] or "/"

    @property
    def node_count(self) -> int:
        return sum(len(c) for c in self.children.values())

    def status(self) -> p.IndexStatus | None:
        if self.polls < self.building_polls:
            self.polls += 1
            return p.IndexStatus(
                state="building",
                nodes=self.polls * self.nodes_per_poll,
                elapsed_s=self.polls * 0.5,
            )
        return None

    def entry(self, path: str, name: str, type_: str) -> p.TreeEntry:
        if type_ == "dir":
            files, size = self.sizes.get(path, (0, 0))
            return p.TreeEntry(name=name, type="dir", size=size, mtime=1.7e9, files=files)
        size, mtime = self.files[path]
        return p.TreeEntry(name=name, type="file", size=size, mtime=mtime)

    def list(self, params: p.TreeListParams) -> p.TreeListResult:
        building = self.status()
        if building is not None:
            return p.TreeListResult(
                snapshot_id=params.snapshot_id, path=params.path, index=building
            )
        names = self.children.get(params.path)
        if names is None:
            raise LookupError(
                f"{params.path} is not a directory of snapshot {params.snapshot_id[:8]}"
            )
        ordered = sorted(names.items(), key=lambda kv: (kv[1] != "dir", kv[0]))
        page = ordered[params.offset : params.offset + params.limit]
        base = "" if params.path == "/" else params.path
        return p.TreeListResult(
            snapshot_id=params.snapshot_id,
            path=params.path,
            index=p.IndexStatus(state="ready", nodes=self.node_count, elapsed_s=1.0),
            entries=[self.entry(f"{base}/{name}", name, type_) for name, type_ in page],
            total=len(ordered),
        )

    def find(self, snapshot_id: str, pattern: str) -> list[p.TreeMatch]:
        found = []
        for parent, names in self.children.items():
            for name, type_ in sorted(names.items()):
                if fnmatch.fnmatchcase(name, pattern):
                    path = ("" if parent == "/" else parent) + "/" + name
                    entry = self.entry(path, name, type_)
                    found.append(
                        p.TreeMatch(
                            snapshot_id=snapshot_id,
                            path=path,
                            type=entry.type,
                            size=entry.size,
                            mtime=entry.mtime,
                        )
                    )
        return sorted(found, key=lambda m: m.path)


@dataclass
class IndexAnswerer:
    """Reads everything the control plane sends a fake agent: answers
    tree.list / tree.find from ``indexes`` (by snapshot id) and queues the
    other messages for ``expect``. ``fail`` maps (method, path or pattern) to
    an RpcError to answer instead; ``silent`` methods get no answer at all."""

    agent: FakeAgent
    indexes: dict[str, FakeIndex]
    fail: dict[tuple[str, str], p.RpcError] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.inbox: asyncio.Queue[p.Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> IndexAnswerer:
        self.task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def listed(self) -> list[str]:
        """Paths asked for with tree.list, in order (one per page or poll)."""
        return [params["path"] for method, params in self.calls if method == p.TREE_LIST]

    async def expect(self, kind: type, timeout: float = 5.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} received")
            try:
                got = await asyncio.wait_for(self.inbox.get(), left)
            except TimeoutError:
                raise AssertionError(f"no {kind.__name__} received") from None
            if isinstance(got, kind):
                return got

    async def _run(self) -> None:
        while True:
            try:
                envelope = await receive_envelope(self.agent, timeout=3600)
            except (TimeoutError, asyncio.CancelledError):
                raise
            except Exception:
                return
            if envelope is None:
                return
            message = envelope.payload
            if not isinstance(message, p.RpcCall):
                await self.inbox.put(message)
                continue
            self.calls.append((message.method, dict(message.params)))
            if message.method in self.silent:
                continue
            await self.agent.send(self._answer(envelope.id, message))

    def _answer(self, call_id: str, call: p.RpcCall) -> p.RpcResult:
        def error(code: str, text: str) -> p.RpcResult:
            return p.RpcResult(call_id=call_id, ok=False, error=p.RpcError(code=code, message=text))

        try:
            if call.method == p.TREE_LIST:
                params = p.from_dict(p.TreeListParams, call.params)
                failure = self.fail.get((call.method, params.path))
                if failure is not None:
                    return p.RpcResult(call_id=call_id, ok=False, error=failure)
                index = self.indexes.get(params.snapshot_id)
                if index is None:
                    return error("not_found", f"snapshot {params.snapshot_id[:8]} not found")
                try:
                    result = index.list(params)
                except LookupError as exc:
                    return error("not_found", str(exc))
                return p.RpcResult(call_id=call_id, ok=True, result=p.to_dict(result))
            if call.method == p.TREE_FIND:
                find = p.from_dict(p.TreeFindParams, call.params)
                failure = self.fail.get((call.method, find.pattern))
                if failure is not None:
                    return p.RpcResult(call_id=call_id, ok=False, error=failure)
                wanted = [find.snapshot_id] if find.snapshot_id else list(self.indexes)
                matches: list[p.TreeMatch] = []
                building: list[str] = []
                for snapshot_id in wanted:
                    index = self.indexes.get(snapshot_id)
                    if index is None:
                        continue
                    if index.status() is not None:
                        building.append(snapshot_id)
                        continue
                    matches += index.find(snapshot_id, find.pattern)
                found = p.TreeFindResult(
                    matches=matches[: find.limit],
                    truncated=len(matches) > find.limit,
                    building=building,
                )
                return p.RpcResult(call_id=call_id, ok=True, result=p.to_dict(found))
        except p.ProtocolError as exc:
            return error("bad_params", str(exc))
        return error("unsupported", f"unknown method {call.method}")
