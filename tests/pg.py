"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary directory, the server on a
Unix socket in that directory only (no TCP), password authentication, one role for tsls and a fresh
database per test. Removed afterwards. No mock stands in for PostgreSQL: where its binaries are
absent the tests that need it skip, saying so (.ci/run installs Debian's postgresql).

initdb and the server refuse to run as root, so when the tests run as root they run as the
``postgres`` user (the Debian package creates it); otherwise as the current user.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile

import pytest

START_TIMEOUT = 60


def binaries() -> str | None:
    """The directory of PostgreSQL's server binaries (the newest installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _run_as():
    """The user to run initdb and postgres as: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


class Cluster:
    """One PostgreSQL server in a private directory. ``dsn(database)`` names a database on it for
    the tsls role; the role's password is in ``password_file`` (0600), never in a DSN."""

    def __init__(self, bindir: str, base: str | None = None) -> None:
        """``base``: where its directory goes; by default memory (/dev/shm) when there is one, as
        the tests make and remove many clusters' worth of small files (the bench puts it on disk)."""
        self.bindir = bindir
        self.user = _run_as()
        if os.geteuid() == 0 and self.user is None:
            raise RuntimeError("running as root, and there is no postgres user to run PostgreSQL as")
        if base is None and os.access("/dev/shm", os.W_OK):
            base = "/dev/shm"
        self.dir = tempfile.mkdtemp(prefix="tsls-pg-", dir=base)
        self.data = os.path.join(self.dir, "data")
        self.socket_dir = self.dir
        self.port = 5432            # names the socket file only: the server listens on no TCP port
        self.password = secrets.token_hex(16)
        self.password_file = os.path.join(self.dir, "tsls.password")
        self._superuser_password = secrets.token_hex(16)
        self._databases = 0
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)

    def _cmd(self, *args: str, check: bool = True, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        argv = list(args)
        if self.user is not None:
            argv = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--init-groups", *argv]
        done = subprocess.run(argv, check=False, timeout=timeout, capture_output=True, text=True, cwd=self.dir)
        if check and done.returncode:
            raise RuntimeError(f"{os.path.basename(args[0])} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def _private_file(self, path: str, text: str, owner=None) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def init(self) -> None:
        superuser_pw = os.path.join(self.dir, "superuser.password")
        self._private_file(superuser_pw, self._superuser_password, self.user)
        self._cmd(os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={superuser_pw}", "--encoding=UTF8", "--locale=C", "--no-instructions", "--no-sync")
        os.unlink(superuser_pw)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(f"\nlisten_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\nport = {self.port}\n"
                       "max_connections = 100\nshared_buffers = 32MB\n")
        self.start()
        self.psql(f"CREATE ROLE tsls LOGIN PASSWORD '{self.password}'")
        self._private_file(self.password_file, self.password)

    def start(self) -> None:
        self._cmd(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "server.log"),
                  "-w", "-t", str(START_TIMEOUT), "start")

    def restart(self, mode: str = "immediate") -> None:
        """``pg_ctl restart -m MODE``: immediate is a crash as far as the data is concerned."""
        self._cmd(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "server.log"),
                  "-w", "-t", str(START_TIMEOUT), "-m", mode, "restart")

    def stop(self, mode: str = "fast") -> None:
        self._cmd(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w", "-m", mode, "stop", check=False)

    def psql(self, sql: str, database: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": self._superuser_password}
        argv = [os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir,
                "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql]
        done = subprocess.run(argv, check=False, timeout=START_TIMEOUT, capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def new_database(self) -> str:
        """A fresh, empty database owned by the tsls role; returns its DSN (no password in it)."""
        self._databases += 1
        name = f"tsls_{self._databases}"
        self.psql(f"CREATE DATABASE {name} OWNER tsls")
        return self.dsn(name)

    def dsn(self, database: str) -> str:
        return f"postgresql://tsls@/{database}?host={self.socket_dir}&port={self.port}"

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log")) as f:
                return f.read()
        except OSError:
            return ""

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def started_cluster() -> Cluster:
    """A running cluster in a directory of its own (the test is skipped without PostgreSQL's server
    binaries); if it does not start, its log is printed and it is removed."""
    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql "
                    "(.ci/run does)")
    cluster = Cluster(bindir)
    try:
        cluster.init()
    except BaseException:
        print(cluster.log())
        cluster.remove()
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL server for the whole run (initdb costs a second or two)."""
    cluster = started_cluster()
    yield cluster
    cluster.remove()


@pytest.fixture
def pg(pg_cluster, monkeypatch):
    """A fresh database on the session's cluster: its DSN. The tsls role's password is given as
    libpq reads it from the environment (PGPASSWORD), as a daemon would get it."""
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    return pg_cluster.new_database()


@pytest.fixture
def pg_own_cluster(monkeypatch):
    """A cluster of the test's own, for tests that restart or stop PostgreSQL."""
    cluster = started_cluster()
    try:
        monkeypatch.setenv("PGPASSWORD", cluster.password)
        yield cluster
    finally:
        cluster.remove()


class OnPostgres:
    """Mixed into a test daemon (tests.harness.Daemon or a subclass): its ledger in the PostgreSQL
    database ``dsn``, its administrator credential in a file beside the test's other files."""

    def __init__(self, dsn, tmp_path, *args, **kwargs):
        super().__init__(tmp_path, *args, **kwargs)
        self.path = dsn
        self.credential_path = str(tmp_path / "admin.secret")

    def service_options(self) -> dict:
        return {**super().service_options(), "credential_path": self.credential_path}
