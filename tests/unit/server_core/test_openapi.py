"""The OpenAPI document of /api/v1: a valid OpenAPI 3.0 document that names
exactly the routes ApiListener serves, served behind the API token.
(tests/fuzz/test_api_schemathesis.py checks the answers against it.)"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
import pytest

# The official OpenAPI 3.0 JSON Schema, as schemathesis ships it (a dev dependency).
from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

from server_core import openapi
from server_core.api_listener import ApiListener
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint, product_version
from server_core.services.api_tokens import create_api_token
from server_core.services.context import OPERATOR

METHODS = {"get", "put", "post", "delete", "patch"}


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


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document("1.2.3")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_document_is_valid_openapi_3_0(document: dict[str, Any]) -> None:
    errors = [f"{list(e.instance_path)}: {e.message}" for e in OPENAPI_30_VALIDATOR.iter_errors(
        document
    )]  # fmt: skip
    assert not errors, "\n".join(errors[:20])
    assert document["info"]["version"] == "1.2.3"


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert refs, "a document without references is not what this module builds"
    for ref in refs:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


def test_operations_are_complete(document: dict[str, Any]) -> None:
    ids = []
    for path, item in document["paths"].items():
        templated = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            assert method in METHODS
            ids.append(op["operationId"])
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, f"{method} {path}: path parameters {declared}"
            codes = set(op["responses"])
            assert any(c.startswith("2") for c in codes), f"{method} {path}: no success"
            if op.get("security") != [{"metricsToken": []}]:
                assert "401" in codes, f"{method} {path}: the API token is not documented"
            if "requestBody" in op:
                assert "400" in codes, f"{method} {path}: a body can be invalid"
            assert op["summary"].strip()
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def _router_routes(cp: ControlPlane) -> set[tuple[str, str]]:
    # Every service the listener takes, from the control plane that runs it
    # (a new optional one fails here until it is wired in and documented).
    params = [n for n in inspect.signature(ApiListener).parameters if n != "ctx"]
    services = {n: cp.info if n == "server_info" else getattr(cp, n) for n in params}
    app = ApiListener(cp.ctx, **services).app()
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD to every GET
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        routes.add((route.method.lower(), str(path)))
    return routes


async def test_the_document_names_exactly_the_routes_the_listener_serves(
    cp: ControlPlane, document: dict[str, Any]
) -> None:
    served = _router_routes(cp)
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert sorted(served - documented) == [], "routes the document does not describe"
    assert sorted(documented - served) == [], "documented routes the listener does not serve"


async def test_the_document_is_served_behind_the_api_token(cp: ControlPlane) -> None:
    token = await cp.store.transaction(create_api_token, "openapi", OPERATOR)
    url = cp.api_url + openapi.PATH
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            served = await resp.json()
    assert served == openapi.build_document(product_version())


def test_view_schemas_follow_the_read_models(document: dict[str, Any]) -> None:
    """A field added to a view is documented without touching openapi.py."""
    import dataclasses

    schemas = document["components"]["schemas"]
    for cls in openapi.VIEWS:
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(schemas[cls.__name__]["properties"]) == names
        assert schemas[cls.__name__]["required"] == names
