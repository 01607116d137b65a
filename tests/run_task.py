"""Run one pipeline task in this process, optionally crashing it part-way through.

``python tests/run_task.py TASK YYYY-MM-DD [--kill-at-online-write N]``

With ``--kill-at-online-write N``, Feast's own SQLite writer does the first N - 1
write batches, then the process SIGKILLs itself as the N-th begins, as the OOM
killer would: no exception, no ``finally``, no flush. test_recovery.py uses it.
"""

from __future__ import annotations

import argparse
import os
import signal

from pipelines import tasks


def kill_at_online_write(n: int) -> None:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    real_write = SqliteOnlineStore.online_write_batch
    calls = 0

    def write_or_die(self, config, table, data, progress):  # noqa: ANN001
        nonlocal calls
        calls += 1
        if calls >= n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(self, config, table, data, progress)

    SqliteOnlineStore.online_write_batch = write_or_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    parser.add_argument("day")
    parser.add_argument("--kill-at-online-write", type=int, default=0)
    args = parser.parse_args()
    if args.kill_at_online_write:
        kill_at_online_write(args.kill_at_online_write)
    getattr(tasks, args.task)(args.day)


if __name__ == "__main__":
    main()
