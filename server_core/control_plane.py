"""The control plane as one object: store, keys, certificate, services and
both listeners. The desktop app and `restic-manager serve` both run this."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import keyring.backend
from aiohttp import web

from server_core.agent_downloads import AgentDownloads, bundled_installers_dir
from server_core.agent_listener import AgentListener, http_logger
from server_core.api_common import is_loopback_host
from server_core.api_listener import ApiListener
from server_core.crypto import SecretBox, load_or_create_data_key
from server_core.events import EventBus
from server_core.hub import AgentHub
from server_core.ingest import EventIngestor
from server_core.offline_bundle import OfflineBundleService
from server_core.rpc import RpcBroker
from server_core.services.alerts import AlertEngine, AlertService
from server_core.services.audit_log import AuditService
from server_core.services.context import ServiceContext
from server_core.services.enrolment import (
    AgentEndpoint,
    EnrolmentService,
    default_install_command,
)
from server_core.services.hosts import HostService
from server_core.services.jobs import JobService
from server_core.services.maintenance import MaintenanceRunner, MaintenanceService
from server_core.services.notifications import NotificationService
from server_core.services.pending_hosts import PendingHostService
from server_core.services.restore import RestoreService
from server_core.services.schedules import ScheduleService
from server_core.services.settings import SettingsService
from server_core.services.sources import SourceService
from server_core.services.updates import UPDATE_TIMEOUT_S, UpdateService
from server_core.store import Store
from server_core.tls import load_or_create_certificate, ssl_context
from server_core.views import ServerInfo

log = logging.getLogger(__name__)

DB_FILE = "restic-manager.sqlite3"
ALLOW_REMOTE_API_FLAG = "--allow-remote-api"


class UnsafeApiListen(ValueError):
    """The operator API asked to listen beyond loopback without saying so."""


def check_api_listen(api_listen: Endpoint, allow_remote: bool) -> str | None:
    """The warning to show when the operator API listens beyond loopback, or
    None on loopback. Without ``allow_remote`` a non-loopback address is refused:
    the API speaks plain HTTP, and its tokens control the whole fleet."""
    if is_loopback_host(api_listen.host):
        return None
    if not allow_remote:
        raise UnsafeApiListen(
            f"the operator API would listen on {api_listen}, beyond this computer: it "
            "speaks plain HTTP and its tokens control every host. Keep it on 127.0.0.1, "
            f"or pass {ALLOW_REMOTE_API_FLAG} if a firewall or tunnel protects it"
        )
    return (
        f"The operator API listens on {api_listen}, not on loopback ({ALLOW_REMOTE_API_FLAG}): "
        "it speaks plain HTTP, so anyone on that network who sees an API token controls "
        "the fleet. Keep it behind a firewall or a TLS tunnel."
    )


def product_version() -> str:
    try:
        return version("restic-manager")
    except PackageNotFoundError:
        return "0.0.0+unknown"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ControlPlaneConfig:
    data_dir: Path
    agent_listen: Endpoint = field(default_factory=lambda: Endpoint("0.0.0.0", 8765))
    api_listen: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 8766))
    # Needed for an api_listen beyond loopback (ALLOW_REMOTE_API_FLAG).
    api_allow_remote: bool = False
    advertise_host: str | None = None
    offline_after_s: float = 90.0
    # How often due forget/prune are looked for (also on each host coming online).
    maintenance_interval_s: float = 30.0
    # Time-based alert conditions (silent agents, missed backups) are looked at this often.
    alert_tick_s: float = 60.0
    # Notification delivery retries, in seconds after each failed attempt.
    notify_retry_delays_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
    keyring_backend: keyring.backend.KeyringBackend | None = None
    # Agent builds and install files the agent listener serves; None: what
    # the app bundles (server_core/agent_downloads.py).
    agents_dir: Path | None = None
    installers_dir: Path | None = None
    # How long an updated agent has to say hello with its new version.
    update_timeout_s: float = UPDATE_TIMEOUT_S


class ControlPlane:
    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        self.bus = EventBus()
        self.store = Store(config.data_dir / DB_FILE)
        self._runners: list[web.AppRunner] = []
        self.agent_port = 0
        self.api_port = 0

    async def start(self) -> None:
        cfg = self.config
        api_warning = check_api_listen(cfg.api_listen, cfg.api_allow_remote)
        cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A keyring call goes over D-Bus and may wait on an unlock prompt.
        key = await asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                load_or_create_data_key,
                cfg.data_dir,
                keyring_backend=cfg.keyring_backend,
                logger=log,
            ),
        )
        self.key_source = key.source
        self.warnings = [key.warning] if key.warning else []
        if api_warning is not None:
            log.warning("%s", api_warning)
            self.warnings.append(api_warning)
        await self.store.open()
        loop = asyncio.get_running_loop()
        # Reverse DNS and key generation can take seconds: not on the loop.
        advertise = cfg.advertise_host
        if not advertise:
            advertise = await loop.run_in_executor(None, self._default_advertise_host)
        self.advertise_host: str = advertise
        self.certificate = await loop.run_in_executor(
            None,
            functools.partial(
                load_or_create_certificate,
                cfg.data_dir,
                common_name=socket.gethostname() or "restic-manager",
                extra_names=[advertise],
            ),
        )

        self.hub = AgentHub(
            self.store,
            self.bus,
            offline_after_s=cfg.offline_after_s,
            sweep_interval_s=min(5.0, cfg.offline_after_s / 3),
        )
        ctx = ServiceContext(
            store=self.store, box=SecretBox(key.key), bus=self.bus, agents=self.hub
        )
        self.ctx = ctx
        self.rpc = RpcBroker(self.hub, self.store)
        self.jobs = JobService(ctx)
        self.restore = RestoreService(ctx, self.jobs, self.rpc)
        self.hosts = HostService(ctx, self.jobs)
        self.sources = SourceService(ctx, self.jobs)
        self.schedules = ScheduleService(ctx)
        self.maintenance = MaintenanceService(ctx, self.jobs)
        self.maintenance_runner = MaintenanceRunner(
            ctx, self.jobs, interval_s=cfg.maintenance_interval_s
        )
        self.alerts = AlertService(ctx)
        self.alert_engine = AlertEngine(
            ctx, self.alerts, offline_after_s=cfg.offline_after_s, tick_s=cfg.alert_tick_s
        )
        self.notifications = NotificationService(ctx, retry_delays_s=cfg.notify_retry_delays_s)
        self.audit = AuditService(ctx)
        self.settings = SettingsService(ctx)
        self.ingestor = EventIngestor(self.store, self.bus)
        await self.hub.mark_all_offline()
        # Notifications first: an alert the engine raises at start-up must find a listener.
        self.notifications.start()
        self.alert_engine.start()
        self.ingestor.start()
        self.hub.start()
        self.maintenance_runner.start()

        # The agent URL needs the bound port, which is known only after binding
        # (port 0 in tests); the enrolment service asks for it lazily.
        self.enrolment = EnrolmentService(ctx, install_command=self._install_command)
        self.downloads = AgentDownloads(cfg.agents_dir, cfg.installers_dir)
        self.offline_bundles = OfflineBundleService(
            ctx,
            self.enrolment,
            endpoint=lambda: AgentEndpoint(self.agent_url, self.certificate.sha256),
            agents_dir=self.downloads.agents_dir,
            installers_dir=cfg.installers_dir or bundled_installers_dir(),
        )
        self.pending_hosts = PendingHostService(ctx, cert_sha256=self.certificate.sha256)
        self.pending_hosts.start()
        self.updates = UpdateService(
            ctx, self.alerts, self.downloads, hello_timeout_s=cfg.update_timeout_s
        )
        await self.updates.start()
        agent_app = AgentListener(
            ctx,
            self.enrolment,
            self.hub,
            self.ingestor,
            self.rpc,
            self.downloads,
            pending_hosts=self.pending_hosts,
        ).app()
        agent_runner = web.AppRunner(
            agent_app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=2.0,
            logger=http_logger(),
        )
        await agent_runner.setup()
        self._runners.append(agent_runner)
        site = web.TCPSite(
            agent_runner,
            cfg.agent_listen.host,
            cfg.agent_listen.port,
            ssl_context=ssl_context(self.certificate),
        )
        await site.start()
        self.agent_port = _bound_port(agent_runner)

        api_app = ApiListener(
            ctx,
            hosts=self.hosts,
            jobs=self.jobs,
            sources=self.sources,
            schedules=self.schedules,
            maintenance=self.maintenance,
            restore=self.restore,
            enrolment=self.enrolment,
            server_info=self.info,
            alerts=self.alerts,
            notifications=self.notifications,
            audit=self.audit,
            settings=self.settings,
            offline_bundles=self.offline_bundles,
            pending_hosts=self.pending_hosts,
            updates=self.updates,
        ).app()
        api_runner = web.AppRunner(
            api_app, handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await api_runner.setup()
        self._runners.append(api_runner)
        await web.TCPSite(api_runner, cfg.api_listen.host, cfg.api_listen.port).start()
        self.api_port = _bound_port(api_runner)
        log.info(
            "control plane up: agents on %s (TLS, cert sha256 %s), API on http://%s",
            self.agent_url,
            self.certificate.sha256,
            Endpoint(cfg.api_listen.host, self.api_port),
        )

    def _install_command(self, token: str) -> str:
        return default_install_command(self.agent_url, self.certificate.sha256)(token)

    @property
    def agent_url(self) -> str:
        host = self.advertise_host
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.agent_port}"

    @property
    def api_url(self) -> str:
        return f"http://{Endpoint(self.config.api_listen.host, self.api_port)}"

    def info(self) -> ServerInfo:
        return ServerInfo(
            version=product_version(),
            agent_url=self.agent_url,
            cert_sha256=self.certificate.sha256,
            data_dir=str(self.config.data_dir),
            key_source=self.key_source,
            warnings=list(self.warnings),
            api_url=self.api_url if self.api_port else None,
        )

    def _default_advertise_host(self) -> str:
        listen = self.config.agent_listen.host
        if listen not in ("0.0.0.0", "::", ""):
            return listen
        return socket.getfqdn() or socket.gethostname() or "localhost"

    async def stop(self) -> None:
        """Close agent sockets cleanly, write what is queued, close the database."""
        if hasattr(self, "maintenance_runner"):
            await self.maintenance_runner.stop()
        if hasattr(self, "pending_hosts"):
            await self.pending_hosts.stop()
        if hasattr(self, "updates"):
            await self.updates.stop()
        if hasattr(self, "hub"):
            await self.hub.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if hasattr(self, "ingestor"):
            await self.ingestor.stop()
        if hasattr(self, "alert_engine"):
            await self.alert_engine.stop()
        if hasattr(self, "notifications"):
            await self.notifications.stop()
        # Refusals are audited in the background: their rows go in before the
        # store closes.
        if hasattr(self, "enrolment"):
            await self.enrolment.refusals.flush()
        if hasattr(self, "rpc"):
            await self.rpc.flush()
        await self.store.close()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("listener did not bind")
