"""What to tell the operator when browsing or restoring fails: what went wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass

from server_core.errors import AgentTimeout, HostOffline, NotFound
from ui_qt.host_tabs.common import error_text
from ui_qt.restore.tree_model import IndexFailed


@dataclass(frozen=True)
class Advice:
    problem: str
    what_to_do: str


def advice(exc: BaseException, host_name: str) -> Advice:
    text = error_text(exc)
    if isinstance(exc, HostOffline):
        return Advice(
            text,
            f"Browsing reads the snapshot through {host_name}'s agent. Start the agent "
            f"(or wait until {host_name} is back online), then press Try again.",
        )
    if isinstance(exc, AgentTimeout):
        return Advice(
            text,
            "The agent did not answer in time. Press Try again; if it keeps happening, "
            "look at the agent's log on the host.",
        )
    if isinstance(exc, NotFound):
        return Advice(
            text,
            "The snapshot may have been forgotten or pruned since the list was read. "
            "Pick another snapshot above (the list refreshes when the agent reports).",
        )
    if isinstance(exc, IndexFailed):
        return Advice(
            f"The agent could not read the snapshot's tree: {text}",
            "Check the repository on the Repo tab (is it reachable, is it locked?), "
            "then press Try again.",
        )
    return Advice(
        text, "Press Try again; if it keeps failing, look at the agent's log on the host."
    )
