"""`restic-manager` (no subcommand): the desktop app.

Start-up order matters:

1. a ``QApplication`` (tray app: closing the last window does not quit);
2. the single-instance check — before the database or any port is touched,
   so a second launch only brings the first window forward and exits 0;
3. the qasync loop, shared by Qt, aiohttp and the services;
4. the embedded control plane (same as ``restic-manager serve``); if it
   cannot start (port in use, data key unavailable) the operator is told
   why and what to do, and the process exits 1;
5. the main window and the tray.

Quitting (File ▸ Quit, tray ▸ Quit, Ctrl+Q, SIGTERM/SIGINT, or closing the
window when there is no tray) never stops the Qt loop under a running
coroutine: the quit request is intercepted, the shell drains pending work,
closes the bridge and stops the control plane (agents get a clean close and
reconnect later), and only then does the loop end; exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import logging.handlers
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from PySide6.QtCore import QEvent, QObject, QSettings, QTimer
from PySide6.QtGui import QAction, QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox

from app import autostart
from app.early_quit import EarlyQuit
from app.local_agent import LocalAgent
from app.single_instance import SingleInstance
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.crypto import DataKeyError

log = logging.getLogger(__name__)

APP_NAME = "restic-manager"
APP_ICON = Path(__file__).resolve().parent.parent / "resources" / "icons" / "app.svg"
DEFAULT_AGENT_LISTEN = Endpoint("0.0.0.0", 8765)
DEFAULT_API_LISTEN = Endpoint("127.0.0.1", 8766)
# Past this, work still pending at quit is abandoned so the app does exit.
DRAIN_TIMEOUT_S = 10.0
LOG_FILE = "restic-manager.log"
# Platforms with nobody looking at the screen: a modal question would hang.
HEADLESS_PLATFORMS = ("offscreen", "minimal")


def run_gui(
    config: ControlPlaneConfig, *, minimized: bool, early_quit: EarlyQuit | None = None
) -> int:
    import qasync

    app = _application()
    instance = SingleInstance(config.data_dir)
    try:
        if not instance.claim():
            print(
                f"restic-manager is already running for {config.data_dir}; "
                "its window was brought to the front.",
                file=sys.stderr,
            )
            return 0
    except OSError as exc:
        log.error("single-instance check failed: %s", exc)
        _fatal_dialog_sync("restic-manager could not start", str(exc))
        return 1

    _log_to_file(config.data_dir)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    shell = Shell(app, config, instance, minimized=minimized, early_quit=early_quit)
    try:
        with loop:
            return int(loop.run_until_complete(shell.run()))
    finally:
        shell.dispose()
        instance.close()
        asyncio.set_event_loop(None)


def _application() -> QApplication:
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    app.setDesktopFileName(APP_NAME)
    app.setWindowIcon(QIcon(str(APP_ICON)))
    app.setQuitOnLastWindowClosed(False)
    return app


def _headless() -> bool:
    return QGuiApplication.platformName() in HEADLESS_PLATFORMS


def _log_to_file(data_dir: Path) -> None:
    """The log a desktop user can find (no terminal): ``<data dir>/restic-manager.log``."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            data_dir / LOG_FILE, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8"
        )
    except OSError as exc:
        log.warning("cannot write the log file in %s: %s", data_dir, exc)
        return
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    logging.getLogger().addHandler(handler)


def _fatal_dialog_sync(title: str, text: str) -> None:
    if _headless():
        return
    box = QMessageBox(QMessageBox.Icon.Critical, APP_NAME, title)
    box.setInformativeText(text)
    box.exec()


def startup_failure_message(exc: BaseException, config: ControlPlaneConfig, which: str) -> str:
    """Why the control plane did not start, and what the operator can do about it.

    ``which`` is the listener being started when it failed ("agent" / "API")."""
    if isinstance(exc, DataKeyError):
        return str(exc)
    endpoint, flag = (
        (config.agent_listen, "--agent-listen")
        if which == "agent"
        else (config.api_listen, "--api-listen")
    )
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code == errno.EADDRINUSE or "address already in use" in text:
        return (
            f"The {which} port {endpoint} is already in use — probably by `restic-manager "
            "serve` or a restic-manager running on another data dir.\n\n"
            f"Stop the other program, or start this one on a free port with {flag} HOST:PORT."
            + (" Agents enrolled against the old port keep trying it." if which == "agent" else "")
        )
    if code == errno.EACCES:
        return (
            f"Not allowed to listen on {endpoint} (ports below 1024 need privileges). "
            f"Choose another port with {flag} HOST:PORT."
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            f"{endpoint.host} is not an address of this computer. "
            f"Choose another one with {flag} HOST:PORT."
        )
    if isinstance(exc, OSError):
        return f"{exc}\n\nData dir: {config.data_dir}"
    return f"{type(exc).__name__}: {exc}\n\nData dir: {config.data_dir}"


class MainThreadGc(QObject):
    """Run the cyclic garbage collector on the main thread only.

    Left automatic, a collection can start on any thread that allocates —
    the store thread, an executor — and free Qt objects there, which Qt does
    not allow (their timers stay registered on a dead object: a crash
    later). Automatic collection is switched off and the same thresholds are
    checked from a timer on the main thread instead."""

    INTERVAL_MS = 250

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        self._frozen = False
        self._timer = QTimer(self)
        self._timer.setInterval(self.INTERVAL_MS)
        self._timer.timeout.connect(self.check)

    def start(self) -> None:
        gc.disable()
        self._timer.start()

    def freeze(self) -> None:
        """Keep what lives for the whole run (modules, the control plane, the
        window: ~90k objects) out of every later collection: a full one then
        holds the loop ~3 ms instead of ~65 ms. Objects are still freed when
        their last reference goes; only a reference cycle among them that
        became garbage waits for ``stop()``, which thaws them."""
        gc.freeze()
        self._frozen = True

    def stop(self) -> None:
        self._timer.stop()
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._was_enabled:
            gc.enable()

    def check(self) -> None:
        counts = gc.get_count()
        thresholds = gc.get_threshold()
        generation = -1
        for gen in range(3):
            if thresholds[gen] and counts[gen] > thresholds[gen]:
                generation = gen
        if generation >= 0:
            gc.collect(generation)


class StartAtLogin(QObject):
    """File ▸ Start at login: a checkable action over the XDG autostart entry."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        report: Callable[[str, str], None],
        parent: QObject,
    ) -> None:
        super().__init__(parent)
        self.config = config
        self._report = report
        action = QAction("Start at &login", parent)
        action.setObjectName("startAtLoginAction")
        action.setCheckable(True)
        if autostart.supported():
            action.setChecked(autostart.is_enabled())
            action.setToolTip(
                f"Start restic-manager in the tray when you log in ({autostart.entry_path()})"
            )
        else:
            action.setEnabled(False)
            action.setToolTip("Start at login is available on Linux desktops (XDG autostart).")
        action.toggled.connect(self.set_enabled)
        self.action = action

    def command(self) -> list[str]:
        cfg = self.config
        return autostart.launch_command(
            cfg.data_dir,
            agent_listen=None
            if cfg.agent_listen == DEFAULT_AGENT_LISTEN
            else str(cfg.agent_listen),
            api_listen=None if cfg.api_listen == DEFAULT_API_LISTEN else str(cfg.api_listen),
            allow_remote_api=cfg.api_allow_remote,
        )

    def set_enabled(self, on: bool) -> None:
        try:
            if on:
                path = autostart.enable(self.command())
                log.info("start at login enabled: %s", path)
            else:
                autostart.disable()
                log.info("start at login disabled")
        except OSError as exc:
            self._report("Could not change start at login", str(exc))
            self.action.blockSignals(True)
            self.action.setChecked(not on)
            self.action.blockSignals(False)


class _QuitInterceptor(QObject):
    """Turns the application's Quit event into a shutdown request.

    ``QApplication.quit()`` would end the Qt loop under the running
    coroutine ("Event loop stopped before Future completed"); instead the
    shell cleans up first and lets the loop end by returning."""

    def __init__(self, on_quit: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._on_quit = on_quit

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Quit and watched is QApplication.instance():
            self._on_quit()
            return True
        return False


class Shell(QObject):
    """The running desktop app: control plane, UI context, window, tray."""

    def __init__(
        self,
        app: QApplication,
        config: ControlPlaneConfig,
        instance: SingleInstance,
        *,
        minimized: bool,
        early_quit: EarlyQuit | None = None,
    ) -> None:
        super().__init__()
        self.app = app
        self._early_quit = early_quit
        self.config = config
        self.instance = instance
        self.minimized = minimized
        self.quit_requested = asyncio.Event()
        self.cp: ControlPlane | None = None
        self.window: Any = None
        self.tray: Any = None
        self.ctx: Any = None
        self.start_at_login: StartAtLogin | None = None
        self._signal_timer: QTimer | None = None
        self._signals_installed: list[int] = []
        self._interceptor = _QuitInterceptor(self.request_quit, self)
        self._gc = MainThreadGc(self)
        self._old_excepthook = sys.excepthook
        from ui_qt.error_dialog import ErrorReporter

        self.errors = ErrorReporter(parent=self)

    # -- quitting ------------------------------------------------------------

    def request_quit(self) -> None:
        if not self.quit_requested.is_set():
            log.info("quit requested")
        self.quit_requested.set()

    def _install_quit_paths(self, loop: asyncio.AbstractEventLoop) -> None:
        self.app.installEventFilter(self._interceptor)
        self.app.aboutToQuit.connect(self.request_quit)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_quit)
                self._signals_installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                # No add_signal_handler (Windows): a Python handler plus a
                # timer that lets the interpreter run it while Qt waits.
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.request_quit))
                if self._signal_timer is None:
                    self._signal_timer = QTimer(self)
                    self._signal_timer.timeout.connect(lambda: None)
                    self._signal_timer.start(250)

    def _remove_quit_paths(self, loop: asyncio.AbstractEventLoop) -> None:
        self.app.removeEventFilter(self._interceptor)
        for sig in self._signals_installed:
            loop.remove_signal_handler(sig)
        self._signals_installed.clear()
        if self._signal_timer is not None:
            self._signal_timer.stop()

    # -- unhandled errors ----------------------------------------------------

    def _install_error_hooks(self, loop: asyncio.AbstractEventLoop) -> None:
        sys.excepthook = self._excepthook
        loop.set_exception_handler(self._loop_exception)

    def _excepthook(
        self,
        kind: type[BaseException],
        exc: BaseException,
        tb: TracebackType | None,
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            self.request_quit()
            return
        log.critical("unhandled exception", exc_info=(kind, exc, tb))
        details = "".join(traceback.format_exception(kind, exc, tb))
        self.errors.unhandled(f"{kind.__name__}: {exc}", details)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "unhandled exception in the event loop")
        # A peer that vanished mid-handshake is routine on a LAN port.
        if isinstance(exc, OSError | asyncio.CancelledError) and (
            "transport" in context or "protocol" in context
        ):
            log.debug("%s: %s", message, exc)
            return
        if exc is None:
            log.error("%s (%s)", message, {k: v for k, v in context.items() if k != "message"})
            self.errors.unhandled(message, repr(context))
            return
        log.error("%s", message, exc_info=(type(exc), exc, exc.__traceback__))
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.errors.unhandled(f"{message}: {type(exc).__name__}: {exc}", details)

    # -- the app ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._install_quit_paths(loop)
        if self._early_quit is not None and self._early_quit.requested:
            self.request_quit()
        self._install_error_hooks(loop)
        self._gc.start()
        try:
            if self.quit_requested.is_set():
                log.info("quit requested while starting: not starting the control plane")
                return 0
            if not await self._start_control_plane():
                return 1
            self._build_ui()
            self._gc.freeze()
            await self.quit_requested.wait()
            await self._shutdown()
            return 0
        finally:
            self._gc.stop()
            self._remove_quit_paths(loop)
            sys.excepthook = self._old_excepthook

    async def _start_control_plane(self) -> bool:
        cp = ControlPlane(self.config)
        self.cp = cp
        try:
            await cp.start()
        except Exception as exc:
            which = "agent" if cp.agent_port == 0 else "API"
            reason = startup_failure_message(exc, self.config, which)
            log.error("the control plane could not start: %s", reason, exc_info=exc)
            with contextlib.suppress(Exception):
                await cp.stop()
            self.cp = None
            await self._fatal("restic-manager could not start", reason)
            return False
        return True

    async def _fatal(self, title: str, text: str) -> None:
        """Tell the operator, and wait until they close the message (or quit)."""
        if _headless():
            return
        box = QMessageBox(QMessageBox.Icon.Critical, APP_NAME, title)
        box.setInformativeText(text)
        box.setTextInteractionFlags(box.textInteractionFlags())
        closed = asyncio.get_running_loop().create_future()

        def on_closed(*_: object) -> None:
            if not closed.done():
                closed.set_result(None)

        box.finished.connect(on_closed)
        box.show()
        quit_wait = asyncio.ensure_future(self.quit_requested.wait())
        await asyncio.wait([closed, quit_wait], return_when=asyncio.FIRST_COMPLETED)
        quit_wait.cancel()
        box.close()

    def _build_ui(self) -> None:
        from ui_qt.bridge import EventBridge
        from ui_qt.context import UiContext
        from ui_qt.main_window import MainWindow
        from ui_qt.tasks import AsyncRunner
        from ui_qt.tray import Tray

        cp = self.cp
        assert cp is not None
        settings = QSettings(str(self.config.data_dir / "ui.ini"), QSettings.Format.IniFormat)
        bridge = EventBridge(cp.bus)
        runner = AsyncRunner()
        runner.failed.connect(self.errors.action_failed)
        self.ctx = UiContext.for_control_plane(
            cp,
            bridge=bridge,
            runner=runner,
            settings=settings,
        )
        window = MainWindow(self.ctx)
        self.window = window
        # First run: the empty fleet offers to set up an agent on this computer.
        window.fleet.offer_this_computer(LocalAgent.for_control_plane(cp))
        self.errors.set_parent_window(window)
        # The tray follows the fleet view's rows instead of reading the fleet again.
        tray = Tray(self.ctx, window, fleet=window.fleet.model)
        self.tray = tray
        # No tray to come back from: closing the window quits.
        window.close_to_tray = tray.available
        window.hidden_to_tray.connect(tray.window_hidden)
        self.instance.raise_requested.connect(window.bring_to_front)
        self.start_at_login = StartAtLogin(self.config, self.errors.report, window)
        window.add_file_action(self.start_at_login.action)
        self._add_status(window, cp)
        tray.start()
        log.info(
            "desktop app ready (data dir %s, tray %s)",
            self.config.data_dir,
            "available" if tray.available else "not available: closing the window quits",
        )
        if self.minimized and tray.available:
            log.info("started minimised to the tray")
        elif self.minimized:
            window.showMinimized()
        else:
            window.show()

    def _add_status(self, window: Any, cp: ControlPlane) -> None:
        bar = window.statusBar()
        listening = QLabel(f"Agents: {cp.agent_url} · API: {cp.api_url}")
        listening.setObjectName("listeningLabel")
        listening.setToolTip(
            f"Agent listener (TLS) on {self.config.agent_listen}, certificate SHA-256 "
            f"{cp.certificate.sha256}\nOperator API on {cp.api_url}\n"
            f"Data dir: {self.config.data_dir}"
        )
        bar.addPermanentWidget(listening)
        for warning in cp.warnings:
            label = QLabel("⚠ " + _first_sentence(warning))
            label.setObjectName("controlPlaneWarning")
            label.setToolTip(warning)
            bar.addWidget(label)

    async def _shutdown(self) -> None:
        log.info("shutting down")
        for widget in self.app.topLevelWidgets():
            widget.hide()
        if self.tray is not None:
            self.tray.stop()
        if self.ctx is not None:
            try:
                await asyncio.wait_for(self.ctx.runner.drain(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.warning("gave up waiting for %d pending tasks", self.ctx.runner.pending())
            self.ctx.bridge.close()
            self.ctx.settings.sync()
        if self.cp is not None:
            await self.cp.stop()
            self.cp = None
        log.info("stopped cleanly")

    def dispose(self) -> None:
        """Drop the widgets before the QApplication goes (avoids crashes at exit)."""
        if self.window is not None:
            self.window.deleteLater()
            self.window = None
        if self.tray is not None:
            self.tray.menu.deleteLater()
            self.tray.deleteLater()
            self.tray = None
        self.app.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")
