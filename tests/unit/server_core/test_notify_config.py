"""Channel settings are validated at the edge, every error naming its field,
and split into the visible part and the write-only secrets."""

from __future__ import annotations

from typing import Any

import pytest

from server_core.errors import InvalidInput
from server_core.notify.channel_config import (
    ChannelSpec,
    config_changes,
    parse_new,
    parse_update,
)
from server_core.notify.message import headline, ntfy_headers, subject, synthetic_alert
from server_core.notify.senders import scrub
from server_core.views import AlertView

WEBHOOK = {"kind": "webhook", "name": "hook", "config": {"url": "https://h.example/in"}}
NTFY = {"kind": "ntfy", "name": "phone", "config": {"topic_url": "https://ntfy.sh/backups"}}
SMTP = {
    "kind": "smtp",
    "name": "mail",
    "config": {
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": "ops",
        "password": "pw-1234",
        "from": "rm@example.com",
        "to": ["ops@example.com", "root@localhost"],
    },
}


def with_config(base: dict[str, Any], **config: Any) -> dict[str, Any]:
    return {**base, "config": {**base["config"], **config}}


def test_webhook_defaults_and_secret_split() -> None:
    spec = parse_new(with_config(WEBHOOK, secret_header="X-Token:  abc123 "))
    assert spec.kind == "webhook" and spec.enabled is True and spec.min_severity == "warning"
    assert spec.config == {"url": "https://h.example/in"}
    assert spec.secrets == {"secret_header": "X-Token: abc123"}
    assert "abc123" not in repr(spec)


def test_an_unsaved_test_needs_no_name() -> None:
    assert parse_new({**WEBHOOK, "name": ""}, name_required=False).name == "unsaved channel"
    assert parse_new({**WEBHOOK, "name": " a "}, name_required=False).name == "a"
    with pytest.raises(InvalidInput) as err:
        parse_new({**WEBHOOK, "name": ""})
    assert err.value.field == "name"


def test_smtp_password_is_secret_and_username_is_not() -> None:
    spec = parse_new(SMTP)
    assert spec.secrets == {"password": "pw-1234"}
    assert spec.config["username"] == "ops"
    assert "password" not in spec.config
    assert spec.config["to"] == ["ops@example.com", "root@localhost"]


def test_smtp_port_defaults_to_the_security_mode() -> None:
    body = {
        "kind": "smtp",
        "name": "m",
        "config": {"host": "mx", "security": "tls", "from": "a@b.c", "to": ["d@e.f"]},
    }
    assert parse_new(body).config["port"] == 465


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**WEBHOOK, "kind": "pager"}, "kind"),
        ({**WEBHOOK, "name": "  "}, "name"),
        ({**WEBHOOK, "name": "x" * 101}, "name"),
        ({**WEBHOOK, "enabled": "yes"}, "enabled"),
        ({**WEBHOOK, "min_severity": "fatal"}, "min_severity"),
        ({**WEBHOOK, "colour": "red"}, "colour"),
        ({**WEBHOOK, "config": "https://x"}, "config"),
        (with_config(WEBHOOK, url="ftp://h.example/in"), "config.url"),
        (with_config(WEBHOOK, url="file:///etc/passwd"), "config.url"),
        (with_config(WEBHOOK, url="https://"), "config.url"),
        (with_config(WEBHOOK, url="https://h.example:99999/"), "config.url"),
        (with_config(WEBHOOK, url="https://user:pw@h.example/in"), "config.url"),
        (with_config(WEBHOOK, url="https://h.example/a b"), "config.url"),
        (with_config(WEBHOOK, secret_header="no colon"), "config.secret_header"),
        (with_config(WEBHOOK, secret_header="X-A: b\r\nX-Evil: 1"), "config.secret_header"),
        (with_config(WEBHOOK, secret_header="Content-Type: text/html"), "config.secret_header"),
        (with_config(WEBHOOK, extra=1), "config.extra"),
        (with_config(NTFY, topic_url="https://ntfy.sh/"), "config.topic_url"),
        (with_config(NTFY, token="has space"), "config.token"),
        (with_config(SMTP, port=0), "config.port"),
        (with_config(SMTP, port=65536), "config.port"),
        (with_config(SMTP, port="587"), "config.port"),
        (with_config(SMTP, port=True), "config.port"),
        (with_config(SMTP, security="ssl"), "config.security"),
        (with_config(SMTP, host="smtp example"), "config.host"),
        (with_config(SMTP, to=[]), "config.to"),
        (with_config(SMTP, to="ops@example.com"), "config.to"),
        (with_config(SMTP, to=["ops@example.com", "not-an-address"]), "config.to"),
        (with_config(SMTP, to=["a@b.c\r\nBcc: x@y.z"]), "config.to"),
        (with_config(SMTP, **{"from": "nobody"}), "config.from"),
        (with_config(SMTP, username=None), "config.username"),
        (with_config(SMTP, password=None), "config.password"),
        (with_config(SMTP, security="none"), "config.security"),
    ],
)
def test_invalid_input_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_new(body)
    assert err.value.field == field, err.value.message


def test_update_keeps_omitted_secrets_and_null_clears_them() -> None:
    current = parse_new(with_config(WEBHOOK, secret_header="X-Token: abc"))
    renamed = parse_update(current, {"name": "renamed", "config": {"url": "http://other/x"}})
    assert renamed.name == "renamed"
    assert renamed.config == {"url": "http://other/x"}
    assert renamed.secrets == {"secret_header": "X-Token: abc"}
    cleared = parse_update(current, {"config": {"secret_header": None}})
    assert cleared.secrets == {}
    assert config_changes(current, cleared) == {"secrets_changed": ["secret_header"]}


def test_update_clearing_smtp_login_needs_both_fields_cleared() -> None:
    current = parse_new(SMTP)
    with pytest.raises(InvalidInput) as err:
        parse_update(current, {"config": {"password": None}})
    assert err.value.field == "config.password"
    plain = parse_update(
        current, {"config": {"password": None, "username": None, "security": "none"}}
    )
    assert plain.secrets == {} and "username" not in plain.config


def test_update_changing_kind_needs_a_whole_config() -> None:
    current = parse_new(WEBHOOK)
    with pytest.raises(InvalidInput) as err:
        parse_update(current, {"kind": "ntfy"})
    assert err.value.field == "config"
    with pytest.raises(InvalidInput) as err:
        parse_update(current, {"kind": "ntfy", "config": {"url": "https://ntfy.sh/x"}})
    assert err.value.field == "config.url"  # a webhook field is unknown to ntfy
    ntfy = parse_update(current, {"kind": "ntfy", "config": {"topic_url": "https://ntfy.sh/x"}})
    assert ntfy.kind == "ntfy" and ntfy.config == {"topic_url": "https://ntfy.sh/x"}


def test_config_changes_show_secret_names_never_values() -> None:
    before = parse_new(SMTP)
    after = parse_update(before, {"enabled": False, "config": {"password": "new-pw-99"}})
    changes = config_changes(before, after)
    assert changes == {"enabled": False, "secrets_changed": ["password"]}
    assert "new-pw-99" not in repr(changes) and "pw-1234" not in repr(changes)


def test_severity_filter() -> None:
    spec = ChannelSpec("webhook", "h", True, "warning", {"url": "http://x/"})
    assert not spec.wants("info")
    assert spec.wants("warning") and spec.wants("critical")
    assert not ChannelSpec("webhook", "h", False, "info", {}).wants("critical")


ALERT = AlertView(
    id=7,
    kind="backup_failed",
    severity="critical",
    host_id=1,
    host_name="web1",
    status="open",
    message="backup of etc failed: wrong password",
    first_seen_at=1.0,
    last_seen_at=2.0,
    count=1,
)


def test_subjects_and_ntfy_headers() -> None:
    assert subject("raised", ALERT) == "[restic-manager] CRITICAL web1: backup_failed"
    assert headline("resolved", ALERT) == "RESOLVED web1: backup_failed"
    assert headline("test", synthetic_alert()) == "TEST restic-manager: test"
    assert ntfy_headers("raised", ALERT) == {
        "Title": "CRITICAL web1: backup_failed",
        "Priority": "5",
        "Tags": "rotating_light,backup_failed",
    }
    assert ntfy_headers("acknowledged", ALERT)["Priority"] == "3"


def test_ntfy_title_with_non_ascii_host_is_encoded() -> None:
    alert = AlertView(**{**ALERT.__dict__, "host_name": "büro"})
    title = ntfy_headers("raised", alert)["Title"]
    assert title.isascii() and title.startswith("=?UTF-8?B?")


def test_scrub_removes_secrets_and_a_header_value_alone() -> None:
    secrets = {"secret_header": "X-Token: tok-9876", "password": "hunter22"}
    text = "echo X-Token: tok-9876 and tok-9876 and hunter22\r\nend"
    cleaned = scrub(text, secrets)
    assert "tok-9876" not in cleaned and "hunter22" not in cleaned
    assert "\n" not in cleaned
