"""Validation of the backup plan as the operator edits it: source groups,
schedules and maintenance (pure; the API and the UI send the same JSON).

Every refusal is an InvalidInput whose message and ``field`` name the
offending value, so an API client and a form can both point at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server_core import cron
from server_core.errors import InvalidInput

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# restic's duration for --keep-within: years, months, days, hours ("1y6m", "7d").
KEEP_WITHIN = re.compile(r"^(\d{1,5}[ymdh])+$")
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")

COUNT_KEYS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
RETENTION_KEYS = (*COUNT_KEYS, "keep_within")
MAX_KEEP = 100_000
MAX_PATHS = 1000
MAX_PATH_CHARS = 4096
MAX_HOOK_BYTES = 8 * 1024
RETRY_MAX = 10
BACKOFF_MIN, BACKOFF_MAX = 10, 86_400
MAX_SCHEDULE_GROUPS = 100

GROUP_FIELDS = frozenset(
    {
        "name",
        "includes",
        "excludes",
        "retention",
        "retry_max",
        "retry_backoff_seconds",
        "pre_hook",
        "post_hook",
    }
)
# What a GET returns besides the editable fields: accepted back and ignored,
# so a client can PUT what it read.
GROUP_READ_ONLY = frozenset(
    {
        "id",
        "host_id",
        "has_pre_hook",
        "has_post_hook",
        "created_at",
        "updated_at",
        "schedule_ids",
    }
)
SCHEDULE_FIELDS = frozenset({"cron", "enabled", "source_group_ids"})
SCHEDULE_READ_ONLY = frozenset(
    {"id", "host_id", "description", "next_run_at", "last_run_at", "created_at", "updated_at"}
)
MAINTENANCE_FIELDS = frozenset(
    {"forget_cron", "prune_cron", "check_cron", "check_subset_percent", "enabled"}
)
MAINTENANCE_READ_ONLY = frozenset(
    {
        "host_id",
        "last_forget_at",
        "last_prune_at",
        "last_check_at",
        "last_check_status",
        "next_forget_at",
        "next_prune_at",
        "next_check_at",
        "due",
    }
)


@dataclass(frozen=True)
class GroupInput:
    name: str
    includes: list[str]
    excludes: list[str]
    retention: dict[str, Any]  # every RETENTION_KEYS key, None when unset
    retry_max: int
    retry_backoff_seconds: int
    pre_hook: str | None
    post_hook: str | None


@dataclass(frozen=True)
class ScheduleInput:
    cron: str
    enabled: bool
    source_group_ids: list[int]


@dataclass(frozen=True)
class MaintenanceInput:
    """Only the fields the body carried (a PUT may change one cadence)."""

    changes: dict[str, Any]


def _object(body: Any, allowed: frozenset[str], ignored: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    unknown = set(body) - allowed - ignored
    if unknown:
        raise InvalidInput(
            f"unknown field(s): {', '.join(sorted(map(str, unknown)))}",
            field=sorted(map(str, unknown))[0],
        )
    return {k: v for k, v in body.items() if k in allowed}


def _int(value: Any, field: str, low: int, high: int, *, what: str = "a whole number") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"'{field}' must be {what} between {low} and {high}", field=field)
    return value


def _text_ok(value: str) -> bool:
    # NUL ends a C string; a newline would split a line-based exclude file.
    return "\0" not in value and "\n" not in value and "\r" not in value


def is_absolute(path: str) -> bool:
    """Absolute on the agent's platform: '/…' (Linux) or 'C:\\…' / 'C:/…' (Windows)."""
    return path.startswith("/") or bool(_WINDOWS_ABS.match(path))


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidInput(
            "'name' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit (it is also the snapshot tag)",
            field="name",
        )
    return value


def parse_includes(value: Any) -> list[str]:
    field = "includes"
    if not isinstance(value, list) or not value:
        raise InvalidInput("'includes' must be a non-empty list of absolute paths", field=field)
    if len(value) > MAX_PATHS:
        raise InvalidInput(f"'includes' has more than {MAX_PATHS} paths", field=field)
    out: list[str] = []
    for i, path in enumerate(value):
        if not isinstance(path, str) or not path.strip():
            raise InvalidInput(f"'includes' entry {i + 1} must be a non-empty path", field=field)
        if len(path) > MAX_PATH_CHARS or not _text_ok(path):
            raise InvalidInput(
                f"'includes' entry {path[:80]!r} is too long or contains a control character",
                field=field,
            )
        if not is_absolute(path):
            raise InvalidInput(
                f"'includes' entry {path[:200]!r} must be an absolute path "
                "('/srv/data' or 'C:\\Users')",
                field=field,
            )
        out.append(path)
    return list(dict.fromkeys(out))


def parse_excludes(value: Any) -> list[str]:
    field = "excludes"
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("'excludes' must be a list of patterns", field=field)
    if len(value) > MAX_PATHS:
        raise InvalidInput(f"'excludes' has more than {MAX_PATHS} patterns", field=field)
    out: list[str] = []
    for i, pattern in enumerate(value):
        if not isinstance(pattern, str) or not pattern.strip():
            raise InvalidInput(f"'excludes' entry {i + 1} must be a non-empty pattern", field=field)
        if len(pattern) > MAX_PATH_CHARS or not _text_ok(pattern):
            raise InvalidInput(
                f"'excludes' entry {pattern[:80]!r} is too long or contains a control character",
                field=field,
            )
        out.append(pattern)
    return list(dict.fromkeys(out))


def parse_retention(value: Any) -> dict[str, Any]:
    """Every key present (None when unset). An empty policy is allowed: forget
    then leaves the group alone, and the conflict list says so."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidInput("'retention' must be an object of keep_* rules", field="retention")
    unknown = set(value) - set(RETENTION_KEYS)
    if unknown:
        raise InvalidInput(
            f"'retention' has unknown rule(s): {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(RETENTION_KEYS)})",
            field="retention." + sorted(map(str, unknown))[0],
        )
    out: dict[str, Any] = dict.fromkeys(RETENTION_KEYS)
    for key in COUNT_KEYS:
        count = value.get(key)
        if count is not None:
            out[key] = _int(count, f"retention.{key}", 1, MAX_KEEP, what="a count")
    within = value.get("keep_within")
    if within not in (None, ""):
        if (
            not isinstance(within, str)
            or not KEEP_WITHIN.match(within)
            or not any(d != "0" for d in re.sub(r"\D", "", within))
        ):
            raise InvalidInput(
                "'retention.keep_within' must be a duration like '7d', '12h' or '1y6m' "
                "(years y, months m, days d, hours h)",
                field="retention.keep_within",
            )
        out["keep_within"] = within
    return out


def parse_hook(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{field}' must be a shell command or null", field=field)
    if not value.strip():
        return None
    if "\0" in value:
        raise InvalidInput(f"'{field}' must not contain a NUL character", field=field)
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_HOOK_BYTES:
        raise InvalidInput(
            f"'{field}' is {size} bytes; hooks are limited to {MAX_HOOK_BYTES} bytes "
            "(call a script instead)",
            field=field,
        )
    return value


def parse_group(body: Any) -> GroupInput:
    data = _object(body, GROUP_FIELDS, GROUP_READ_ONLY)
    for required in ("name", "includes"):
        if required not in data:
            raise InvalidInput(f"'{required}' is required", field=required)
    return GroupInput(
        name=parse_name(data["name"]),
        includes=parse_includes(data["includes"]),
        excludes=parse_excludes(data.get("excludes")),
        retention=parse_retention(data.get("retention")),
        retry_max=_int(data.get("retry_max", 0), "retry_max", 0, RETRY_MAX),
        retry_backoff_seconds=_int(
            data.get("retry_backoff_seconds", 300),
            "retry_backoff_seconds",
            BACKOFF_MIN,
            BACKOFF_MAX,
            what="a number of seconds",
        ),
        pre_hook=parse_hook(data.get("pre_hook"), "pre_hook"),
        post_hook=parse_hook(data.get("post_hook"), "post_hook"),
    )


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"'{field}' must be true or false", field=field)
    return value


def parse_schedule(body: Any) -> ScheduleInput:
    data = _object(body, SCHEDULE_FIELDS, SCHEDULE_READ_ONLY)
    if "cron" not in data:
        raise InvalidInput("'cron' is required", field="cron")
    ids = data.get("source_group_ids")
    field = "source_group_ids"
    if not isinstance(ids, list) or not ids:
        raise InvalidInput("'source_group_ids' must list at least one source group id", field=field)
    if len(ids) > MAX_SCHEDULE_GROUPS:
        raise InvalidInput(
            f"'source_group_ids' lists more than {MAX_SCHEDULE_GROUPS} groups", field=field
        )
    for gid in ids:
        if not isinstance(gid, int) or isinstance(gid, bool) or not 0 < gid < 2**63:
            raise InvalidInput(
                f"'source_group_ids' entry {gid!r} is not a source group id", field=field
            )
    return ScheduleInput(
        cron=cron.validate(data["cron"]),
        enabled=_bool(data.get("enabled", True), "enabled"),
        source_group_ids=list(dict.fromkeys(ids)),
    )


def parse_maintenance(body: Any) -> MaintenanceInput:
    data = _object(body, MAINTENANCE_FIELDS, MAINTENANCE_READ_ONLY)
    changes: dict[str, Any] = {}
    for key in ("forget_cron", "prune_cron", "check_cron"):
        if key not in data:
            continue
        value = data[key]
        if value is None or (isinstance(value, str) and not value.strip()):
            changes[key] = None  # this kind of maintenance is off
            continue
        try:
            changes[key] = cron.validate(value)
        except InvalidInput as exc:
            raise InvalidInput(exc.message.replace("'cron'", f"'{key}'"), field=key) from None
    if "check_subset_percent" in data:
        changes["check_subset_percent"] = _int(
            data["check_subset_percent"], "check_subset_percent", 1, 100, what="a percentage"
        )
    if "enabled" in data:
        changes["enabled"] = _bool(data["enabled"], "enabled")
    return MaintenanceInput(changes)


def parse_bandwidth_override(upload: Any, download: Any) -> dict[str, int]:
    """A one-off cap for one job (KiB/s); None leaves the host's cap in force."""
    out: dict[str, int] = {}
    for name, value in (("upload_kib_s", upload), ("download_kib_s", download)):
        if value is not None:
            out[name] = _int(value, name, 1, 10**7, what="a whole number of KiB/s")
    return out
