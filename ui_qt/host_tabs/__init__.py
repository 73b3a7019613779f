"""The tabs of the host view. Each tab is a QWidget with ``reload()``; the
host view owns them, tells them about the host (``set_host``) and forwards
the bridge signals that concern them."""

from ui_qt.host_tabs.credentials_tab import CredentialsTab
from ui_qt.host_tabs.danger_zone import DangerZoneTab
from ui_qt.host_tabs.jobs_tab import JobsTab
from ui_qt.host_tabs.repo_tab import RepoTab
from ui_qt.host_tabs.schedules_tab import SchedulesTab
from ui_qt.host_tabs.snapshots_tab import SnapshotsTab
from ui_qt.host_tabs.sources_tab import SourcesTab

__all__ = [
    "CredentialsTab",
    "DangerZoneTab",
    "JobsTab",
    "RepoTab",
    "SchedulesTab",
    "SnapshotsTab",
    "SourcesTab",
]
