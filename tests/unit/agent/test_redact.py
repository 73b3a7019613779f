from __future__ import annotations

import json

from agent import protocol
from agent.redact import MASK, Redactor, credential_secrets, truncate


def test_known_secrets_are_masked_everywhere_in_a_line() -> None:
    r = Redactor(["hunter2-secret", "bearer-token-xyz"])
    out = r.redact("pw=hunter2-secret and again hunter2-secret, auth bearer-token-xyz")
    assert "hunter2" not in out
    assert "bearer-token" not in out
    assert out.count(MASK) == 3


def test_short_and_empty_values_are_ignored() -> None:
    r = Redactor(["abc", "", None, "a"])
    assert r.redact("abc a b c") == "abc a b c"


def test_longest_secret_wins_when_one_contains_another() -> None:
    r = Redactor(["pass", "password-long"])
    assert r.redact("x password-long y") == f"x {MASK} y"


def test_regex_metacharacters_in_secrets_are_literal() -> None:
    r = Redactor(["a.b*c(d)"])
    assert r.redact("axbbbcd a.b*c(d)") == f"axbbbcd {MASK}"


def test_percent_and_json_escaped_forms_are_masked() -> None:
    secret = 'p@ss w/"quote"'
    r = Redactor([secret])
    assert MASK in r.redact("rest:https://user:p%40ss%20w%2F%22quote%22@host/")
    escaped = json.dumps({"message": f"bad {secret}"})
    assert "quote" not in r.redact(escaped)


def test_credentials_contribute_password_backend_password_env_and_url_password() -> None:
    creds = protocol.RepoCredentials(
        url="rest:https://agent:url-pass-123@backup.example:8000/repo",
        password="repo-password",
        username="agent",
        backend_password="backend-pw",
        env={"AWS_SECRET_ACCESS_KEY": "aws-secret-key", "SHORT": "xy"},
    )
    secrets = credential_secrets(creds)
    for expected in ("repo-password", "backend-pw", "aws-secret-key", "url-pass-123"):
        assert expected in secrets
    r = Redactor()
    r.add_credentials(creds)
    text = "repo-password backend-pw aws-secret-key url-pass-123 xy agent"
    assert r.redact(text) == f"{MASK} {MASK} {MASK} {MASK} xy agent"


def test_secrets_added_later_are_masked_too() -> None:
    r = Redactor()
    assert r.redact("late-secret") == "late-secret"
    r.add("late-secret")
    assert r.redact("late-secret") == MASK
    assert "late-secret" in r
    assert "late-secret" not in repr(r)


def test_long_lines_are_truncated_with_a_marker() -> None:
    r = Redactor(max_line_bytes=100)
    out = r.line("x" * 1000)
    assert out.startswith("x" * 100)
    assert "truncated" in out
    assert "900 more bytes" in out
    assert len(out) < 200


def test_truncate_does_not_split_multibyte_characters() -> None:
    text = "é" * 100  # 200 bytes
    out = truncate(text, 51)
    head = out.split(" … ")[0]
    assert head == "é" * 25
    assert truncate("short", 10) == "short"


def test_redaction_happens_before_truncation() -> None:
    secret = "s3cr3t-value"
    r = Redactor([secret], max_line_bytes=20)
    out = r.line("ab" + secret + "z" * 100)
    assert "s3cr3t" not in out
    assert out.startswith("ab" + MASK)


def test_a_job_scoped_copy_knows_more_and_the_original_stays_as_it_was() -> None:
    base = Redactor(["bearer-token-1"])
    admin = protocol.RepoCredentials(url="rest:https://adm:rest-pw-9@h/", password="admin-pw-1")
    scoped = base.with_credentials(admin)
    assert scoped.redact("admin-pw-1 rest-pw-9 bearer-token-1") == f"{MASK} {MASK} {MASK}"
    assert base.redact("admin-pw-1 bearer-token-1") == f"admin-pw-1 {MASK}"
    assert "admin-pw-1" not in base
