"""``job.log`` on the store thread without peewee's query building.

Per frame, ``server_core.ingest._job_log`` looks the job up with
``Job.get_or_none`` and bumps ``log_lines`` with ``Job.update``: peewee
builds both statements in Python each time (~20 % of the store thread's
samples while logs stream, holding the GIL the loop needs). Here the two
become fixed SQL on the same connection; a job that is missing or belongs to
another host still goes through ``_job_for`` (creates it, or refuses).
Same rows, same counts, same events. The real change would go into
server_core/ingest.py.
"""

from __future__ import annotations

from agent.protocol import JobLog
from server_core import ingest
from server_core.events import Event, JobLogAppended
from server_core.models import Job

_JOB_HOST = 'SELECT "host_id" FROM "job" WHERE "id" = ?'
_BUMP = 'UPDATE "job" SET "log_lines" = "log_lines" + ? WHERE "id" = ?'


def _job_log(host_id: int, msg: JobLog) -> list[Event]:
    conn = Job._meta.database.connection()
    row = conn.execute(_JOB_HOST, (msg.job_id,)).fetchone()
    job_id = (
        msg.job_id
        if row is not None and row[0] == host_id
        else ingest._job_for(host_id, msg.job_id).id
    )
    if not msg.lines:
        return []
    before = conn.total_changes
    conn.executemany(
        ingest._INSERT_LOG_LINE,
        [(job_id, line.seq, line.ts, line.stream, line.text) for line in msg.lines],
    )
    inserted = conn.total_changes - before
    if inserted:
        conn.execute(_BUMP, (inserted, job_id))
    return [JobLogAppended(job_id, host_id, max(line.seq for line in msg.lines))]


ingest._job_log = _job_log
