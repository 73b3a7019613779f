"""What every view gets: the services it may call, the event bridge, the task runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings

from server_core.offline_bundle import OfflineBundleService
from server_core.services.alerts import AlertService
from server_core.services.audit_log import AuditService
from server_core.services.enrolment import EnrolmentService
from server_core.services.hosts import HostService
from server_core.services.jobs import JobService
from server_core.services.maintenance import MaintenanceService
from server_core.services.notifications import NotificationService
from server_core.services.pending_hosts import PendingHostService
from server_core.services.restore import RestoreService
from server_core.services.schedules import ScheduleService
from server_core.services.settings import SettingsService
from server_core.services.sources import SourceService
from server_core.services.updates import UpdateService
from server_core.views import ServerInfo
from ui_qt.bridge import EventBridge
from ui_qt.tasks import AsyncRunner

if TYPE_CHECKING:
    from server_core.control_plane import ControlPlane


@dataclass(frozen=True)
class UiContext:
    hosts: HostService
    jobs: JobService
    enrolment: EnrolmentService
    sources: SourceService
    schedules: ScheduleService
    maintenance: MaintenanceService
    restore: RestoreService
    alerts: AlertService
    notifications: NotificationService
    audit: AuditService
    settings_service: SettingsService
    server_info: Callable[[], ServerInfo]
    bridge: EventBridge
    runner: AsyncRunner
    settings: QSettings
    # The Add host page's "Offline bundle…" (hidden when None).
    offline_bundles: OfflineBundleService | None = None
    # Hosts that announced themselves (the fleet view's pending panel).
    pending_hosts: PendingHostService | None = None
    # Agent self-updates (fleet chip, Update agent, the fleet update dialog).
    updates: UpdateService | None = None

    @classmethod
    def for_control_plane(
        cls,
        cp: ControlPlane,
        *,
        bridge: EventBridge,
        runner: AsyncRunner,
        settings: QSettings,
    ) -> UiContext:
        """The views' context on a started control plane: one place to list its
        services, so a new service is wired once rather than in every caller."""
        return cls(
            hosts=cp.hosts,
            jobs=cp.jobs,
            enrolment=cp.enrolment,
            sources=cp.sources,
            schedules=cp.schedules,
            maintenance=cp.maintenance,
            restore=cp.restore,
            alerts=cp.alerts,
            notifications=cp.notifications,
            audit=cp.audit,
            settings_service=cp.settings,
            offline_bundles=cp.offline_bundles,
            pending_hosts=cp.pending_hosts,
            updates=cp.updates,
            server_info=cp.info,
            bridge=bridge,
            runner=runner,
            settings=settings,
        )
