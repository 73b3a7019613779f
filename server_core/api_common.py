"""What every operator API route module shares: parsing path, query and body
at the edge, the error shape, and the acting API token."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server_core.errors import InvalidInput, NotFound
from server_core.services.context import Actor

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACTOR_KEY = web.RequestKey("actor", Actor)


def error_response(
    status: int, code: str, message: str, *, field: str | None = None
) -> web.Response:
    error: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status)


MAX_ID = 2**63 - 1


def int_param(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    what = name.removesuffix("_id").replace("_", " ")
    if not is_whole_number(raw) or len(raw) > 19 or not 0 < int(raw) <= MAX_ID:
        raise NotFound(f"{what} {raw[:40]!r} does not exist")
    return int(raw)


def is_whole_number(raw: str) -> bool:
    """ASCII digits only: str.isdigit() is also true for '²' or '٣', which int()
    refuses or reads as a number nobody typed."""
    return raw.isascii() and raw.isdigit()


def _lone_surrogate(value: Any) -> bool:
    """True if any string (or key) in a decoded JSON value is not Unicode text:
    JSON may spell an unpaired surrogate ("\\ud800"), which nothing downstream
    can store or send. Iterative, so nesting depth costs no stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def read_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("the request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    if _lone_surrogate(body):
        raise InvalidInput(
            "the request body holds text that is not valid Unicode (an unpaired surrogate)"
        )
    return body


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not is_whole_number(raw) or len(raw) > 10:
        raise InvalidInput(f"'{name}' must be a whole number", field=name)
    return int(raw)


def optional_id(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_ID:
        raise InvalidInput(f"'{name}' must be a positive integer", field=name)
    return value


def is_loopback_host(host: str) -> bool:
    """True for "localhost" and loopback addresses (v4 and v6), False for any
    other name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
