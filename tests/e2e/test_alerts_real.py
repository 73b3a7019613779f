"""Alerts end to end with real parts: an embedded control plane, a real agent
process running restic 0.18 against a real repository, a real HTTP server as
the webhook channel, a real SMTP server (aiosmtpd) as the SMTP channel, and
the app's tray on the views' context.

The control plane runs with a 3 s offline timeout (90 s in production) so
silence is noticed quickly; the agent, the real one, is started with a 1 s
heartbeat to stay well inside it (its built-in 30 s would be dropped as
silent between heartbeats).

No qtbot.waitUntil here (it hangs on the qasync loop): waits are bounded
asyncio polling loops.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
import pytest

from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.events import AlertChanged, Event, JobChanged
from server_core.services.api_tokens import create_api_token
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from server_core.views import AlertView, ChannelView
from tests.helpers.fleet import BIN, AgentProcess, child_env
from tests.helpers.notify_sinks import HttpSink, MailSink, http_sink, smtp_sink
from tests.helpers.restic_bins import RESTIC_BINARIES
from ui_qt.context import UiContext
from ui_qt.tray import Tray

OFFLINE_AFTER_S = 3.0
HEARTBEAT_S = 1.0
# The promise: a failed backup raises its alert within 2 s.
RAISE_BUDGET_S = 2.0
TERMINAL = ("succeeded", "failed", "cancelled")
PASSWORD_A = "the-repository-password"  # what the repository was initialised with
PASSWORD_B = "a-different-password"  # what the host is given first
SECRET_HEADER = ("X-Hook-Token", "e2e-hook-secret")


def restic_018() -> str:
    binary = RESTIC_BINARIES.get("0.18")
    assert binary, "restic 0.18 is not installed: run `make bootstrap`"
    return binary


What = str | Callable[[], str]  # a callable is asked only on failure (e.g. a log tail)


def _timed_out(timeout: float, what: What, last: Any) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g}s waiting for {text} (last: {last!r})")


async def until(predicate: Callable[[], Any], timeout: float, what: What) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise _timed_out(timeout, what, last)


async def until_async(predicate: Callable[[], Any], timeout: float, what: What) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise _timed_out(timeout, what, last)


# -- the agent ---------------------------------------------------------------------

_RUN_AGENT = """
import asyncio, logging, sys
from pathlib import Path
from agent.client import run_agent
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
sys.exit(asyncio.run(run_agent(Path(sys.argv[1]), heartbeat_interval=float(sys.argv[2]))))
"""


class QuickAgent(AgentProcess):
    """The real agent (same code as `restic-manager-agent run`), with a
    heartbeat short enough for the shortened offline timeout."""

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "python"), "-c", _RUN_AGENT, str(self.config), str(HEARTBEAT_S)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


async def enrolled_agent(
    cp: ControlPlane, tmp_path: Path, name: str, repo: Path, password: str, paths: list[str]
) -> tuple[int, QuickAgent]:
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": str(repo), "password": password},
            "initial_paths": paths,
        }
    )
    grant = await cp.enrolment.add_host(new, OPERATOR)
    agent = QuickAgent(tmp_path / f"agent-{name}", restic_018(), name)
    result = await asyncio.to_thread(agent.enrol, cp.agent_url, grant.token, cp.certificate.sha256)
    assert result.returncode == 0, result.stderr
    agent.start()
    return grant.host_id, agent


async def stop_agent(agent: QuickAgent, sig: int = signal.SIGTERM) -> None:
    await asyncio.to_thread(agent.stop, sig)


# -- what the bus said -----------------------------------------------------------


@dataclass
class BusLog:
    """Every AlertChanged and JobChanged with the moment it was published, and
    for each job the moment of the JobChanged that announced its end."""

    cp: ControlPlane
    alerts: list[tuple[float, AlertChanged]] = field(default_factory=list)
    jobs: list[tuple[float, JobChanged]] = field(default_factory=list)
    finished_at: dict[str, float] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def on_event(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, AlertChanged):
            self.alerts.append((now, event))
        elif isinstance(event, JobChanged):
            self.jobs.append((now, event))
            # The event carries no status: read it. The bus publishes after the
            # commit, so a terminal status read here was there when it was sent;
            # if a later commit slipped in first, the figure errs on the long side.
            task = asyncio.get_running_loop().create_task(self._check(event.job_id, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _check(self, job_id: str, published: float) -> None:
        try:
            job = await self.cp.jobs.get_job(job_id)
        except Exception:
            return
        if job.status in TERMINAL:
            self.finished_at[job_id] = min(self.finished_at.get(job_id, published), published)

    def raised_at(self, alert_id: int) -> float | None:
        return next(
            (t for t, e in self.alerts if e.alert_id == alert_id and e.transition == "raised"),
            None,
        )

    def transitions(self, alert_id: int) -> list[str]:
        return [e.transition for _, e in self.alerts if e.alert_id == alert_id]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    # Overrides the e2e conftest's (and so feeds its `ui`): short timeouts.
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),  # type: ignore[no-untyped-call]
            offline_after_s=OFFLINE_AFTER_S,
            alert_tick_s=1.0,
            notify_retry_delays_s=(0.5, 1.0),
        )
    )
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


@pytest.fixture
async def bus(control_plane: ControlPlane) -> AsyncIterator[BusLog]:
    log = BusLog(control_plane)
    unsubscribe = control_plane.bus.subscribe(log.on_event)
    try:
        yield log
    finally:
        unsubscribe()
        await log.close()


@dataclass
class Channels:
    webhook: ChannelView
    smtp: ChannelView
    http: HttpSink
    mail: MailSink

    def posts(self, event: str, alert_id: int) -> list[dict[str, Any]]:
        bodies = [p.json() for p in self.http.posts]
        return [b for b in bodies if b["event"] == event and b["alert"]["id"] == alert_id]

    def mails(self, subject: str) -> list[Any]:
        return [m for m in self.mail.mails if m.subject == subject]


@pytest.fixture
async def channels(control_plane: ControlPlane) -> AsyncIterator[Channels]:
    async with http_sink() as http:
        with smtp_sink() as (mail, smtp_port):
            webhook = await control_plane.notifications.create_channel(
                {
                    "kind": "webhook",
                    "name": "e2e hook",
                    "enabled": True,
                    "min_severity": "warning",
                    "config": {"url": http.url(), "secret_header": ": ".join(SECRET_HEADER)},
                },
                OPERATOR,
            )
            smtp = await control_plane.notifications.create_channel(
                {
                    "kind": "smtp",
                    "name": "e2e mail",
                    "enabled": True,
                    "min_severity": "warning",
                    "config": {
                        "host": "127.0.0.1",
                        "port": smtp_port,
                        "security": "none",
                        "from": "restic-manager@example.com",
                        "to": ["ops@example.com"],
                    },
                },
                OPERATOR,
            )
            assert webhook.secret_fields == ["secret_header"]
            yield Channels(webhook, smtp, http, mail)


class StandInWindow:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def bring_to_front(self) -> None:
        self.calls.append(("bring_to_front", None))

    def open_host(self, host_id: int) -> None:
        self.calls.append(("open_host", host_id))

    def show_alerts(self, alert_id: int | None = None) -> None:
        self.calls.append(("show_alerts", alert_id))

    def quit_app(self) -> None:
        self.calls.append(("quit_app", None))


@pytest.fixture
async def tray(ui: UiContext) -> AsyncIterator[tuple[Tray, StandInWindow]]:
    window = StandInWindow()
    t = Tray(ui, window)
    t.start()
    try:
        await until(lambda: t.alert_counts is not None, 10, "the tray's first alert count")
        yield t, window
    finally:
        t.stop()
        await ui.runner.drain()
        t.menu.deleteLater()
        t.deleteLater()


async def open_alert(cp: ControlPlane, host_id: int, kind: str) -> AlertView | None:
    alerts = await cp.alerts.list_alerts(host_id=host_id)
    return next((a for a in alerts if a.kind == kind and a.status != "resolved"), None)


async def api_alerts(cp: ControlPlane, status: str) -> list[dict[str, Any]]:
    token = await cp.store.transaction(create_api_token, "e2e alerts", OPERATOR)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{cp.api_url}/api/v1/alerts",
            params={"status": status},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert isinstance(body, list), body
    return body


def tray_notes(t: Tray, alert_id: int) -> list[Any]:
    return [n for n in t.notifications if n.alert_id == alert_id]


# -- scenario 1: a wrong repository password ---------------------------------------


async def test_a_failed_backup_is_alerted_everywhere_and_a_good_one_resolves_it(
    control_plane: ControlPlane,
    bus: BusLog,
    channels: Channels,
    tray: tuple[Tray, StandInWindow],
    tmp_path: Path,
) -> None:
    cp = control_plane
    t, window = tray
    restic = restic_018()
    repo = tmp_path / "repo"
    env = child_env(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD=PASSWORD_A)
    env["RESTIC_CACHE_DIR"] = str(tmp_path / "cache")
    done = await asyncio.to_thread(
        subprocess.run, [restic, "init"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    source = tmp_path / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "app.conf").write_text("answer = 42\n")

    host_id, agent = await enrolled_agent(cp, tmp_path, "web1", repo, PASSWORD_B, [str(source)])
    try:
        # Connected, with its group, and the repository probe has failed (password B).
        host = await until_async(
            _host_where(cp, host_id, lambda h: h.status == "online" and h.repo_status != "unknown"),
            60,
            lambda: f"the agent to connect and probe the repository; log: {agent.log_tail()}",
        )
        assert host.repo_status == "init_failed", host
        (group,) = await cp.hosts.list_source_groups(host_id)
        # The probe's failure is its own alert, not the backup's.
        init_alert = await until_async(
            lambda: open_alert(cp, host_id, "repo_init_failed"), 5, "the repo_init_failed alert"
        )

        # -- the failing backup --------------------------------------------------
        job_id = await cp.sources.backup_now(host_id, group.id, OPERATOR)
        alert = await until_async(
            lambda: open_alert(cp, host_id, "backup_failed"), 60, "the backup_failed alert"
        )
        job = await cp.jobs.get_job(job_id)
        assert job.status == "failed", job
        assert alert.severity == "critical" and alert.count == 1
        assert alert.host_name == "web1" and alert.id != init_alert.id
        assert "password" in alert.message.lower(), alert.message
        await until(lambda: job_id in bus.finished_at, 5, "the job's terminal JobChanged")
        raised = bus.raised_at(alert.id)
        assert raised is not None, bus.alerts
        latency = raised - bus.finished_at[job_id]
        assert 0 <= latency <= RAISE_BUDGET_S, f"raised {latency:.3f}s after the job finished"
        print(f"backup_failed raised {latency:.3f}s after the job's terminal JobChanged")

        # Visible in the API.
        listed = await api_alerts(cp, "open")
        (row,) = [a for a in listed if a["id"] == alert.id]
        assert (row["kind"], row["severity"], row["host_id"], row["status"]) == (
            "backup_failed",
            "critical",
            host_id,
            "open",
        )

        # The webhook sink got a JSON POST for it, with the secret header.
        await until(lambda: channels.posts("raised", alert.id), 10, "the webhook POST")
        post = next(
            p
            for p in channels.http.posts
            if p.json()["event"] == "raised" and p.json()["alert"]["id"] == alert.id
        )
        assert post.headers["Content-Type"].startswith("application/json")
        assert post.headers[SECRET_HEADER[0]] == SECRET_HEADER[1]
        sent = post.json()["alert"]
        assert (sent["kind"], sent["severity"], sent["host_name"], sent["status"]) == (
            "backup_failed",
            "critical",
            "web1",
            "open",
        )

        # The SMTP server got a mail whose subject names the host and the kind.
        raised_subject = "[restic-manager] CRITICAL web1: backup_failed"
        await until(lambda: channels.mails(raised_subject), 10, "the raised mail")
        (mail,) = channels.mails(raised_subject)
        assert mail.rcpt_tos == ["ops@example.com"]
        body = mail.message().get_content()
        assert "web1" in body and "backup_failed" in body

        # The tray asked for a notification that opens this alert.
        await until(lambda: tray_notes(t, alert.id), 10, "the tray notification")
        (note,) = tray_notes(t, alert.id)
        assert note.level == "critical" and note.host_id == host_id
        assert note.title == "Critical: Backup failed"
        assert "web1" in note.message
        t.message_clicked()
        assert ("show_alerts", alert.id) in window.calls

        # -- fixed credentials, a good backup ---------------------------------------
        await cp.hosts.set_credentials(
            host_id, "everyday", {"url": str(repo), "password": PASSWORD_A}, OPERATOR
        )
        await until_async(
            _host_where(cp, host_id, lambda h: h.repo_status == "ready"),
            60,
            "the repository probe to succeed",
        )
        await until_async(
            lambda: _resolved(cp, init_alert.id), 10, "repo_init_failed to resolve by itself"
        )
        good_id = await cp.sources.backup_now(host_id, group.id, OPERATOR)
        resolved = await until_async(
            lambda: _resolved(cp, alert.id), 90, "backup_failed to resolve by itself"
        )
        good = await cp.jobs.get_job(good_id)
        assert good.status == "succeeded", good
        assert resolved.count == 1
        assert await open_alert(cp, host_id, "backup_failed") is None

        # Both channels heard about it.
        await until(lambda: channels.posts("resolved", alert.id), 10, "the resolved POST")
        assert channels.posts("resolved", alert.id)[0]["alert"]["status"] == "resolved"
        resolved_subject = "[restic-manager] RESOLVED web1: backup_failed"
        await until(lambda: channels.mails(resolved_subject), 10, "the resolved mail")

        # Exactly once per problem: one raise, one resolve, on each channel.
        assert len(channels.posts("raised", alert.id)) == 1
        assert len(channels.posts("resolved", alert.id)) == 1
        assert len(channels.mails(raised_subject)) == 1
        assert len(channels.mails(resolved_subject)) == 1
        assert len(tray_notes(t, alert.id)) == 1
        assert bus.transitions(alert.id) == ["raised", "resolved"]
        deliveries = await cp.notifications.list_deliveries(channels.webhook.id)
        mine = [d for d in deliveries if d.alert_id == alert.id]
        assert sorted(d.event for d in mine) == ["raised", "resolved"]
        assert all(d.ok for d in mine)
    finally:
        await stop_agent(agent)


def _host_where(cp: ControlPlane, host_id: int, pred: Callable[[Any], bool]) -> Any:
    async def check() -> Any:
        host = await cp.hosts.get_host(host_id)
        return host if pred(host) else None

    return check


async def _resolved(cp: ControlPlane, alert_id: int) -> AlertView | None:
    alert = await cp.alerts.get_alert(alert_id)
    return alert if alert.status == "resolved" else None


# -- scenario 2: a silent agent, and a laptop that may sleep -------------------------


async def test_a_killed_agent_is_alerted_after_the_timeout_and_a_laptop_is_not(
    control_plane: ControlPlane,
    bus: BusLog,
    channels: Channels,
    tray: tuple[Tray, StandInWindow],
    tmp_path: Path,
) -> None:
    cp = control_plane
    t, _window = tray
    host_id, agent = await enrolled_agent(cp, tmp_path, "db1", tmp_path / "repo", PASSWORD_A, [])
    try:
        await until_async(
            _host_where(cp, host_id, lambda h: h.status == "online" and h.repo_status == "ready"),
            60,
            lambda: f"the agent to connect and initialise its repository; log: {agent.log_tail()}",
        )

        # -- SIGKILL: no goodbye, the socket just drops -------------------------------
        killed = time.monotonic()
        await stop_agent(agent, signal.SIGKILL)
        await until_async(
            _host_where(cp, host_id, lambda h: h.status == "offline"), 10, "the host offline"
        )
        assert await open_alert(cp, host_id, "agent_offline") is None  # not before the timeout
        alert = await until_async(
            lambda: open_alert(cp, host_id, "agent_offline"),
            OFFLINE_AFTER_S + 5,
            "the agent_offline alert",
        )
        raised = bus.raised_at(alert.id)
        assert raised is not None
        after_kill = raised - killed
        print(f"agent_offline raised {after_kill:.3f}s after SIGKILL")
        # Counted from the agent's last message (at most one heartbeat before the kill).
        assert OFFLINE_AFTER_S - HEARTBEAT_S - 0.3 <= after_kill <= OFFLINE_AFTER_S + 3, after_kill
        assert alert.severity == "warning" and alert.host_name == "db1"
        await until(lambda: channels.posts("raised", alert.id), 10, "the offline webhook")
        await until(
            lambda: channels.mails("[restic-manager] WARNING db1: agent_offline"),
            10,
            "the offline mail",
        )
        await until(lambda: tray_notes(t, alert.id), 10, "the offline tray notification")
        assert tray_notes(t, alert.id)[0].level == "warning"

        # -- back: resolved ---------------------------------------------------------
        agent.start()
        resolved = await until_async(
            lambda: _resolved(cp, alert.id),
            30,
            lambda: f"agent_offline to resolve; agent log: {agent.log_tail()}",
        )
        assert resolved.count == 1
        await until(lambda: channels.posts("resolved", alert.id), 10, "the resolved webhook")
        await until(
            lambda: channels.mails("[restic-manager] RESOLVED db1: agent_offline"),
            10,
            "the resolved mail",
        )

        # -- a laptop may sleep --------------------------------------------------------
        view = await cp.hosts.set_presence_mode(host_id, "laptop", OPERATOR)
        assert view.presence_mode == "laptop"
        await stop_agent(agent, signal.SIGKILL)
        asleep = time.monotonic()
        await until_async(
            _host_where(cp, host_id, lambda h: h.status == "offline"), 10, "the laptop offline"
        )
        notes_before = len(t.notifications)
        posts_before = len(channels.http.posts)
        # Twice the timeout: an always-on host would have raised by then.
        while time.monotonic() - asleep < 2 * OFFLINE_AFTER_S:
            offline = [
                a for a in await cp.alerts.list_alerts(host_id=host_id) if a.kind == "agent_offline"
            ]
            assert [a.id for a in offline] == [alert.id], offline  # the old, resolved one only
            assert host_id not in cp.alert_engine.armed_hosts
            await asyncio.sleep(0.1)
        assert len(t.notifications) == notes_before
        assert len(channels.http.posts) == posts_before
        assert all(e.transition != "raised" for at, e in bus.alerts if at >= asleep), (
            "an alert was raised while the laptop slept"
        )
    finally:
        await stop_agent(agent)
