"""The OpenAPI 3 document of the operator API (`/api/v1`), served at
``/api/v1/openapi.json`` behind the API token like every other route.

Response schemas are derived from the read models in ``server_core.views``
(the API returns ``as_json(view)``), so a field added to a view is documented
the moment it exists. Request bodies, parameters and status codes are written
out here, next to the table of operations; tests/unit/server_core/test_openapi.py
checks that this table and ApiListener's router name the same routes, and a
schemathesis run against a live control plane checks the rest.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from aiohttp import web

from server_core import alert_rules, credentials
from server_core.api_common import MAX_ID
from server_core.notify.channel_config import KINDS as CHANNEL_KINDS
from server_core.notify.channel_config import SECURITIES
from server_core.offline_bundle import BUNDLE_OSES
from server_core.services.audit_log import ACTOR_KINDS
from server_core.services.hosts import PRESENCE_MODES
from server_core.services.jobs import DISPATCHABLE, WITH_ARGS
from server_core.services.pending_hosts import AcceptedHost, PendingHostView
from server_core.update_views import BundledAgentView, FleetUpdateView, HostUpdateView
from server_core.views import (
    AlertCounts,
    AlertView,
    AuditView,
    ChannelView,
    ConflictView,
    DeliveryView,
    EnrolmentTokenView,
    FindMatchView,
    FindResults,
    HostHooksView,
    HostView,
    JobView,
    MaintenanceView,
    MetricsSettingsView,
    RepoStatsPoint,
    RepoStatsView,
    ScheduleView,
    ServerInfo,
    SnapshotView,
    SourceGroupView,
    TestResult,
    TreeEntryView,
    TreeListing,
)

PATH = "/api/v1/openapi.json"
OPENAPI_VERSION = "3.0.3"
JSON = "application/json"

# Read models the API returns, by component name (nested ones included).
VIEWS: tuple[type, ...] = (
    HostView,
    EnrolmentTokenView,
    SourceGroupView,
    HostHooksView,
    ScheduleView,
    ConflictView,
    MaintenanceView,
    RepoStatsView,
    RepoStatsPoint,
    SnapshotView,
    TreeListing,
    TreeEntryView,
    FindResults,
    FindMatchView,
    JobView,
    AlertView,
    AlertCounts,
    ChannelView,
    DeliveryView,
    TestResult,
    AuditView,
    MetricsSettingsView,
    PendingHostView,
    AcceptedHost,
    HostUpdateView,
    FleetUpdateView,
    BundledAgentView,
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        # OpenAPI 3.0 ignores siblings of $ref: wrap it to say "or null".
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def type_schema(hint: Any) -> dict[str, Any]:
    """JSON Schema (OpenAPI 3.0 dialect) for one field's type hint."""
    if hint is Any:
        return {}
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        options = [a for a in get_args(hint) if a is not type(None)]
        inner = (
            type_schema(options[0])
            if len(options) == 1
            else {"anyOf": [type_schema(o) for o in options]}
        )
        return _nullable(inner) if len(options) < len(get_args(hint)) else inner
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(hint))}
    if origin is list or origin is tuple:
        (item, *_) = get_args(hint) or (Any,)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        _, value = get_args(hint)
        return {"type": "object", "additionalProperties": type_schema(value) or True}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _ref(hint.__name__)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return {"type": simple[hint]}
    raise TypeError(f"no schema for {hint!r}")


def view_schema(cls: type) -> dict[str, Any]:
    """A view as the API sends it: every field present (as_json writes them all)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: type_schema(hints[name]) for name in names},
        "required": names,
        "additionalProperties": False,
    }
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


# -- request bodies ------------------------------------------------------------

_STR = {"type": "string"}
_INT = {"type": "integer", "format": "int64"}
_ID = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}
_KIB = {"type": "integer", "minimum": 1, "maximum": 10**7, "nullable": True}
_HOOK = {
    "type": "string",
    "nullable": True,
    "description": "a shell command (at most 8 KiB); null or blank for none",
}
_CRON = {
    "type": "string",
    "nullable": True,
    "description": "a five-field cron expression; null or blank turns this kind off",
}
_PATHS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 4096},
    "maxItems": 1000,
}


def _ignored(*names: str) -> dict[str, Any]:
    """Fields a GET returns that a PUT accepts back and ignores."""
    return {name: {"description": "read-only: accepted and ignored"} for name in names}


REQUESTS: dict[str, dict[str, Any]] = {
    "Repository": {
        "type": "object",
        "description": "Repository credentials (write-only: never returned).",
        "properties": {
            "url": {"type": "string", "minLength": 1, "maxLength": 2048},
            "password": {"type": "string", "minLength": 4, "maxLength": 4096},
            "username": {"type": "string", "maxLength": 1024, "nullable": True},
            "backend_password": {"type": "string", "maxLength": 1024, "nullable": True},
            "env": {
                "type": "object",
                "additionalProperties": {"type": "string", "maxLength": 8192},
                "nullable": True,
            },
        },
        "required": ["url", "password"],
        "additionalProperties": False,
    },
    "NewHost": {
        "type": "object",
        "properties": {
            "hostname": {"type": "string", "minLength": 1, "maxLength": 253},
            "repository": _ref("Repository"),
            "admin_repository": _nullable(_ref("Repository")),
            "initial_paths": _PATHS,
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}},
        },
        "required": ["hostname", "repository"],
        "additionalProperties": False,
    },
    "CredentialsUpdate": {
        "type": "object",
        "properties": {
            "slot": {"type": "string", "enum": list(credentials.SLOTS)},
            "repository": _ref("Repository"),
        },
        "required": ["slot", "repository"],
        "additionalProperties": False,
    },
    "Bandwidth": {
        "type": "object",
        "description": "Caps in KiB/s; null is unlimited.",
        "properties": {"upload_kib_s": _KIB, "download_kib_s": _KIB},
        "additionalProperties": False,
    },
    "SourceGroupInput": {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                "description": "also the snapshot tag",
            },
            "includes": {**_PATHS, "minItems": 1, "description": "absolute paths"},
            "excludes": {**_PATHS, "nullable": True, "description": "restic exclude patterns"},
            "retention": {
                "type": "object",
                "nullable": True,
                "properties": {
                    **{
                        key: {"type": "integer", "minimum": 1, "maximum": 100_000, "nullable": True}
                        for key in (
                            "keep_last",
                            "keep_hourly",
                            "keep_daily",
                            "keep_weekly",
                            "keep_monthly",
                            "keep_yearly",
                        )
                    },
                    "keep_within": {
                        "type": "string",
                        "nullable": True,
                        "description": "a duration like 7d, 12h or 1y6m",
                    },
                },
                "additionalProperties": False,
            },
            "retry_max": {"type": "integer", "minimum": 0, "maximum": 10},
            "retry_backoff_seconds": {"type": "integer", "minimum": 10, "maximum": 86_400},
            "pre_hook": _HOOK,
            "post_hook": _HOOK,
            **_ignored(
                "id",
                "host_id",
                "has_pre_hook",
                "has_post_hook",
                "created_at",
                "updated_at",
                "schedule_ids",
            ),
        },
        "required": ["name", "includes"],
        "additionalProperties": False,
    },
    "ScheduleInput": {
        "type": "object",
        "properties": {
            "cron": {"type": "string", "description": "a five-field cron expression"},
            "enabled": {"type": "boolean"},
            "source_group_ids": {"type": "array", "items": _ID, "minItems": 1, "maxItems": 100},
            **_ignored(
                "id",
                "host_id",
                "description",
                "next_run_at",
                "last_run_at",
                "created_at",
                "updated_at",
            ),
        },
        "required": ["cron", "source_group_ids"],
        "additionalProperties": False,
    },
    "MaintenanceInput": {
        "type": "object",
        "description": "Only the fields sent change.",
        "properties": {
            "enabled": {"type": "boolean"},
            "forget_cron": _CRON,
            "prune_cron": _CRON,
            "check_cron": _CRON,
            "check_subset_percent": {"type": "integer", "minimum": 1, "maximum": 100},
            **_ignored(
                "host_id",
                "last_forget_at",
                "last_prune_at",
                "last_check_at",
                "last_check_status",
                "next_forget_at",
                "next_prune_at",
                "next_check_at",
                "due",
            ),
        },
        "additionalProperties": False,
    },
    "HooksInput": {
        "type": "object",
        "properties": {"pre_hook": _HOOK, "post_hook": _HOOK, **_ignored("host_id")},
        "additionalProperties": False,
    },
    "ReinitInput": {
        "type": "object",
        "properties": {"confirm": {"type": "string", "description": "the host's name"}},
        "required": ["confirm"],
        "additionalProperties": False,
    },
    "JobInput": {
        "type": "object",
        "description": (
            "A job to run now. A restore or diff job takes only 'kind' and the object "
            "named after its kind; a bandwidth override is only for backups."
        ),
        "properties": {
            "kind": {"type": "string", "enum": [*DISPATCHABLE, *WITH_ARGS]},
            "source_group_id": {**_ID, "nullable": True},
            "upload_kib_s": _KIB,
            "download_kib_s": _KIB,
            "restore": {
                "type": "object",
                "properties": {
                    "snapshot_id": _STR,
                    "paths": {"type": "array", "items": _STR, "maxItems": 1000},
                    "target_dir": {"type": "string", "nullable": True},
                    "in_place": {"type": "boolean"},
                    "confirm_hostname": {"type": "string", "nullable": True},
                },
                "required": ["snapshot_id", "paths"],
                "additionalProperties": False,
            },
            "diff": {
                "type": "object",
                "properties": {"snapshot_a": _STR, "snapshot_b": _STR},
                "required": ["snapshot_a", "snapshot_b"],
                "additionalProperties": False,
            },
        },
        "required": ["kind"],
        "additionalProperties": False,
    },
    "ChannelInput": {
        "type": "object",
        "description": (
            "A notification channel. 'config' depends on the kind: webhook {url, "
            "secret_header}, ntfy {topic_url, token}, smtp {host, port, security, "
            "username, password, from, to}. Secret fields are write-only."
        ),
        "properties": {
            "kind": {"type": "string", "enum": list(CHANNEL_KINDS)},
            "name": {"type": "string", "maxLength": 100, "nullable": True},
            "enabled": {"type": "boolean", "nullable": True},
            "min_severity": {
                "type": "string",
                "enum": list(alert_rules.SEVERITIES),
                "nullable": True,
            },
            "config": {
                "type": "object",
                "nullable": True,
                "properties": {
                    "url": _STR,
                    "secret_header": {"type": "string", "nullable": True},
                    "topic_url": _STR,
                    "token": {"type": "string", "nullable": True},
                    "host": _STR,
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "security": {"type": "string", "enum": list(SECURITIES)},
                    "username": {"type": "string", "nullable": True},
                    "password": {"type": "string", "nullable": True},
                    "from": _STR,
                    "to": {"type": "array", "items": _STR, "maxItems": 50},
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "PendingAccept": {
        "type": "object",
        "description": "The add-host fields; 'hostname' defaults to the one the agent announced.",
        "properties": {
            "hostname": {"type": "string", "minLength": 1, "maxLength": 253},
            "repository": _ref("Repository"),
            "admin_repository": _nullable(_ref("Repository")),
            "initial_paths": _PATHS,
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}},
        },
        "required": ["repository"],
        "additionalProperties": False,
    },
    "PendingReject": {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "nullable": True, "description": "shown by the agent"}
        },
        "additionalProperties": False,
    },
    "BundleRequest": {
        "type": "object",
        "properties": {
            "os": {"type": "string", "enum": list(BUNDLE_OSES)},
            "arch": {"type": "string", "description": "default amd64"},
            "restic_path": {
                "type": "string",
                "nullable": True,
                "description": "a restic binary on the app's machine to put in the bundle",
            },
        },
        "required": ["os"],
        "additionalProperties": False,
    },
    "FleetUpdateInput": {
        "type": "object",
        "properties": {
            "host_ids": {
                "type": "array",
                "items": _ID,
                "nullable": True,
                "description": "the hosts to update, in order; null or absent: every host",
            }
        },
        "additionalProperties": False,
    },
    "AlertIds": {
        "type": "object",
        "properties": {"ids": {"type": "array", "items": _ID, "minItems": 1, "maxItems": 1000}},
        "required": ["ids"],
        "additionalProperties": False,
    },
    "PresenceInput": {
        "type": "object",
        "properties": {"mode": {"type": "string", "enum": list(PRESENCE_MODES)}},
        "required": ["mode"],
        "additionalProperties": False,
    },
    "MetricsSettingsInput": {
        "type": "object",
        "properties": {"enabled": {"type": "boolean"}, **_ignored("token_set")},
        "required": ["enabled"],
        "additionalProperties": False,
    },
}

# Responses that are not a view.
OTHER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "stable, for programs"},
                    "message": {"type": "string", "description": "for people"},
                    "field": {"type": "string", "description": "the offending input field"},
                },
                "required": ["code", "message"],
                "additionalProperties": False,
            }
        },
        "required": ["error"],
        "additionalProperties": False,
    },
    "ServerSummary": {
        "type": "object",
        "properties": {
            name: {"type": "string"} for name in ("version", "agent_url", "cert_sha256")
        },
        "required": ["version", "agent_url", "cert_sha256"],
        "additionalProperties": False,
    },
    "EnrolmentGrant": {
        "type": "object",
        "description": "The one-time token is shown only in this answer.",
        "properties": {
            "host_id": _INT,
            "token": _STR,
            "expires_at": {"type": "number"},
            "install_command": _STR,
        },
        "required": ["host_id", "token", "expires_at", "install_command"],
        "additionalProperties": False,
    },
    "RegeneratedToken": {
        "type": "object",
        "properties": {
            "host_id": _INT,
            "token_id": {**_INT, "nullable": True},
            "token": _STR,
            "expires_at": {"type": "number"},
            "install_command": _STR,
            "install_commands": {
                "type": "object",
                "properties": {"linux": _STR, "windows": _STR},
                "required": ["linux", "windows"],
                "additionalProperties": False,
            },
        },
        "required": [
            "host_id",
            "token_id",
            "token",
            "expires_at",
            "install_command",
            "install_commands",
        ],
        "additionalProperties": False,
    },
    "JobAccepted": {
        "type": "object",
        "properties": {"job_id": _STR},
        "required": ["job_id"],
        "additionalProperties": False,
    },
    "CancelAccepted": {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["cancel requested"]}},
        "required": ["status"],
        "additionalProperties": False,
    },
    "AuditPage": {
        "type": "object",
        "properties": {
            "entries": {"type": "array", "items": _ref("AuditView")},
            "more": {"type": "boolean"},
            "next_before_id": {**_INT, "nullable": True},
        },
        "required": ["entries", "more", "next_before_id"],
        "additionalProperties": False,
    },
    "BundledAgent": {
        **view_schema(BundledAgentView),
        "properties": {
            **view_schema(BundledAgentView)["properties"],
            "platform": {"type": "string", "description": "os/arch"},
        },
        "required": [*view_schema(BundledAgentView)["required"], "platform"],
    },
    "Rejected": {
        "type": "object",
        "properties": {"rejected": _INT},
        "required": ["rejected"],
        "additionalProperties": False,
    },
    "MetricsToken": {
        "type": "object",
        "description": "Shown once: only its hash is kept.",
        "properties": {"token": _STR},
        "required": ["token"],
        "additionalProperties": False,
    },
}


# -- operations ----------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok: int = 200
    # The success body: a component name, "[Name]" for a list of them, a
    # {media type: schema} map, or None for an empty answer.
    returns: str | dict[str, dict[str, Any]] | None = None
    body: str | None = None
    # A body that may be left out altogether (an empty request means defaults).
    body_optional: bool = False
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    # /metrics has its own token and is off until enabled in Settings.
    auth: bool = True


def _q_int(name: str, low: int, high: int, description: str = "") -> Param:
    return Param(name, {"type": "integer", "minimum": low, "maximum": high}, description)


def _q_str(name: str, description: str = "", **extra: Any) -> Param:
    return Param(name, {"type": "string", **extra}, description)


_TIME = {"type": "string", "description": "Unix seconds, or an ISO-8601 time (UTC by default)"}
V1 = "/api/v1"
HOST = V1 + "/hosts/{host_id}"
GROUPS = HOST + "/source-groups"
SCHEDULES = HOST + "/schedules"
SNAPSHOT = HOST + "/snapshots/{snapshot_id}"
CHANNELS = V1 + "/notification-channels"
# Reads answered by the agent: offline (409), busy (503), refused (502) or silent (504).
AGENT = (409, 502, 503, 504)

OPERATIONS: tuple[Op, ...] = (
    Op("get", PATH, "getOpenApi", "This document", "server", returns={JSON: {"type": "object"}}),
    Op("get", V1 + "/server", "getServer", "Version, agent URL and certificate pin", "server",
       returns="ServerSummary"),
    Op("post", V1 + "/enrolment-tokens", "addHost",
       "Add a host: a one-time enrolment token and its install command", "hosts",
       ok=201, returns="EnrolmentGrant", body="NewHost", errors=(409,)),
    Op("get", V1 + "/hosts", "listHosts", "Every host", "hosts", returns="[HostView]"),
    Op("get", HOST, "getHost", "One host", "hosts", returns="HostView"),
    Op("delete", HOST, "deleteHost", "Remove a host and revoke its agent", "hosts", ok=204),
    Op("put", HOST + "/credentials", "putCredentials",
       "Replace a repository credential slot (write-only)", "hosts", ok=204,
       body="CredentialsUpdate"),
    Op("put", HOST + "/bandwidth", "putBandwidth", "Bandwidth caps", "hosts", ok=204,
       body="Bandwidth"),
    Op("put", HOST + "/presence", "putPresence", "Always-on host or laptop", "hosts",
       returns="HostView", body="PresenceInput"),
    Op("post", HOST + "/offline-bundle", "createOfflineBundle",
       "An offline installer for a host not enrolled yet (holds a fresh one-time token)",
       "hosts", returns={"application/x-sh": {"type": "string", "format": "binary"},
                         "application/zip": {"type": "string", "format": "binary"}},
       body="BundleRequest", errors=(409,)),
    Op("get", V1 + "/pending-hosts", "listPendingHosts",
       "Hosts that announced themselves and wait for the operator", "hosts",
       returns="[PendingHostView]"),
    Op("post", V1 + "/pending-hosts/{pending_id}/accept", "acceptPendingHost",
       "Accept an announced host (compare its fingerprint first)", "hosts", ok=201,
       returns="AcceptedHost", body="PendingAccept", errors=(409,)),
    Op("post", V1 + "/pending-hosts/{pending_id}/reject", "rejectPendingHost",
       "Reject an announced host", "hosts", returns="Rejected", body="PendingReject",
       body_optional=True, errors=(409,)),
    Op("post", HOST + "/update", "updateHostAgent", "Update the host's agent to the bundled build",
       "updates", ok=202, returns="HostUpdateView", errors=(409,)),
    Op("get", HOST + "/update", "getHostAgentUpdate",
       "The host's agent update since the app started", "updates", returns="HostUpdateView"),
    Op("get", V1 + "/agent-updates/bundled", "listBundledAgents",
       "The agent builds this app serves", "updates", returns="[BundledAgent]"),
    Op("post", V1 + "/agent-updates", "updateFleetAgents",
       "Update agents one host at a time, halting at the first failure", "updates", ok=202,
       returns="FleetUpdateView", body="FleetUpdateInput", body_optional=True,
       errors=(404, 409)),
    Op("get", V1 + "/agent-updates/current", "getFleetUpdate", "The latest fleet update",
       "updates", returns="FleetUpdateView", errors=(404,)),
    Op("post", V1 + "/agent-updates/current/cancel", "cancelFleetUpdate",
       "Stop the running fleet update after the current host", "updates",
       returns="FleetUpdateView", errors=(409,)),
    Op("get", HOST + "/enrolment-tokens", "listEnrolmentTokens",
       "The host's enrolment tokens (never the tokens themselves)", "hosts",
       returns="[EnrolmentTokenView]"),
    Op("post", HOST + "/enrolment-tokens", "regenerateEnrolmentToken",
       "A fresh enrolment token for a host that has not enrolled", "hosts", ok=201,
       returns="RegeneratedToken", errors=(409,)),
    Op("delete", V1 + "/enrolment-tokens/{token_id}", "revokeEnrolmentToken",
       "Revoke an enrolment token", "hosts", ok=204, errors=(409,)),
    Op("get", GROUPS, "listSourceGroups", "Source groups", "plan",
       returns="[SourceGroupView]"),
    Op("post", GROUPS, "createSourceGroup", "Add a source group", "plan", ok=201,
       returns="SourceGroupView", body="SourceGroupInput", errors=(409,)),
    Op("get", GROUPS + "/{source_group_id}", "getSourceGroup", "One source group", "plan",
       returns="SourceGroupView"),
    Op("put", GROUPS + "/{source_group_id}", "putSourceGroup", "Replace a source group",
       "plan", returns="SourceGroupView", body="SourceGroupInput", errors=(409,)),
    Op("delete", GROUPS + "/{source_group_id}", "deleteSourceGroup",
       "Delete a source group no schedule uses", "plan", ok=204, errors=(409,)),
    Op("get", SCHEDULES, "listSchedules", "Schedules", "plan", returns="[ScheduleView]"),
    Op("post", SCHEDULES, "createSchedule", "Add a schedule", "plan", ok=201,
       returns="ScheduleView", body="ScheduleInput", errors=(409,)),
    Op("get", SCHEDULES + "/{schedule_id}", "getSchedule", "One schedule", "plan",
       returns="ScheduleView"),
    Op("put", SCHEDULES + "/{schedule_id}", "putSchedule", "Replace a schedule", "plan",
       returns="ScheduleView", body="ScheduleInput", errors=(409,)),
    Op("delete", SCHEDULES + "/{schedule_id}", "deleteSchedule", "Delete a schedule", "plan",
       ok=204),
    Op("get", HOST + "/conflicts", "listConflicts",
       "Retention and schedule combinations that will not do what they say", "plan",
       returns="[ConflictView]"),
    Op("get", HOST + "/hooks", "getDefaultHooks", "Host-level default hooks", "plan",
       returns="HostHooksView"),
    Op("put", HOST + "/hooks", "putDefaultHooks", "Set the host-level default hooks", "plan",
       returns="HostHooksView", body="HooksInput"),
    Op("get", HOST + "/maintenance", "getMaintenance", "Forget, prune and check cadences",
       "plan", returns="MaintenanceView"),
    Op("put", HOST + "/maintenance", "putMaintenance", "Change maintenance cadences", "plan",
       returns="MaintenanceView", body="MaintenanceInput"),
    Op("get", HOST + "/repo-stats", "getRepoStats", "Repository size and history", "repo",
       returns="RepoStatsView",
       query=(_q_int("days", 0, 999_999, "days of daily history (default 365)"),)),
    Op("post", HOST + "/repo/reinit", "reinitRepo",
       "Initialise the repository again (confirm with the host's name)", "repo", ok=202,
       returns="JobAccepted", body="ReinitInput", errors=(409,)),
    Op("get", HOST + "/snapshots", "listSnapshots", "Snapshots, as the agent last reported",
       "repo", returns="[SnapshotView]"),
    Op("get", SNAPSHOT + "/tree", "listSnapshotTree", "One directory of a snapshot", "restore",
       returns="TreeListing", errors=AGENT,
       query=(_q_str("path", "directory inside the snapshot (default /)"),
              _q_int("offset", 0, 2**31 - 1), _q_int("limit", 1, 5000))),
    Op("get", SNAPSHOT + "/find", "findInSnapshot", "Search one snapshot by name or glob",
       "restore", returns="FindResults", errors=AGENT,
       query=(_q_str("q", "a name or a glob (*, ?, [...])"), _q_int("limit", 1, 5000))),
    Op("get", HOST + "/find", "findInHost", "Search every snapshot of the host", "restore",
       returns="FindResults", errors=AGENT,
       query=(_q_str("q", "a name or a glob (*, ?, [...])"), _q_int("limit", 1, 5000))),
    Op("get", HOST + "/jobs", "listJobs", "The host's jobs, newest first", "jobs",
       returns="[JobView]"),
    Op("post", HOST + "/jobs", "createJob", "Run a job now", "jobs", ok=202,
       returns="JobAccepted", body="JobInput", errors=(409,)),
    Op("get", V1 + "/jobs/{job_id}", "getJob", "One job", "jobs", returns="JobView"),
    Op("get", V1 + "/jobs/{job_id}/log.ndjson", "getJobLogNdjson",
       "The job's log, one JSON object per line", "jobs",
       returns={"application/x-ndjson": {"type": "string"}}),
    Op("get", V1 + "/jobs/{job_id}/log.txt", "getJobLogText", "The job's log as text", "jobs",
       returns={"text/plain": {"type": "string"}}),
    Op("post", V1 + "/jobs/{job_id}/cancel", "cancelJob", "Cancel a job", "jobs", ok=202,
       returns="CancelAccepted", errors=(409,)),
    Op("get", V1 + "/alerts", "listAlerts", "Alerts, most recent first", "alerts",
       returns="[AlertView]",
       query=(_q_str("status", enum=list(alert_rules.STATUSES)),
              _q_int("host_id", 1, MAX_ID), _q_int("limit", 1, 10_000))),
    Op("get", V1 + "/alerts/counts", "getAlertCounts", "Unresolved alert counts", "alerts",
       returns="AlertCounts"),
    Op("post", V1 + "/alerts/ack", "acknowledgeAlerts", "Acknowledge alerts", "alerts",
       returns="[AlertView]", body="AlertIds", errors=(404, 409)),
    Op("post", V1 + "/alerts/resolve", "resolveAlerts", "Resolve alerts", "alerts",
       returns="[AlertView]", body="AlertIds", errors=(404, 409)),
    Op("get", V1 + "/alerts/{alert_id}", "getAlert", "One alert", "alerts",
       returns="AlertView"),
    Op("post", V1 + "/alerts/{alert_id}/ack", "acknowledgeAlert", "Acknowledge one alert",
       "alerts", returns="AlertView", errors=(409,)),
    Op("post", V1 + "/alerts/{alert_id}/resolve", "resolveAlert", "Resolve one alert",
       "alerts", returns="AlertView", errors=(409,)),
    Op("get", CHANNELS, "listChannels", "Notification channels", "notifications",
       returns="[ChannelView]"),
    Op("post", CHANNELS, "createChannel", "Add a notification channel", "notifications",
       ok=201, returns="ChannelView", body="ChannelInput", errors=(409,)),
    Op("post", CHANNELS + "/test", "testChannelConfig",
       "Send a test notification with unsaved settings", "notifications",
       returns="TestResult", body="ChannelInput"),
    Op("get", CHANNELS + "/{channel_id}", "getChannel", "One notification channel",
       "notifications", returns="ChannelView"),
    Op("put", CHANNELS + "/{channel_id}", "putChannel",
       "Change a channel (absent fields keep their value, null clears)", "notifications",
       returns="ChannelView", body="ChannelInput", errors=(409,)),
    Op("delete", CHANNELS + "/{channel_id}", "deleteChannel", "Delete a channel",
       "notifications", ok=204),
    Op("post", CHANNELS + "/{channel_id}/test", "testChannel",
       "Send a test notification on a saved channel", "notifications", returns="TestResult"),
    Op("get", CHANNELS + "/{channel_id}/deliveries", "listDeliveries",
       "Delivery attempts of a channel", "notifications", returns="[DeliveryView]",
       query=(_q_int("limit", 1, 5000),)),
    Op("get", V1 + "/audit", "searchAudit", "Search the audit log (JSON page or CSV)", "audit",
       returns={JSON: _ref("AuditPage"), "text/csv": {"type": "string"}},
       query=(Param("since", _TIME), Param("until", _TIME),
              _q_str("actor", enum=list(ACTOR_KINDS)),
              _q_str("action", "exact, or a prefix ending in '.'", maxLength=100),
              _q_str("target", "'kind' or 'kind:id'", maxLength=200),
              _q_str("q", "free text", maxLength=200),
              _q_int("limit", 1, 10_000), _q_int("before_id", 1, MAX_ID),
              _q_str("format", enum=["json", "csv"]))),
    Op("get", V1 + "/audit/actions", "listAuditActions", "Actions present in the audit log",
       "audit", returns={JSON: {"type": "array", "items": _STR}}),
    Op("get", V1 + "/settings/metrics", "getMetricsSettings", "Whether /metrics is on",
       "settings", returns="MetricsSettingsView"),
    Op("put", V1 + "/settings/metrics", "putMetricsSettings", "Turn /metrics on or off",
       "settings", returns="MetricsSettingsView", body="MetricsSettingsInput"),
    Op("post", V1 + "/settings/metrics/token", "newMetricsToken",
       "A new /metrics token (the old one stops working)", "settings", ok=201,
       returns="MetricsToken"),
    Op("get", "/metrics", "getMetrics", "Prometheus metrics (off until enabled)", "settings",
       returns={"text/plain": {"type": "string"}}, auth=False,
       errors=(401, 404)),  # 404: turned off
)  # fmt: skip


def _path_params(path: str) -> list[dict[str, Any]]:
    params = []
    for name in (seg[1:-1] for seg in path.split("/") if seg.startswith("{")):
        numeric = name.endswith("_id") and name not in ("job_id", "snapshot_id")
        schema = dict(_ID) if numeric else {"type": "string", "minLength": 1}
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": schema,
                **({"example": 1} if numeric else {}),
            }
        )
    return params


def _content(returns: str | dict[str, dict[str, Any]]) -> dict[str, Any]:
    if isinstance(returns, dict):
        return {media: {"schema": schema} for media, schema in returns.items()}
    if returns.startswith("["):
        schema: dict[str, Any] = {"type": "array", "items": _ref(returns[1:-1])}
    else:
        schema = _ref(returns)
    return {JSON: {"schema": schema}}


_ERROR_TEXT = {
    400: "invalid input; the error names the field",
    401: "missing or invalid token",
    404: "no such object",
    409: "conflicts with the current state (for agent reads: the host is offline)",
    413: "request body larger than 1 MiB",
    502: "the agent refused or failed the call",
    503: "the agent is busy",
    504: "the agent did not answer in time",
}


def _operation(op: Op) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": "success"}
    if op.returns is not None:
        ok["content"] = _content(op.returns)
    responses[str(op.ok)] = ok
    codes = set(op.errors)
    if op.auth:
        codes.add(401)
    if "{" in op.path:
        codes.add(404)
    if op.body or op.query:
        codes.add(400)
    if op.body:
        codes.add(413)
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    params = _path_params(op.path) + [
        {"name": p.name, "in": "query", "required": False, "schema": p.schema}
        | ({"description": p.description} if p.description else {})
        for p in op.query
    ]
    if params:
        out["parameters"] = params
    if op.body:
        out["requestBody"] = {
            "required": not op.body_optional,
            "content": {JSON: {"schema": _ref(op.body)}},
        }
    if not op.auth:
        out["security"] = [{"metricsToken": []}]
    return out


def build_document(version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    schemas: dict[str, Any] = {cls.__name__: view_schema(cls) for cls in VIEWS}
    schemas.update(REQUESTS)
    schemas.update(OTHER_SCHEMAS)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "restic-manager operator API",
            "version": version,
            "description": (
                "Automation contract of the restic-manager control plane. Every route "
                "needs 'Authorization: Bearer <API token>' (create one in Settings or "
                "with `restic-manager api-token create`). Errors are "
                '{"error": {"code", "message", "field"?}}.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"apiToken": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer"},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the metrics token from Settings → Metrics",
                },
            },
            "schemas": schemas,
            "responses": {
                f"E{code}": {
                    "description": text,
                    "content": {JSON: {"schema": _ref("Error")}},
                }
                for code, text in _ERROR_TEXT.items()
            },
        },
    }


class OpenApiRoute:
    """GET /api/v1/openapi.json; the document is built once, on first request."""

    def __init__(self, server_info: Callable[[], ServerInfo]) -> None:
        self._server_info = server_info
        self._body: bytes | None = None

    async def get(self, request: web.Request) -> web.Response:
        if self._body is None:
            document = build_document(self._server_info().version)
            self._body = json.dumps(document, ensure_ascii=False).encode()
        return web.Response(body=self._body, content_type=JSON, charset="utf-8")
