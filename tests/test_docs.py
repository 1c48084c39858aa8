"""docs/protocol.md as a test: its nc transcripts are replayed against a fresh license server and every
answer checked (same fields, same values but for the server's identity, the time and the token); its worked
examples (the hardware ID, the admin and terminal-server proofs) are recomputed; the proof rule is used
against a real server with the credential file it wrote; the documented exit statuses are checked."""
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor

from tsls.public import hardware_id
from tests.harness import Daemon
from tsls import public

HERE = os.path.dirname(__file__)
PROTOCOL_MD = os.path.join(HERE, "..", "docs", "protocol.md")
VARIABLE = {"product_id", "now", "issued_at", "expires_at", "token"}      # this server's, this moment's
TIMEOUT = 10


def doc() -> str:
    with open(PROTOCOL_MD, encoding="utf-8") as f:
        return f.read()


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def transcripts(text: str):
    """Each `printf ... | nc` command of "Try it with nc": (requests, answers shown), the shell's $hello
    and '$token' substitutions applied ($token stands for the token of the first answer that has one)."""
    part = section(text, "## Try it with nc")
    hello = re.search(r"^\s*\$ hello='(\{.*\})'$", part, re.M)[1]
    blocks = re.findall(r"^ +\$ printf '%s\\n' ([^|]*)\| nc -q1 127\.0\.0\.1 4870\n((?: {4}\{.*\n)*)", part, re.M)
    assert len(blocks) == 3, "the transcripts of docs/protocol.md changed shape: update tests/test_docs.py"
    for args, shown in blocks:
        args = args.replace('"$hello"', f"'{hello}'").replace("'$token'", "$TOKEN")
        requests = re.findall(r"'(\{[^']*\})'", args)
        yield requests, [json.loads(line) for line in shown.split("\n") if line.strip()]


class Raw(protocol.Protocol):
    """One connection as nc -q1 makes it: write the lines, shut down the sending side, read to the end."""

    def __init__(self, lines):
        self.lines, self.data, self.done = lines, b"", defer.Deferred()

    def connectionMade(self):
        self.transport.write("".join(line + "\n" for line in self.lines).encode())
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback([json.loads(line) for line in self.data.decode().splitlines() if line.strip()])


def nc(port, lines):
    raw = Raw(lines)
    endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory.forProtocol(lambda: raw))
    return raw.done.addTimeout(TIMEOUT, reactor)


def same_shape(got, shown, where="answer"):
    if isinstance(shown, dict):
        assert isinstance(got, dict) and list(got) == list(shown), f"{where}: fields {list(got)} != {list(shown)}"
        for key in shown:
            if key in VARIABLE and shown[key] is not None:
                assert isinstance(got[key], type(shown[key])), f"{where}.{key}"
            else:
                same_shape(got[key], shown[key], f"{where}.{key}")
    else:
        assert got == shown, f"{where}: {got!r} != {shown!r}"


@pytest.fixture
def daemon(tmp_path):
    from tests.harness import running
    yield from running(Daemon(tmp_path))


@pytest_twisted.inlineCallbacks
def test_the_nc_transcripts_replay_on_a_fresh_server(daemon):
    port = int(daemon.endpoint.rsplit(":", 1)[1])
    token = None
    for requests, shown in transcripts(doc()):
        if token is not None:
            requests = [r.replace("$TOKEN", token) for r in requests]
        got = yield nc(port, requests)
        assert len(got) == len(shown)
        for g, s in zip(got, shown):
            same_shape(g, s)
            lic = (g.get("result") or {}).get("license") if isinstance(g.get("result"), dict) else None
            if lic and token is None:
                token = lic["token"]


def test_the_hardware_id_example_is_the_rule_applied():
    text = doc()
    pairs = re.findall(r"`(\w+)` gives\s+`([0-9a-f]{40})`", text)
    assert pairs == [("PC1", hardware_id("PC1")), ("pc1", hardware_id("pc1"))]
    for name, hwid in pairs:
        assert hwid == "00000104" + hashlib.md5(name.encode("utf-8")).hexdigest()
    assert hardware_id("PC1") in section(text, "## Try it with nc")


def worked_examples(text):
    for block in re.findall(r"((?:^ {4}(?:secret|nonce|message|proof) +\S+\n){4})", text, re.M):
        yield dict(line.split() for line in block.strip().split("\n"))


def test_the_proof_examples_compute():
    examples = list(worked_examples(doc()))
    assert [e["message"].split("|", 1)[1] for e in examples] == ["admin|", "terminal_server|TS01"]
    for e in examples:
        assert e["message"].startswith(e["nonce"] + "|")
        assert hmac.new(e["secret"].encode("ascii"), e["message"].encode("ascii"), hashlib.sha256).hexdigest() \
            == e["proof"]
        role, _, name = e["message"].split("|", 1)[1].partition("|")
        assert public.proof(e["secret"], e["nonce"], role, name) == e["proof"]


@pytest_twisted.inlineCallbacks
def test_the_proof_rule_opens_an_admin_session_on_a_real_server(daemon):
    """Key: the credential file's content without its trailing newline, as the doc says."""
    with open(daemon.service.credential_path, "rb") as f:
        content = f.read()
    assert content.endswith(b"\n") and len(content) == 65
    port = int(daemon.endpoint.rsplit(":", 1)[1])

    class Session(protocol.Protocol):
        def __init__(self):
            self.buffer, self.waiting = b"", []

        def dataReceived(self, data):
            self.buffer += data
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                self.waiting.pop(0).callback(json.loads(line))

        def ask(self, request):
            d = defer.Deferred()
            self.waiting.append(d)
            self.transport.write(json.dumps(request).encode() + b"\n")
            return d.addTimeout(TIMEOUT, reactor)

    for key, works in ((content[:-1], True), (content, False)):
        session = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            protocol.Factory.forProtocol(Session))
        nonce = (yield session.ask({"id": 1, "op": "challenge"}))["result"]["nonce"]
        proof = hmac.new(key, f"{nonce}|admin|".encode("ascii"), hashlib.sha256).hexdigest()
        answer = yield session.ask({"id": 2, "op": "hello", "protocol": 1, "role": "admin", "proof": proof})
        session.transport.loseConnection()
        if works:
            assert answer["ok"] and answer["result"]["authenticated"] is True and answer["result"]["role"] == "admin"
        else:
            assert answer["error"]["code"] == "BAD_CREDENTIALS"


def run(*argv):
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60)


def test_the_documented_exit_statuses(tmp_path):
    text = section(doc(), "## The command-line clients' output and exit status")
    assert "exit 1" in text and "on **stdout**" in text
    (tmp_path / "admin.secret").write_text("x" * 64 + "\n")
    done = run("clients.admin", "--server", "tcp:127.0.0.1:1", "--credential", str(tmp_path / "admin.secret"),
               "--json", "status")
    assert done.returncode == 1 and json.loads(done.stdout)["error"]["code"] == "SERVER_UNREACHABLE"
    done = run("clients.admin", "--server", "tcp:127.0.0.1:1", "--credential", str(tmp_path / "admin.secret"),
               "status")
    assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith("error SERVER_UNREACHABLE: ")
    assert run("tsls.cli", "check", "--db", str(tmp_path / "none.sqlite")).returncode == 2
    (tmp_path / "junk.sqlite").write_text("junk")
    assert run("tsls.cli", "check", "--db", str(tmp_path / "junk.sqlite")).returncode == 1
