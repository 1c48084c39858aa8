"""A schema-driven fuzzer (schemathesis) against the real Clearinghouse daemon, from its OpenAPI
description (docs/clearinghouse.openapi.json): no request may get a 5xx."""
import os
import shutil
import sys

import pytest_twisted
from twisted.internet import reactor, utils

from tests.harness import DaemonProcess

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "clearinghouse.openapi.json")
EXAMPLES = os.environ.get("TSLS_FUZZ_EXAMPLES", "25")


@pytest_twisted.inlineCallbacks
def test_fuzzed_requests_never_get_a_server_error(tmp_path):
    schemathesis = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert schemathesis, "schemathesis is a test dependency: pip install -e '.[test]'"
    daemon = DaemonProcess()
    args = [sys.executable, "-m", "tsls.cli", "clearinghouse", "--data-dir", str(tmp_path),
            "--listen", "tcp:0:interface=127.0.0.1"]
    daemon.transport = reactor.spawnProcess(daemon, sys.executable, args, env=os.environ.copy())
    try:
        yield daemon.listening.addTimeout(20, reactor)
        port = int(daemon.output.decode().split("port=")[1].split(")")[0])
        # Run the fuzzer without blocking the reactor, which must keep draining the daemon's output.
        out, err, code = yield utils.getProcessOutputAndValue(
            schemathesis, ["run", SPEC, "--url", f"http://127.0.0.1:{port}", "--checks", "not_a_server_error",
                           "--max-examples", EXAMPLES, "--seed", "2026"], env=os.environ.copy()
        ).addTimeout(600, reactor)
        print(out.decode()[-3000:])
        assert code == 0, out.decode()[-5000:] + err.decode()[-2000:]
    finally:
        daemon.transport.signalProcess("TERM")
        yield daemon.ended.addTimeout(20, reactor)
