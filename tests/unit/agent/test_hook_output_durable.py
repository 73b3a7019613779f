"""What a pre-hook printed is in the agent's outbox before restic starts.

The agent batches log lines in memory for up to half a second before writing
them to its outbox. The fault soak killed agents (SIGKILL) a few tenths of a
second into a backup and found the pre-hook's whole output missing from 10 of
12 interrupted jobs: it was still waiting in memory for restic's first lines.
Real job runner, real restic, a real outbox; the flush timer is set to an
hour, so only an explicit write can put the hook's lines out before restic's.
"""

from __future__ import annotations

from pathlib import Path

from agent import protocol
from agent.jobs import JobSettings
from tests.unit.agent.test_jobs import creds, make_harness, run_cmd
from tests.unit.agent.test_jobs_maintenance import init_repo, restic, source, spec

__all__ = ["restic"]  # the fixture, imported for pytest


async def test_the_pre_hook_output_is_written_before_restic_starts(
    tmp_path: Path, restic: object
) -> None:
    repo = init_repo(restic, tmp_path / "repo")  # type: ignore[arg-type]
    async with make_harness(tmp_path, restic, log_flush_interval=3600.0) as h:  # type: ignore[arg-type]
        h.runner.update_settings(JobSettings(repository=creds(repo)))
        group = spec("db", source(tmp_path), pre_hook="echo dump 1; echo dump 2")
        await h.runner.run(run_cmd("hooked", "backup", source_group=group))
        assert h.finished("hooked").status == "succeeded"
        batches = [
            [(ln.stream, ln.text) for ln in m.lines] for m in h.of("hooked", protocol.JobLog)
        ]
    first = next(i for i, b in enumerate(batches) if ("hook", "hook(pre): dump 2") in b)
    # The hook's lines were written on their own, before restic ran: its
    # result ("snapshot … saved") comes in a later batch, not the same one.
    assert not any("saved" in text for b in batches[: first + 1] for _, text in b), batches
    assert any("saved" in text for b in batches[first + 1 :] for _, text in b), batches
