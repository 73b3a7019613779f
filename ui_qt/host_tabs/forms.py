"""Form plumbing shared by the editing dialogs: errors shown at the field the
service names, and a dialog that saves through the runner without a nested
event loop (``open()``, never ``exec()``: a nested loop would fight qasync)."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import ServiceError
from ui_qt.host_tabs.common import error_label, error_text, guarded, set_error
from ui_qt.tasks import AsyncRunner

T = TypeVar("T")


def field_candidates(name: str) -> list[str]:
    """``retention.keep_daily`` → itself, ``keep_daily``, ``retention``;
    ``includes[2]`` → ``includes``: the most specific form field first."""
    plain = re.sub(r"\[\d*\]", "", name)
    parts = [p for p in plain.split(".") if p and not p.isdigit()]
    out = [name, plain, ".".join(parts)]
    out += [".".join(parts[i:]) for i in range(1, len(parts))]
    out += [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    return list(dict.fromkeys(o for o in out if o))


class FieldErrors:
    """An error line under each field, keyed by the service's field names."""

    def __init__(self, general: QLabel) -> None:
        self.general = general
        self.labels: dict[str, QLabel] = {}
        self.widgets: dict[str, QWidget] = {}

    def wrap(self, name: str, widget: QWidget, *aliases: str) -> QWidget:
        """``widget`` with its (hidden) error line below, for a form row."""
        label = error_label()
        label.setObjectName(f"error-{name}")
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(widget)
        layout.addWidget(label)
        for key in (name, *aliases):
            self.labels[key] = label
            self.widgets[key] = widget
        return box

    def label_for(self, name: str) -> QLabel | None:
        for key in field_candidates(name):
            if key in self.labels:
                return self.labels[key]
        return None

    def clear(self) -> None:
        for label in set(self.labels.values()):
            set_error(label, None)
        set_error(self.general, None)

    def show(self, exc: BaseException) -> QLabel:
        """Put the message at the field it names (else at the bottom); returns the label."""
        name = exc.field if isinstance(exc, ServiceError) else None
        label = self.label_for(name) if name else None
        if label is None:
            label = self.general
        elif name is not None:
            for key in field_candidates(name):
                widget = self.widgets.get(key)
                if widget is not None:
                    widget.setFocus(Qt.FocusReason.OtherFocusReason)
                    break
        set_error(label, error_text(exc))
        return label

    def show_text(self, name: str, text: str) -> None:
        label = self.label_for(name) or self.general
        set_error(label, text)


class SavingDialog(QDialog):
    """A dialog with Cancel / Save that stays open until the service accepts.

    Subclasses build their form into ``self.form_area`` and implement
    ``save()`` by calling ``self.submit(coro, what, on_saved)``."""

    def __init__(
        self, runner: AsyncRunner, title: str, save_text: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.runner = runner
        self.saving = False
        self.saved_result: Any = None
        self.general_error = error_label()
        self.general_error.setObjectName("dialogError")
        self.errors = FieldErrors(self.general_error)
        self.form_area = QVBoxLayout()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("dialogCancel")
        self.cancel_button.clicked.connect(self.reject)
        self.save_button = QPushButton(save_text)
        self.save_button.setObjectName("dialogSave")
        self.save_button.setDefault(True)
        self.save_button.clicked.connect(self.save)
        buttons = QHBoxLayout()
        buttons.addWidget(self.general_error, 1)
        buttons.addStretch(0)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form_area)
        layout.addStretch(1)
        layout.addSpacing(4)
        layout.addLayout(buttons)

    def save(self) -> None:
        raise NotImplementedError

    def submit(
        self,
        coro: Coroutine[Any, Any, T],
        what: str,
        on_saved: Callable[[T], None] | None = None,
    ) -> None:
        if self.saving:
            coro.close()
            return
        self.saving = True
        self.errors.clear()
        self.save_button.setEnabled(False)
        label = self.save_button.text()
        self.save_button.setText("Saving…")

        def done(result: T) -> None:
            self.saving = False
            self.saved_result = result
            if on_saved is not None:
                on_saved(result)
            self.accept()

        def failed(exc: Exception) -> None:
            self.saving = False
            self.save_button.setEnabled(True)
            self.save_button.setText(label)
            self.errors.show(exc)

        self.runner.run(
            coro, what=what, on_done=guarded(self, done), on_error=guarded(self, failed)
        )
