"""Operator API inputs that generated requests rarely reach: digits that are
not ASCII, text that is not Unicode, ids beyond 64 bits, values of the wrong
kind that happen to be falsy. Each must be a 4xx that names the problem,
never a 500 with a traceback in the log.

The xfail(strict=True) tests are bugs found here and not fixed yet (the fix
is proposed in RELIABILITY.md); each turns into a plain failure — XPASS — the
day the fix lands, and then loses its marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.fuzz.live import LivePlane
from tests.fuzz.seed import seed


@dataclass
class Api:
    live: LivePlane
    session: requests.Session
    base: str

    def call(self, method: str, path: str, raw: str | None = None) -> requests.Response:
        headers = {"Content-Type": "application/json"} if raw is not None else {}
        before = len(self.live.errors.records)
        response = self.session.request(
            method, self.base + path, data=raw.encode() if raw else None, headers=headers
        )
        self.logged = self.live.errors.records[before:]
        del self.live.errors.records[before:]
        return response


@pytest.fixture(scope="module")
def api(live: LivePlane) -> Iterator[Api]:
    live.run(seed(live), timeout=60)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {live.api_token()}"
    yield Api(live, session, live.cp.api_url + "/api/v1")
    session.close()


def assert_refused(api: Api, response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    assert not api.logged, "a traceback was logged: " + api.live.errors.describe()


def test_ascii_digits_still_work(api: Api) -> None:
    assert api.call("GET", "/hosts/1").status_code == 200
    assert api.call("GET", "/alerts?limit=5").status_code == 200


# '²' and '٣' are str.isdigit(), and int() refuses the first one.
NON_ASCII_NUMBERS = [
    ("GET", "/hosts/²"),
    ("GET", "/alerts?limit=²"),
    ("GET", "/hosts/1/repo-stats?days=²"),
    ("GET", "/audit?before_id=³"),
    ("GET", "/hosts/1/snapshots/abc/tree?offset=²"),
]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "BUG (RELIABILITY.md, bug 1): "
        "api_common.int_param/query_int and the repo-stats 'days' check use "
        "str.isdigit(), true for '²', which int() then refuses: ValueError, a 500"
    ),
)
@pytest.mark.parametrize(("method", "path"), NON_ASCII_NUMBERS)
def test_non_ascii_digits_are_refused_not_a_500(api: Api, method: str, path: str) -> None:
    response = api.call(method, path)
    assert_refused(api, response, 404 if path.startswith("/hosts/²") else 400)


# JSON spells an unpaired surrogate as "\ud800"; json.loads accepts it, and
# SQLite (UTF-8) then refuses to store it.
SURROGATE = '"/srv/\\ud800"'
SURROGATE_BODIES = [
    ("PUT", "/hosts/1/credentials",
     f'{{"slot": "everyday", "repository": {{"url": {SURROGATE}, "password": "abcdefg"}}}}'),
    ("POST", "/hosts/1/source-groups", f'{{"name": "g2", "includes": [{SURROGATE}]}}'),
    ("PUT", "/hosts/1/hooks", '{"pre_hook": "echo \\ud800"}'),
    ("POST", "/notification-channels",
     '{"kind": "webhook", "name": "n\\ud800", "config": {"url": "http://127.0.0.1:9/x"}}'),
    ("POST", "/enrolment-tokens",
     '{"hostname": "h9", "repository": {"url": "/r", "password": "pass\\ud800"}}'),
]  # fmt: skip


@pytest.mark.xfail(
    strict=True,
    reason=(
        "BUG (RELIABILITY.md, bug 2): "
        "api_common.read_body accepts JSON strings with unpaired surrogates; "
        "storing them raises UnicodeEncodeError deep in a service: a 500"
    ),
)
@pytest.mark.parametrize(("method", "path", "body"), SURROGATE_BODIES)
def test_text_that_is_not_unicode_is_refused_not_a_500(
    api: Api, method: str, path: str, body: str
) -> None:
    assert_refused(api, api.call(method, path, body), 400)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "BUG (RELIABILITY.md, bug 4): "
        "services/updates._clean_ids checks host ids for >= 1 only; one beyond "
        "2**63-1 reaches SQLite: OverflowError, a 500"
    ),
)
def test_a_fleet_update_with_a_host_id_beyond_64_bits_is_refused(api: Api) -> None:
    response = api.call("POST", "/agent-updates", '{"host_ids": [9223372036854775808]}')
    assert_refused(api, response, 400)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "BUG (RELIABILITY.md, bug 5, minor): "
        "credentials.parse_repository reads 'env' with `or {}`, so "
        "false, 0 and \"\" pass as 'no variables' instead of being refused as not an object"
    ),
)
@pytest.mark.parametrize("env", ["false", "0", '""'])
def test_a_repository_env_that_is_not_an_object_is_refused(api: Api, env: str) -> None:
    body = '{"slot": "admin", "repository": {"url": "/r", "password": "abcdefg", "env": %s}}'
    response = api.call("PUT", "/hosts/1/credentials", body % env)
    assert_refused(api, response, 400)
