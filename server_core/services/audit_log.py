"""Reading the audit log (it is written by server_core.audit, never edited).

``search_audit`` answers the audit view and ``GET /api/v1/audit``: filters,
free text and keyset paging (``before_id``), newest first. ``AuditService``
wraps it for the loop and exports CSV page by page.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import peewee as pw

from server_core.errors import InvalidInput
from server_core.models import AuditEntry
from server_core.services.context import ServiceContext
from server_core.views import AuditPage, AuditQuery, AuditView

ACTOR_KINDS = ("operator", "api", "agent", "system")
MAX_LIMIT = 10_000
MAX_TEXT = 200
CSV_PAGE = 2000
CSV_HEADER = (
    "id",
    "time_utc",
    "actor_kind",
    "actor_id",
    "action",
    "target_kind",
    "target_id",
    "payload",
)
# A spreadsheet runs a cell starting with one of these as a formula (OWASP
# "CSV injection"); tab and CR are on OWASP's list too.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _view(e: AuditEntry) -> AuditView:
    return AuditView(
        id=e.id,
        ts=e.ts,
        actor_kind=e.actor_kind,
        actor_id=e.actor_id,
        action=e.action,
        target_kind=e.target_kind,
        target_id=e.target_id,
        payload=json.loads(e.payload),
    )


def list_audit(
    *,
    limit: int = 500,
    action: str | None = None,
    target_kind: str | None = None,
    target_id: str | None = None,
    since: float | None = None,
) -> list[AuditView]:
    """Exact-match lookup, newest first (store thread). The reader of the old
    ``/api/v1/audit`` route, kept for the tests that look entries up with it;
    the API and the audit view use :func:`search_audit`."""
    query = AuditEntry.select().order_by(AuditEntry.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEntry.action == action)
    if target_kind:
        query = query.where(AuditEntry.target_kind == target_kind)
    if target_id:
        query = query.where(AuditEntry.target_id == target_id)
    if since is not None:
        query = query.where(AuditEntry.ts >= since)
    return [_view(e) for e in query]


def validate_query(q: AuditQuery) -> None:
    """Refuse a query the store would answer wrongly or slowly, naming the field."""
    for name in ("since", "until"):
        value = getattr(q, name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(f"'{name}' must be a Unix time in seconds", field=name)
    if q.since is not None and q.until is not None and q.until < q.since:
        raise InvalidInput("'until' must not be before 'since'", field="until")
    if q.actor_kind is not None and q.actor_kind not in ACTOR_KINDS:
        raise InvalidInput(f"'actor' must be one of {', '.join(ACTOR_KINDS)}", field="actor")
    if q.action is not None and (not q.action or len(q.action) > 100):
        raise InvalidInput("'action' must be 1-100 characters", field="action")
    if q.target is not None:
        kind, _, ident = q.target.partition(":")
        if not kind or len(q.target) > 200 or (":" in q.target and not ident):
            raise InvalidInput(
                "'target' must be a kind ('host') or kind:id ('host:3')", field="target"
            )
    if q.text is not None and len(q.text) > MAX_TEXT:
        raise InvalidInput(f"the search text must be at most {MAX_TEXT} characters", field="q")
    if isinstance(q.limit, bool) or not isinstance(q.limit, int) or not 1 <= q.limit <= MAX_LIMIT:
        raise InvalidInput(f"'limit' must be between 1 and {MAX_LIMIT}", field="limit")
    if q.before_id is not None and (
        isinstance(q.before_id, bool) or not isinstance(q.before_id, int) or q.before_id < 1
    ):
        raise InvalidInput("'before_id' must be a positive integer", field="before_id")


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_TEXT_COLUMNS = ("action", "actor_kind", "actor_id", "target_kind", "target_id", "payload")


def _text_condition(text: str) -> Any:
    raw = _like_pattern(text)
    # Payloads are stored by json.dumps with ensure_ascii: "é" is "\u00e9" and
    # '"' is '\"' there, so the payload is also searched for the text as JSON
    # spells it.
    spelled = _like_pattern(json.dumps(text)[1:-1])
    # Spelled out in SQL: peewee turns LIKE into GLOB on SQLite. SQLite's LIKE
    # ignores the case of ASCII letters.
    terms = [f"{column} LIKE ? ESCAPE '\\'" for column in _TEXT_COLUMNS]
    params = [raw] * len(terms)
    if spelled != raw:
        terms.append("payload LIKE ? ESCAPE '\\'")
        params.append(spelled)
    return pw.SQL("(" + " OR ".join(terms) + ")", params)


def _filtered(q: AuditQuery) -> Any:
    query = AuditEntry.select()
    if q.since is not None:
        query = query.where(AuditEntry.ts >= q.since)
    if q.until is not None:
        query = query.where(AuditEntry.ts < q.until)
    if q.actor_kind:
        query = query.where(AuditEntry.actor_kind == q.actor_kind)
    if q.action:
        if q.action.endswith("."):
            # A prefix, compared exactly (LIKE would ignore case and treat '_' as a wildcard).
            query = query.where(pw.fn.substr(AuditEntry.action, 1, len(q.action)) == q.action)
        else:
            query = query.where(AuditEntry.action == q.action)
    if q.target:
        kind, sep, ident = q.target.partition(":")
        query = query.where(AuditEntry.target_kind == kind)
        if sep:
            query = query.where(AuditEntry.target_id == ident)
    if q.text:
        query = query.where(_text_condition(q.text))
    if q.before_id is not None:
        query = query.where(AuditEntry.id < q.before_id)
    return query


def search_audit(q: AuditQuery) -> AuditPage:
    """One page of matching entries, newest first (store thread)."""
    validate_query(q)
    rows = list(_filtered(q).order_by(AuditEntry.id.desc()).limit(q.limit + 1))
    return AuditPage(entries=[_view(e) for e in rows[: q.limit]], more=len(rows) > q.limit)


def audit_actions() -> list[str]:
    """Every action the log holds, sorted (store thread)."""
    query = AuditEntry.select(AuditEntry.action).distinct().order_by(AuditEntry.action)
    return [row.action for row in query]


def iso_utc(ts: float) -> str:
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _cell(value: str | None) -> str:
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def audit_csv(entries: Iterable[AuditView], *, header: bool = True) -> str:
    """Entries as CSV (RFC 4180): times in ISO-8601 UTC, the payload as compact JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(CSV_HEADER)
    for e in entries:
        writer.writerow(
            [
                str(e.id),
                iso_utc(e.ts),
                _cell(e.actor_kind),
                _cell(e.actor_id),
                _cell(e.action),
                _cell(e.target_kind),
                _cell(e.target_id),
                _cell(
                    json.dumps(e.payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
                ),
            ]
        )
    return out.getvalue()


def _csv_page(q: AuditQuery, header: bool) -> tuple[str, int | None]:
    """One page as CSV text and the before_id of the next page (None at the end)."""
    page = search_audit(q)
    text = audit_csv(page.entries, header=header)
    return text, page.entries[-1].id if page.more else None


class AuditService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def search(self, q: AuditQuery) -> AuditPage:
        return await self._ctx.store.call(search_audit, q)

    async def actions(self) -> list[str]:
        return await self._ctx.store.call(audit_actions)

    async def csv_chunks(self, q: AuditQuery) -> AsyncIterator[str]:
        """Every matching entry (``q.limit`` and ``q.before_id`` ignored) as CSV, a
        page per store call so a big export never holds the store thread for long;
        the text is rendered on the store thread, not on the loop."""
        validate_query(q)
        page_q = dataclasses.replace(q, limit=CSV_PAGE, before_id=None)
        header = True
        while True:
            text, next_before = await self._ctx.store.call(_csv_page, page_q, header)
            yield text
            if next_before is None:
                return
            header = False
            page_q = dataclasses.replace(page_q, before_id=next_before)

    async def csv(self, q: AuditQuery) -> str:
        return "".join([chunk async for chunk in self.csv_chunks(q)])
