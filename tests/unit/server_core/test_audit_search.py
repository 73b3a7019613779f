"""Audit log search, paging and CSV export against a real SQLite store."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from server_core import audit
from server_core.errors import InvalidInput
from server_core.services import audit_log
from server_core.services.audit_log import (
    AuditService,
    audit_csv,
    list_audit,
    search_audit,
)
from server_core.views import AuditQuery, AuditView

from .conftest import Services

T0 = 1_700_000_000.0


async def seed(svc: Services, rows: list[dict[str, Any]]) -> list[int]:
    """Entries written as the services write them; returns their ids."""

    def run() -> list[int]:
        for i, row in enumerate(rows):
            audit.record(
                row.get("actor_kind", "operator"),
                row["action"],
                target_kind=row.get("target_kind"),
                target_id=row.get("target_id"),
                actor_id=row.get("actor_id"),
                payload=row.get("payload"),
                ts=row.get("ts", T0 + i),
            )
        return [e.id for e in reversed(list_audit(limit=len(rows)))]

    return await svc.store.transaction(run)


async def search(svc: Services, **kw: Any) -> list[str]:
    page = await svc.store.call(search_audit, AuditQuery(**kw))
    return [e.action for e in page.entries]


async def test_filters_combine_and_answer_newest_first(svc: Services) -> None:
    await seed(
        svc,
        [
            {"action": "host.online", "actor_kind": "agent", "target_kind": "host", "target_id": 3},
            {
                "action": "alert.raised",
                "actor_kind": "system",
                "target_kind": "alert",
                "target_id": 1,
            },
            {
                "action": "alert.acknowledged",
                "actor_kind": "api",
                "target_kind": "alert",
                "target_id": 1,
            },
            {"action": "alertx.other", "actor_kind": "operator"},
            {
                "action": "host.deleted",
                "actor_kind": "operator",
                "target_kind": "host",
                "target_id": 31,
            },
        ],
    )
    assert await search(svc) == [
        "host.deleted",
        "alertx.other",
        "alert.acknowledged",
        "alert.raised",
        "host.online",
    ]
    # A prefix ends in "." and matches exactly that prefix (not "alertx.").
    assert await search(svc, action="alert.") == ["alert.acknowledged", "alert.raised"]
    assert await search(svc, action="ALERT.") == []
    assert await search(svc, action="alert") == []
    assert await search(svc, action="host.online") == ["host.online"]
    assert await search(svc, actor_kind="api") == ["alert.acknowledged"]
    # "host:3" is that one host, not host 31; "host" is every host target.
    assert await search(svc, target="host:3") == ["host.online"]
    assert await search(svc, target="host") == ["host.deleted", "host.online"]
    # since <= ts < until.
    assert await search(svc, since=T0 + 1, until=T0 + 3) == ["alert.acknowledged", "alert.raised"]
    assert await search(svc, since=T0 + 1, until=T0 + 3, actor_kind="system") == ["alert.raised"]


async def test_free_text_covers_every_column_ignoring_case(svc: Services) -> None:
    await seed(
        svc,
        [
            {"action": "Host.Renamed", "payload": {"name": "web1"}},
            {"action": "a.b", "actor_kind": "api", "actor_id": "token:77"},
            {"action": "c.d", "target_kind": "source_group", "target_id": 4242},
            {"action": "e.f", "payload": {"message": "Backup FAILED on db1"}},
        ],
    )
    assert await search(svc, text="host.renamed") == ["Host.Renamed"]
    assert await search(svc, text="TOKEN:7") == ["a.b"]
    assert await search(svc, text="api") == ["a.b"]
    assert await search(svc, text="424") == ["c.d"]
    assert await search(svc, text="source_group") == ["c.d"]
    assert await search(svc, text="failed on") == ["e.f"]
    assert await search(svc, text="WEB1") == ["Host.Renamed"]
    assert await search(svc, text="nothing like this") == []


async def test_free_text_wildcards_are_literal(svc: Services) -> None:
    await seed(
        svc,
        [
            {"action": "x.percent", "payload": {"v": "50% done"}},
            {"action": "x.fivehundred", "payload": {"v": "500 done"}},
            {"action": "x.under", "payload": {"v": "a_b"}},
            {"action": "x.axb", "payload": {"v": "axb"}},
            {"action": "x.backslash", "payload": {"v": "C:\\Data"}},
        ],
    )
    assert await search(svc, text="50%") == ["x.percent"]
    assert await search(svc, text="%") == ["x.percent"]
    assert await search(svc, text="a_b") == ["x.under"]
    assert await search(svc, text="C:\\Data") == ["x.backslash"]


async def test_free_text_finds_what_json_escapes_in_the_payload(svc: Services) -> None:
    await seed(
        svc,
        [
            {"action": "x.umlaut", "payload": {"owner": "Jürgen Müller"}},
            {"action": "x.quote", "payload": {"msg": 'said "hi"'}},
        ],
    )
    assert await search(svc, text="Müller") == ["x.umlaut"]
    assert await search(svc, text='"hi"') == ["x.quote"]


async def test_paging_by_before_id_walks_everything_once(svc: Services) -> None:
    ids = await seed(svc, [{"action": f"a.n{i}"} for i in range(7)])
    seen: list[int] = []
    before: int | None = None
    pages = 0
    while True:
        page = await svc.store.call(search_audit, AuditQuery(limit=3, before_id=before))
        pages += 1
        seen += [e.id for e in page.entries]
        if not page.more:
            break
        before = page.entries[-1].id
    assert seen == sorted(ids, reverse=True)
    assert pages == 3
    # Exactly `limit` matches left: no phantom "more".
    exact = await svc.store.call(search_audit, AuditQuery(limit=7))
    assert len(exact.entries) == 7 and not exact.more
    older = await svc.store.call(search_audit, AuditQuery(limit=2, before_id=ids[3]))
    assert [e.id for e in older.entries] == [ids[2], ids[1]] and older.more


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (AuditQuery(limit=0), "limit"),
        (AuditQuery(limit=10_001), "limit"),
        (AuditQuery(actor_kind="robot"), "actor"),
        (AuditQuery(target="host:"), "target"),
        (AuditQuery(target=":3"), "target"),
        (AuditQuery(text="x" * 201), "q"),
        (AuditQuery(since=10.0, until=5.0), "until"),
        (AuditQuery(since=float("nan")), "since"),
        (AuditQuery(before_id=0), "before_id"),
    ],
)
async def test_bad_queries_name_the_field(svc: Services, query: AuditQuery, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        await svc.store.call(search_audit, query)
    assert err.value.field == field


async def test_actions_are_distinct_and_sorted(svc: Services) -> None:
    await seed(svc, [{"action": a} for a in ("b.x", "a.y", "b.x", "c.z", "a.y")])
    assert await AuditService(svc.ctx).actions() == ["a.y", "b.x", "c.z"]


def parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_csv_shape_times_payload_and_formula_guard() -> None:
    entries = [
        AuditView(
            id=9,
            ts=T0 + 0.25,
            actor_kind="api",
            actor_id='=HYPERLINK("http://evil")',
            action="host.renamed",
            target_kind="host",
            target_id="-3",
            payload={"b": 1, "a": 'x,y\n"z"', "name": "Müller"},
        ),
        AuditView(
            id=8,
            ts=T0,
            actor_kind="operator",
            actor_id=None,
            action="@sum",
            target_kind=None,
            target_id="+1",
            payload={},
        ),
    ]
    rows = parse_csv(audit_csv(entries))
    assert rows[0] == list(audit_log.CSV_HEADER)
    assert rows[1] == [
        "9",
        "2023-11-14T22:13:20.250Z",
        "api",
        '\'=HYPERLINK("http://evil")',
        "host.renamed",
        "host",
        "'-3",
        '{"a":"x,y\\n\\"z\\"","b":1,"name":"Müller"}',
    ]
    assert rows[2] == ["8", "2023-11-14T22:13:20.000Z", "operator", "", "'@sum", "", "'+1", "{}"]
    assert json.loads(rows[1][7])["a"] == 'x,y\n"z"'
    assert audit_csv([], header=False) == ""


async def test_csv_export_streams_every_match_in_pages(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "CSV_PAGE", 4)
    ids = await seed(svc, [{"action": "job.queued" if i % 3 else "host.online"} for i in range(14)])
    service = AuditService(svc.ctx)
    chunks = [c async for c in service.csv_chunks(AuditQuery(action="job.queued", limit=1))]
    assert len(chunks) == 3  # 9 matches, 4 a page: header only in the first
    rows = parse_csv("".join(chunks))
    assert rows[0][0] == "id" and sum(r[0] == "id" for r in rows) == 1
    expected = [str(i) for n, i in enumerate(ids) if n % 3][::-1]
    assert [r[0] for r in rows[1:]] == expected
    everything = parse_csv(await service.csv(AuditQuery()))
    assert len(everything) == 15
    with pytest.raises(InvalidInput):
        await service.csv(AuditQuery(actor_kind="robot"))


async def test_list_audit_keeps_its_old_contract(svc: Services) -> None:
    await seed(
        svc,
        [
            {"action": "x.a", "target_kind": "host", "target_id": 1, "ts": T0},
            {"action": "x.b", "target_kind": "host", "target_id": 2, "ts": T0 + 10},
        ],
    )
    rows = await svc.store.call(list_audit, target_kind="host", target_id="2", since=T0 + 5)
    assert [r.action for r in rows] == ["x.b"]
