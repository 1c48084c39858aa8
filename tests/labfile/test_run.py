"""Lab files played end to end: real daemons as child processes on ephemeral loopback ports, session
hosts through real socket relays, the journal and the expectations."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.labfile.labs import fleet, host, install, lab, purchase, server, step, wave
from clients.labfile.cli import load
from clients.labfile.journal import Journal, comparable
from clients.labfile.runner import LabRun, summary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "labs", "*.toml")))
SMALL = os.path.join(ROOT, "examples", "labs", "small-office.toml")


async def play(path, where, seed=None):
    lab, steps = load(path, seed)
    journal_path = str(where / "journal.jsonl")
    run = LabRun(reactor, lab, steps, str(where / "work"), Journal(journal_path))
    results = await run.play()
    return run, results, journal_path


async def play_holding(text, path):
    """Write the lab ``text`` to ``path`` and play it in a new directory "run" beside it; every
    expectation must hold."""
    path.write_text(text)
    (path.parent / "run").mkdir()
    run, results, journal = await play(str(path), path.parent / "run")
    assert [r.why for r in results if not r.ok] == []
    return run, results, journal


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
@pytest_twisted.ensureDeferred
async def test_example_lab_holds_every_expectation(path, tmp_path):
    run, results, _ = await play(path, tmp_path)
    assert results and all(r.ok for r in results), summary(run.lab, results, run.counts, path)
    assert all(not d.alive for d in run.daemons.values())


REPLAY = lab("replayed",
             server(),
             server("LS2"),
             host("TS01", ["LS1", "LS2"]),
             host("TS02", ["LS2", "LS1"]),
             host("TS03", ["LS1", "LS2"]),
             fleet(devices=30),
             purchase("a", quantity=12),
             purchase("b", license_server="LS2", quantity=12),
             install(name="a"),
             install(name="b"),
             wave(through=["TS01", "TS02", "TS03"], times=2),
             step("+1d", "cut", session_host="TS02", license_server="LS2"),
             step("+1h", "kill", license_server="LS1"),
             wave("60d", through=["TS01", "TS02", "TS03"]),
             seed=5)


@pytest_twisted.ensureDeferred
async def test_same_file_and_seed_give_the_same_journal_and_another_seed_does_not(tmp_path):
    # Three session hosts sharing two license servers (the lanes that must keep their order), pools
    # that run out and send hosts down their lists, a cut link, a SIGKILL, renewals after 60 days.
    lab = tmp_path / "replay.toml"
    lab.write_text(REPLAY)
    journals = []
    for name, seed in (("a", None), ("b", None), ("c", "6")):
        (tmp_path / name).mkdir()
        _, _, path = await play(str(lab), tmp_path / name, seed)
        with open(path) as f:
            journals.append(comparable(f))
    one, two, other = journals
    assert one == two
    logons = [r for r in one if r["kind"] == "logon"]
    assert len(logons) == 90 and {r["served_by"] for r in logons} == {"LS1", "LS2", None}
    assert {r["outcome"] for r in logons} >= {"permanent", "temporary"}
    assert [r.get("expires") for r in other if r["kind"] == "logon"] != [r.get("expires") for r in logons]


FAILING = lab("expects too much",
              server(),
              host(),
              fleet(),
              purchase(quantity=2),
              install(),
              wave(times=2, expect={"permanent": 3}))


def test_a_failing_expectation_exits_non_zero_and_says_which_and_why(tmp_path):
    lab = tmp_path / "failing.toml"
    lab.write_text(FAILING)
    done = subprocess.run([sys.executable, "-m", "tsls.cli", "lab", "run", str(lab), "--work-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "step 2          FAILED  wave of desks: permanent=3" in done.stdout
    assert "- permanent: expected 3, got 2" in done.stdout
    assert "FAILED: step 2: wave of desks: permanent=3" in done.stdout
    with open(tmp_path / "w" / "journal.jsonl") as f:
        records = [json.loads(line) for line in f]
    failed = [r for r in records if r["kind"] == "expectation" and not r["ok"]]
    assert failed[0]["why"] == ["permanent: expected 3, got 2"]


def test_check_validates_without_starting_anything(tmp_path):
    lab = tmp_path / "bad.toml"
    lab.write_text(FAILING.replace('fleet = "desks"\nthrough', 'fleet = "nobody"\nthrough'))
    done = subprocess.run([sys.executable, "-m", "tsls.cli", "lab", "check", str(lab)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert f"{lab}:29: step[2].fleet: no fleet named 'nobody' (known: desks)" in done.stderr
    assert "nothing was started" in done.stderr


def test_check_prints_the_plan_counting_in_the_singular_and_plural():
    done = subprocess.run([sys.executable, "-m", "tsls.cli", "lab", "check", SMALL], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "1 license server, 1 session host, 20 devices, 7 steps from 2025-01-06" in done.stdout.splitlines()[0]


def test_check_piped_into_a_reader_that_stops_early_is_not_an_error():
    checking = subprocess.Popen([sys.executable, "-m", "tsls.cli", "lab", "check", SMALL], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)
    checking.stdout.close()             # `| head -0`: nobody reads the plan
    _, err = checking.communicate(timeout=60)
    assert checking.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_the_docs_example_is_the_tested_small_office():
    with open(os.path.join(ROOT, "docs", "labfile.md")) as f:
        doc = f.read()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    with open(SMALL) as f:
        assert block == f.read()


@pytest_twisted.ensureDeferred
async def test_the_readme_lab_file_runs_and_holds(tmp_path):
    import textwrap
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = readme.split("Write `office.toml`:\n", 1)[1].split("\nthen:", 1)[0]
    office = tmp_path / "office.toml"
    office.write_text(textwrap.dedent(block))
    (tmp_path / "run").mkdir()
    run, results, _ = await play(str(office), tmp_path / "run")
    assert [r.what for r in results if not r.ok] == []
    with open(tmp_path / "run" / "journal.jsonl") as f:
        faults = [(e["do"], e.get("signal")) for e in map(json.loads, f) if e["kind"] == "fault"]
    assert faults == [("kill", "SIGKILL"), ("restart", None)]


def _children(pid):
    """The processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _ctrl_c(proc, daemons):
    """SIGINT to a ``tsls lab run``: its exit status and stderr once it exited, every daemon gone."""
    import signal
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert all(_gone(pid) for pid in daemons)
    return proc.returncode, err


LONG_LAB = """
[lab]
name = "Long"
start = "2025-01-06"
seed = 7

[[license_server]]
name = "LS1"

[[session_host]]
name = "TS01"
license_servers = ["LS1"]

[[fleet]]
name = "desks"
devices = 3000

[[purchase]]
name = "cals"
license_server = "LS1"
quantity = 10

[[step]]
at = "0d"
do = "install"
purchase = "cals"

[[step]]
at = "+1h"
do = "wave"                 # 150,000 logons: tens of seconds, so Ctrl-C comes while the lab runs
fleet = "desks"
through = ["TS01"]
times = 50
"""


def test_ctrl_c_stops_every_daemon_the_lab_started(tmp_path):
    import selectors
    path = tmp_path / "long.toml"
    path.write_text(LONG_LAB)
    proc = subprocess.Popen([sys.executable, "-m", "tsls.cli", "lab", "run", path, "--work-dir", str(tmp_path / "w"),
                             "--progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as selector:     # wait (at most 60 s) for the first step
            selector.register(proc.stderr, selectors.EVENT_READ)
            assert selector.select(timeout=60), "no step began within 60 s"
        assert "1/" in proc.stderr.readline()
        daemons = _children(proc.pid)
        assert len(daemons) == 2                            # the Clearinghouse and LS1
        status, err = _ctrl_c(proc, daemons)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status == 3
    assert "interrupted; stopping the lab's daemons" in err


def _lines_until(stream, ending, timeout=120):
    """Lines of a child's ``stream`` up to and including the one containing ``ending`` (a wait on the
    output, at most ``timeout`` seconds per read, never a sleep). Read from the descriptor, not the
    buffered file, so a select never misses lines already buffered."""
    import selectors
    text = ""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while ending not in text:
            assert selector.select(timeout=timeout), f"no output within {timeout} s; so far: {text}"
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"the output ended before {ending!r}: {text}"
            text += chunk.decode()
    return text.splitlines()


def test_keep_and_console_the_kept_lab_is_watched_in_the_console_until_ctrl_c(tmp_path):
    import http.cookiejar
    import urllib.request
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "tsls.cli", "lab", "run", SMALL, "--work-dir", str(work),
                             "--console", "--keep"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1)
    try:
        lines = _lines_until(proc.stdout, "lab kept running; Ctrl-C to stop")
        links = [line for line in lines if line.startswith("console LS1 ")]
        assert len(links) == 2                 # one at start, a fresh one once kept
        assert "PASSED" in lines
        endpoint = links[-1].split("(")[1].split(")")[0]
        daemons = _children(proc.pid)
        assert len(daemons) == 2                # the Clearinghouse and LS1, still up
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with browser.open(links[-1].rsplit(" ", 1)[1], timeout=30) as answer:
            assert answer.status == 200
        with browser.open(links[-1].rsplit(" ", 1)[1].split("/login")[0] + "/api/dashboard", timeout=30) as answer:
            dashboard = json.loads(answer.read())
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "clients.admin", "--server", endpoint, "--credential",
             str(work / "LS1" / "admin.secret"), "--json", "status"], cwd=ROOT, capture_output=True, text=True,
            timeout=60, check=True).stdout)
        issued = sum(p["issued"] for p in status["key_packs"])
        assert issued == 20
        assert sum(bar["issued"] for bar in dashboard["cals"]) == issued
        assert dashboard["now"] == status["now"]
        code, err = _ctrl_c(proc, daemons)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert "stopping the lab's daemons" in err
    with open(work / "journal.jsonl") as f:
        assert "token=" not in f.read()        # the links stay out of the journal


LINKS_AND_PER_USER = lab("slowed and reset links, a Per User host",
                         server(),
                         host(),
                         host("TSU", mode="per-user"),
                         fleet(devices=4),
                         fleet("roamers", users=2),
                         purchase("devices", quantity=4),
                         purchase("users", cal_type="per-user", quantity=1),
                         install(name="devices"),
                         install(name="users"),
                         step("+1h", "slow", session_host="TS01", license_server="LS1", delay="50ms", **{"for": "1h"}),
                         wave("+1m", times=2, expect={"permanent": 4, "served_by": {"LS1": 4}}),
                         step("+2h", "reset", session_host="TS01", license_server="LS1"),
                         step("+1m", "revoke", license_server="LS1", device="desks-001"),
                         wave("+1m", fleet="roamers", through=["TSU"], expect={"per_user": 3}),
                         step("+1m", "expect", key_pack="devices", issued=3, present=["PER_USER_LOGON", "CAL_REVOKED"]))


@pytest_twisted.ensureDeferred
async def test_slowed_and_reset_links_per_user_hosts_and_revocation(tmp_path):
    run, results, journal = await play_holding(LINKS_AND_PER_USER, tmp_path / "links.toml")
    with open(journal) as f:
        faults = [(r["do"], r.get("link"), r.get("delay_ms")) for r in map(json.loads, f) if r["kind"] == "fault"]
    assert faults == [("slow", "TS01->LS1", 50), ("heal", "TS01->LS1", None), ("reset", "TS01->LS1", None)]


REBUILT = lab("a license server rebuilt, its CALs recovered",
              server(),
              host(),
              fleet(),
              fleet("after", 2),
              purchase(quantity=5),
              install(),
              wave(times=2, expect={"permanent": 3}),
              step("+1d", "rebuild", license_server="LS1"),
              step("+1h", "expect", license_server="LS1", total=0),
              step("+1h", "recover", purchase="cals"),
              wave(fleet="after", times=2, expect={"permanent": 2}),
              step("+1h", "expect", key_pack="cals", total=5, issued=2, present=["KEY_PACK_INSTALLED"]))


@pytest_twisted.ensureDeferred
async def test_a_rebuilt_license_server_recovers_its_purchase(tmp_path):
    run, results, journal = await play_holding(REBUILT, tmp_path / "rebuilt.toml")
    with open(journal) as f:
        records = [json.loads(line) for line in f]
    assert [r["outcome"] for r in records if r.get("do") in ("rebuild", "recover")] == [
        "rebuilt with an empty database", "recovered"]


SECURITY_GROUP = lab("the Terminal Server Computers group",
                     server(security_group=True),
                     host("TS-MEMBER", group=True),
                     host("TS-ROGUE"),
                     fleet(devices=4),
                     purchase(quantity=4),
                     install(),
                     wave(through=["TS-MEMBER", "TS-ROGUE"], times=2, expect={"permanent": 2, "refused": 2, "refused_by": {"NOT_IN_GROUP": 2}}),
                     step("+1h", "expect", license_server="LS1", present=["NOT_IN_GROUP"]),
                     step("+1d", "rebuild", note="a new database: the registration, the group and the policy are set again", license_server="LS1"),
                     step("+1h", "recover", purchase="cals"),
                     wave("+100d", through=["TS-MEMBER", "TS-ROGUE"], times=2, expect={"refused_by": {"NOT_IN_GROUP": 2}}))


@pytest_twisted.ensureDeferred
async def test_only_session_hosts_in_the_group_get_licenses(tmp_path):
    run, results, journal = await play_holding(SECURITY_GROUP, tmp_path / "group.toml")
    with open(journal) as f:
        text = f.read()
    secret = next(iter(run.hosts["TS-MEMBER"].secrets.values()))
    assert secret not in text
    assert text.count('"do":"register"') == 2       # at the start, and again after the rebuild


DEPLOYMENT = lab("scopes, a directory",
                 server(scope="workgroup"),
                 server("LS2", scope="forest"),
                 host(),
                 host("TS02", discover=True),
                 host("TSU", ["LS2"], mode="per-user"),
                 fleet(devices=2),
                 fleet("roaming", 2),
                 fleet("mixed", 4, per_user=0.5),
                 purchase(quantity=5),
                 purchase("more", license_server="LS2", quantity=5),
                 purchase("people", license_server="LS2", cal_type="per-user", quantity=5),
                 install(),
                 install(name="people"),
                 install(name="more"),
                 wave(times=2, expect={"permanent": 2}),
                 wave(fleet="mixed", through=["TS01", "TSU"], times=2, expect={"permanent": 2, "per_user": 2}),
                 step("+1h", "expect", present=["POLICY_CHANGED"]),
                 step("+1h", "kill", license_server="LS1"),
                 wave(fleet="roaming", through=["TS02"], times=2, rate=1, expect={"permanent": 2, "served_by": {"LS2": 2}}),
                 step("+4h", "restart", license_server="LS1"),
                 step("+1h", "convert", key_pack="more", count=4, expect_error="NOT_ENOUGH_CALS"),
                 step("+1h", "convert", key_pack="more", count=3, into="more-per-user"),
                 step("+1h", "expect", key_pack="more-per-user", total=3, issued=0, present=["KEY_PACK_CONVERTED"]),
                 step("+1h", "expect", key_pack="more", total=2, issued=2),
                 step("+1h", "migrate", purchase="cals", to="LS2", reason="replaced"),
                 step("+1h", "expect", key_pack="cals", total=5, issued=0),
                 step("+1h", "expect", license_server="LS1", present=["KEY_PACK_UNINSTALLED"]))


@pytest_twisted.ensureDeferred
async def test_scopes_discovery_a_per_user_share_a_logon_rate_convert_and_migrate(tmp_path):
    # LS1 a workgroup, LS2 a forest license server; half of fleet mixed logs on through the Per User
    # host; TS02 lists LS1 and finds LS2 in the lab's directory (LS1, a workgroup server, is not
    # published), and moves on to LS2 once LS1 is killed; its fleet logs on at 1 logon per lab hour.
    # Then 3 of LS2's 5 Per Device CALs (2 issued) become Per User CALs; 4 cannot. LS1 is replaced:
    # its purchase migrates to LS2 and is uninstalled on LS1.
    # Played twice: the same journal (license IDs, lab times of the paced logons, ...).
    run, results, journal = await play_holding(DEPLOYMENT, tmp_path / "deployment.toml")
    with open(journal) as f:
        records = [json.loads(line) for line in f]
    (tmp_path / "again").mkdir()
    _, _, again = await play(str(tmp_path / "deployment.toml"), tmp_path / "again")
    with open(journal) as f, open(again) as g:
        assert comparable(f) == comparable(g)
    assert [(r["license_server"], r["scope"]) for r in records if r.get("do") == "role"] == \
        [("LS1", "workgroup"), ("LS2", "forest")]
    assert records[0]["kind"] == "started" and records[0]["discovered"] == {"TS02": ["LS1", "LS2"]}
    assert [(r["key_pack"], r["into"], r["cal_type"]) for r in records if r.get("do") == "convert"
            and r["kind"] == "step" and r.get("outcome") == "converted"] == [("more", "more-per-user", "per_user")]
    [migrated] = [r for r in records if r.get("do") == "migrate" and r["kind"] == "step"]
    assert (migrated["source"], migrated["license_server"], migrated["source_running"]) == ("LS1", "LS2", True)
    paced = [(r["lab"][11:16], r["device"], r["round"]) for r in records if r["kind"] == "logon"
             and r["device"].startswith("roaming")]
    assert paced == [("05:00", "roaming-001", 1), ("06:00", "roaming-002", 1), ("07:00", "roaming-001", 2),
                     ("08:00", "roaming-002", 2)]
    with open(tmp_path / "run" / "work" / "directory.json") as f:
        assert [e["scope"] for e in json.load(f)["license_servers"]] == ["forest"]
    mixed = {(r["host"], r["device"], r["outcome"]) for r in records if r["kind"] == "logon" and r["round"] == 2
             and r["device"].startswith("mixed")}
    assert mixed == {("TS01", "mixed-001", "permanent"), ("TSU", "mixed-002", "per_user"),
                     ("TS01", "mixed-003", "permanent"), ("TSU", "mixed-004", "per_user")}


RDP_CLIENTS = lab("two desks, one a real RDP client",
                  server(),
                  host(),
                  fleet(devices=2, rdp=1),
                  purchase(quantity=5),
                  install(),
                  wave(times=2, expect={"permanent": 2}),
                  step("+1h", "expect", key_pack="cals", issued=2, licensed="desks"))


@pytest.mark.skipif(not (shutil.which("xfreerdp") and shutil.which("xvfb-run")),
                    reason="xfreerdp and xvfb-run are not installed (.ci/run installs freerdp2-x11 xvfb xauth)")
@pytest_twisted.ensureDeferred
async def test_a_fleet_device_can_be_a_real_rdp_client(tmp_path):
    # desks-001 is xfreerdp through TS01's `tsls-ts rdp`: a temporary license, then the permanent CAL.
    run, results, journal = await play_holding(RDP_CLIENTS, tmp_path / "rdp.toml")
    assert all(not d.alive for d in run.daemons.values())
    with open(journal) as f:
        logons = [json.loads(line) for line in f if '"kind":"logon"' in line]
    assert [(r["device"], r["round"], r.get("rdp"), r["outcome"]) for r in logons] == [
        ("desks-002", 1, None, "temporary"), ("desks-001", 1, "new_license", "temporary"),
        ("desks-002", 2, None, "permanent"), ("desks-001", 2, "upgrade_license", "permanent")]
