"""Operator API inputs that generated requests rarely reach: digits that are
not ASCII, text that is not Unicode, ids beyond 64 bits, values of the wrong
kind that happen to be falsy. Each must be a 4xx that names the problem,
never a 500 with a traceback in the log.

Each test below but the first was written against a bug these inputs found
(RELIABILITY.md, "Bugs found and fixed", 1, 2, 4 and 5) and failed until it was fixed.
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


@pytest.mark.parametrize(("method", "path", "body"), SURROGATE_BODIES)
def test_text_that_is_not_unicode_is_refused_not_a_500(
    api: Api, method: str, path: str, body: str
) -> None:
    assert_refused(api, api.call(method, path, body), 400)


def test_a_fleet_update_with_a_host_id_beyond_64_bits_is_refused(api: Api) -> None:
    response = api.call("POST", "/agent-updates", '{"host_ids": [9223372036854775808]}')
    assert_refused(api, response, 400)


@pytest.mark.parametrize("env", ["false", "0", '""'])
def test_a_repository_env_that_is_not_an_object_is_refused(api: Api, env: str) -> None:
    body = '{"slot": "admin", "repository": {"url": "/r", "password": "abcdefg", "env": %s}}'
    response = api.call("PUT", "/hosts/1/credentials", body % env)
    assert_refused(api, response, 400)


def test_a_path_id_of_thousands_of_digits_is_a_404_not_a_500(api: Api) -> None:
    # int() refuses strings of more than 4,300 digits (ValueError): a 500 before.
    assert_refused(api, api.call("GET", "/hosts/" + "1" * 5000), 404)
