"""One app per data dir: a second launch asks the first to come to the front.

Two processes on one data dir would fight over the database and the
listening ports. The first instance listens on a local socket named after
the resolved data dir (hashed, with the user id: short enough for every
platform's socket-name limit, different per data dir); a later launch
connects, sends ``raise`` and exits.

A crashed instance leaves its socket file behind (Unix): connecting to it
is refused, so the socket is removed and listened on again. If two launches
race, the loser finds the winner listening on its second look and defers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QAbstractSocket, QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

RAISE = b"raise"
CONNECT_TIMEOUT_MS = 1000
# sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS.
_MAX_SOCKET_PATH = 100


def _uid() -> str:
    getuid = getattr(os, "getuid", None)
    return str(getuid()) if getuid is not None else os.environ.get("USERNAME", "")


def server_name(data_dir: Path) -> str:
    """The local socket name for a data dir (resolved, so ``./x`` and ``/abs/x`` match)."""
    resolved = str(Path(data_dir).expanduser().resolve())
    digest = hashlib.sha256(f"{_uid()}\0{resolved}".encode()).hexdigest()[:20]
    name = f"restic-manager-{digest}"
    if sys.platform == "win32":
        return name  # a named pipe: \\.\pipe\<name>
    # A private per-user directory beats the shared /tmp: nobody else can
    # squat the name there.
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir() and len(runtime) + len(name) + 7 < _MAX_SOCKET_PATH:
        return str(Path(runtime) / f"{name}.sock")
    return name  # Qt puts it in the temp dir


class SingleInstance(QObject):
    raise_requested = Signal()

    def __init__(self, data_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = server_name(data_dir)
        self._server: QLocalServer | None = None
        self._clients: list[QLocalSocket] = []
        self.requests: list[str] = []

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.isListening()

    def try_activate_existing(self, timeout_ms: int = CONNECT_TIMEOUT_MS) -> bool:
        """If an instance already runs on this data dir, ask it to come forward.

        Does not wait for an answer (the first instance may be this very
        process in tests, whose loop is blocked here)."""
        sock = QLocalSocket()
        sock.connectToServer(self.name)
        if not sock.waitForConnected(timeout_ms):
            log.debug("no running instance at %s: %s", self.name, sock.errorString())
            sock.abort()
            return False
        sock.write(RAISE + b"\n")
        sock.flush()
        sock.waitForBytesWritten(timeout_ms)
        sock.disconnectFromServer()
        if sock.state() != QLocalSocket.LocalSocketState.UnconnectedState:
            sock.waitForDisconnected(timeout_ms)
        return True

    def listen(self) -> bool:
        """Become the instance for this data dir.

        Returns False if another instance turned out to be listening (the
        caller should then exit: it has already been asked to come forward).
        """
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            error = server.serverError()
            if error != QAbstractSocket.SocketError.AddressInUseError:
                raise OSError(f"cannot listen on local socket {self.name}: {server.errorString()}")
            if self.try_activate_existing():
                server.deleteLater()
                return False
            log.info("removing the stale instance socket %s", self.name)
            QLocalServer.removeServer(self.name)
            if not server.listen(self.name):
                raise OSError(f"cannot listen on local socket {self.name}: {server.errorString()}")
        server.newConnection.connect(self._on_connection)
        self._server = server
        return True

    def claim(self) -> bool:
        """True if this process is now the instance; False if another one was told to raise."""
        if self.try_activate_existing():
            return False
        return self.listen()

    def close(self) -> None:
        clients, self._clients = self._clients, []
        for sock in clients:
            sock.readyRead.disconnect(self._on_ready_read)
            sock.disconnected.disconnect(self._on_disconnected)
            sock.abort()
            sock.deleteLater()
        if self._server is not None:
            self._server.newConnection.disconnect(self._on_connection)
            self._server.close()
            self._server.deleteLater()
            self._server = None

    def _on_connection(self) -> None:
        assert self._server is not None
        while self._server.hasPendingConnections():
            sock = self._server.nextPendingConnection()
            if sock is None:
                break
            self._clients.append(sock)
            # Bound methods, not lambdas capturing self: a reference cycle
            # through Qt objects could be collected on a worker thread.
            sock.readyRead.connect(self._on_ready_read)
            sock.disconnected.connect(self._on_disconnected)
            self._read(sock)  # the request may already be buffered

    def _on_ready_read(self) -> None:
        sock = self.sender()
        if isinstance(sock, QLocalSocket):
            self._read(sock)

    def _on_disconnected(self) -> None:
        sock = self.sender()
        if isinstance(sock, QLocalSocket):
            self._drop(sock)

    def _read(self, sock: QLocalSocket) -> None:
        while sock.canReadLine():
            line = bytes(sock.readLine().data()).strip()
            if not line:
                continue
            request = line.decode(errors="replace")[:64]
            self.requests.append(request)
            if line == RAISE:
                log.info("another launch asked this instance to come to the front")
                self.raise_requested.emit()
            else:
                log.warning("unknown single-instance request %r", request)
        if sock.bytesAvailable() > 1024:
            sock.abort()  # no line that long is ours

    def _drop(self, sock: QLocalSocket) -> None:
        self._read(sock)
        if sock in self._clients:
            self._clients.remove(sock)
        sock.deleteLater()
