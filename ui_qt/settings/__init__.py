"""The Settings page: notification channels, the metrics endpoint, and what
this control plane is (data directory, agent URL, certificate)."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

from ui_qt.context import UiContext
from ui_qt.settings.general_page import GeneralPage
from ui_qt.settings.metrics_page import MetricsPage
from ui_qt.settings.notifications_page import NotificationsPage

TABS = ("notifications", "metrics", "general")


class SettingsView(QWidget):
    def __init__(self, ctx: UiContext) -> None:
        super().__init__()
        self.setObjectName("settingsView")
        self.ctx = ctx
        title = QLabel("Settings")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        title.setFont(font)
        self.notifications = NotificationsPage(ctx)
        self.metrics = MetricsPage(ctx)
        self.general = GeneralPage(ctx)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("settingsTabs")
        self.tabs.addTab(self.notifications, "Notifications")
        self.tabs.addTab(self.metrics, "Metrics")
        self.tabs.addTab(self.general, "General")
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.tabs, 1)

    def show_tab(self, name: str) -> None:
        """Switch to "notifications", "metrics" or "general"."""
        self.tabs.setCurrentIndex(TABS.index(name))

    def reload(self) -> None:
        """F5: read the current tab again."""
        page = self.tabs.currentWidget()
        reload = getattr(page, "reload", None)
        if callable(reload):
            reload()


__all__ = ["TABS", "SettingsView"]
