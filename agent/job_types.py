"""How a job ends, shared by the runner (``agent.jobs``) and the job kinds
kept in their own modules (``agent.restore_jobs``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinalStatus = Literal["succeeded", "failed", "cancelled"]
RepoStatus = Literal["ready", "init_failed", "locked"]


@dataclass
class Outcome:
    status: FinalStatus
    exit_code: int | None = None
    error: str | None = None
    warnings: bool = False
    summary: dict[str, object] | None = None
    repo_status: RepoStatus | None = None


class JobFailed(Exception):
    """The job failed; ``error`` is the sentence the operator reads."""

    def __init__(
        self, error: str, exit_code: int | None = None, repo_status: RepoStatus | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.exit_code = exit_code
        self.repo_status = repo_status


class JobCancelled(Exception):
    pass
