"""Inline form errors: one label per field plus a general one, shared by the
forms that show a service's InvalidInput next to the field it names."""

from __future__ import annotations

from typing import cast

from PySide6.QtWidgets import QLabel, QWidget


class FieldErrorsMixin:
    """For a QWidget that keeps ``_errors`` (key → label) and ``form_error``."""

    _errors: dict[str, QLabel]
    form_error: QLabel

    def error_text(self, key: str) -> str:
        """The error shown next to a field ('' when none); 'form' is the general one."""
        label = self.form_error if key == "form" else self._errors[key]
        return label.text() if label.isVisibleTo(cast(QWidget, self)) else ""

    def shown_errors(self) -> dict[str, str]:
        me = cast(QWidget, self)
        out = {k: label.text() for k, label in self._errors.items() if label.isVisibleTo(me)}
        if self.form_error.isVisibleTo(me):
            out["form"] = self.form_error.text()
        return out

    def _clear_errors(self, *_: object) -> None:
        for label in self._errors.values():
            label.setVisible(False)
        self.form_error.setVisible(False)
