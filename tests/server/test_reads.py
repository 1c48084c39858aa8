"""Reads off the writer (tsls.server.reads): in reader threads that yield the CPU to grants."""
import contextlib
import os
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tsls.server import reads


class _Writer:
    def submit(self, job):
        return defer.succeed(job(None, 1234))


class _Store:
    @contextlib.contextmanager
    def snapshot(self):
        yield "snapshot"

    def close(self):
        pass


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no per-thread priority here")
@pytest_twisted.inlineCallbacks
def test_a_read_runs_in_a_reader_thread_at_a_lower_cpu_priority_than_the_daemon():
    pool = reads.Reads(reactor, _Writer(), _Store())
    pool.start()
    try:
        seen = yield pool.read(lambda snap, now: (snap, now, threading.get_native_id(), _priority())).addTimeout(10, reactor)
    finally:
        pool.stop()
    snap, now, thread, priority = seen
    assert (snap, now) == ("snapshot", 1234)
    assert thread != threading.get_native_id()
    assert priority == min(_priority() + reads.READER_NICENESS, 19) > _priority()
