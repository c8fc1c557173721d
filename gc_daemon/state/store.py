"""Every query of the state database, behind one object: :class:`Store`.

:class:`Store` is cheap to build (no I/O until a method is called). Pass bookkeeping, holds and the
audit log commit call by call; the state changes of one complete pass go through a single
:class:`StateTx` (``with store.transaction() as tx``), so an interrupted pass changes nothing.

While a ``StateTx`` is open on SQLite it holds the database's write lock from its first write on;
write through ``tx`` only, not through other ``Store`` methods, until it has committed.

The queries live in a module a concern, each giving ``Store`` its methods:

- gc_daemon/state/pass_records.py: passes, their outcomes and sequence numbers, the blast-radius guard;
- gc_daemon/state/transaction.py: :class:`StateTx`, the one transaction of a complete pass;
- gc_daemon/state/blob_rows.py: tracked blob rows (the pass's hot read and bulk write, the report's reads);
- gc_daemon/state/disk_rows.py: tracked disks and snapshots;
- gc_daemon/state/owner_rows.py: who owned a blob or a disk (owner records);
- gc_daemon/state/holds.py: operator holds on blobs, disks and snapshots;
- gc_daemon/state/audit.py: the audit log;
- gc_daemon/state/sql.py: what they share (the dialect's upsert, a key's filter, aware timestamps).

Every name callers import from here (``Store``, ``StateTx``, ``StoredRow``, the outcome and audit
action names, ...) is importable from here.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from gc_daemon.state.audit import (  # noqa: F401 - importable from here
    DELETE_FAILED,
    DELETE_INTENT,
    DELETE_REFUSED,
    DELETED,
    KEEP,
    QUARANTINE_INTENT,
    UNKEEP,
    VHD,
    AuditLog,
    _GroupCommit,
    AuditRecord,
    _audit_record,
    _quarantine_of,
    _subscription_of,
)
from gc_daemon.state.blob_rows import (  # noqa: F401
    _COLUMN_READERS,
    _HOLDS,
    _STATES,
    _TIME_COLUMNS,
    _TRACKED_COLUMNS,
    _TRACKED_SQL,
    _UPDATED_ON_CONFLICT,
    _UPSERT_COLUMNS,
    _UPSERT_HEAD,
    _UPSERT_ROW,
    _UPSERT_SQL,
    _UPSERT_TAIL,
    SQLITE_MAX_ROWS_PER_STATEMENT,
    STREAM_BATCH,
    BlobRowQueries,
    StoredRow,
    _column_reader,
    _Converted,
    _pg_time,
    _sqlite_rows_per_statement,
    _sqlite_time,
    _sqlite_upsert_params,
    _sqlite_upsert_sql,
    _ts,
    _upsert_params,
    row_to_tracked,
)
from gc_daemon.state.disk_rows import (  # noqa: F401
    _DISK_COLUMNS,
    _DISK_HOLDS,
    _DISK_STATES,
    _KINDS,
    DiskCount,
    DiskRowQueries,
    _apply_disks,
    disk_values,
    row_to_disk,
)
from gc_daemon.state.holds import Holds
from gc_daemon.state.owner_rows import OwnerRecordQueries
from gc_daemon.state.pass_records import (  # noqa: F401
    COMPLETE,
    CONFIRM_PASS,
    FAILED,
    INCOMPLETE,
    RUNNING,
    STOPPED,
    PassRecord,
    PassRecords,
    _last_complete_seq,
    _pass_record,
)
from gc_daemon.state.sql import BATCH_SIZE, _KEY_COLUMNS, _aware, _dialect_insert, _key_filter  # noqa: F401
from gc_daemon.state.transaction import (  # noqa: F401
    SQLITE_AUTOCHECKPOINT_PAGES,
    UPSERT_BATCH,
    StateTx,
    Transactions,
    _is_sqlite_file,
    log,
)


class Store(PassRecords, Transactions, BlobRowQueries, DiskRowQueries, OwnerRecordQueries, Holds, AuditLog):
    """The state database's queries, a concern a base class (see the module's docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_lock = threading.Lock()
        # The audit writes of this process (the executor's deletions, several at once) are committed
        # together: one transaction for all that wait (SQLite has one writer, and a commit's fsync is
        # what a deletion's record costs), each caller back once its entry is committed.
        self._audits = _GroupCommit(self._write_audits)
