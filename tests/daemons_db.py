"""Real Debian directory and database daemons for the STARTTLS tests: slapd (LDAP
StartTLS), PostgreSQL 15 (SSLRequest) and MariaDB (the CLIENT_SSL capability).

Each fixture starts its daemon from the Debian package's binary, never as a system
service and never with the system's config or data directories: a fresh folder from
`daemons.workdir` holds its config, data, socket, pid file and log; it listens on its own
loopback address on the protocol's usual port and serves a trustme certificate for its
name issued by the session `ca`. At teardown the daemon is asked to stop (and killed,
with anything left in its process group, if it does not within STOP_TIMEOUT), a daemon
that had to be killed or had died fails the teardown, and its folder is removed.

    slapd                127.25.2.1:389   ldap.test    slapd.conf, no database at all
    postgres             127.25.2.2:5432  db.test      initdb + postgres -c ssl=on ...
    mariadb              127.25.2.3:3306  mysql.test   mariadb-install-db + mariadbd
    slapd_without_tls    127.25.2.1:1389  ldap.test    no TLS* lines: StartTLS refused
    postgres_without_ssl 127.25.2.2:5433  db.test      ssl=off: the SSLRequest gets 'N'
    mariadb_without_ssl  127.25.2.3:3307  mysql.test   --skip-ssl: no CLIENT_SSL offered

PostgreSQL refuses to run as root, so when the tests run as root initdb and postgres run
as the `postgres` user the package creates (its folder and key file are chowned to it);
run as anyone else they run as that user. slapd needs root for port 389.

A test module uses them by naming them (`slapd = daemons_db.slapd`) and asking for the
fixture; each yields a `DbDaemon`: the `Daemon` and the leaf certificate it serves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

import daemons
from daemons import Daemon

SLAPD = "/usr/sbin/slapd"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
INITDB = str(PG_BIN / "initdb")
POSTGRES = str(PG_BIN / "postgres")
MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "mariadb-install-db"

LDAP_HOST, PG_HOST, MYSQL_HOST = "127.25.2.1", "127.25.2.2", "127.25.2.3"

# How long a daemon gets to stop on its own signal before it (and its group) is killed.
STOP_TIMEOUT = 15.0

# Small, quick InnoDB: the same for mariadb-install-db's bootstrap and for the server.
# Native AIO off: io_uring and libaio are refused by some container seccomp profiles.
_INNODB = ("--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M",
           "--innodb-use-native-aio=0", "--innodb-data-file-path=ibdata1:4M:autoextend")


@dataclass(frozen=True)
class DbDaemon(Daemon):
    """A Daemon and the certificate it serves (its leaf PEM), None when it serves no TLS.
    (A subclass here, not a field of daemons.Daemon, which is shared.)"""

    leaf_pem: str | None = None

    @property
    def leaf_sha256(self) -> str | None:
        """The leaf's SHA-256 fingerprint, lowercase hex of the DER, as records carry it."""
        if self.leaf_pem is None:
            return None
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(self.leaf_pem)).hexdigest()


def _leaf_pem(chain: Path) -> str:
    """The first certificate of a chain PEM file."""
    text = chain.read_text("ascii")
    end = "-----END CERTIFICATE-----"
    return text[: text.index(end) + len(end)] + "\n"


def _stop(process: subprocess.Popen[bytes], how: signal.Signals) -> str | None:
    """Stop a daemon started in its own session: `how`, then SIGKILL for the whole
    process group if anything of it is still there after STOP_TIMEOUT. None when it
    stopped by itself, else what went wrong."""
    problem = None
    if process.poll() is not None:
        problem = f"it had exited (status {process.returncode}) before the tests were done"
    else:
        process.send_signal(how)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            problem = f"it did not stop within {STOP_TIMEOUT:.0f} s of {how.name}: killed"
    # The daemon was its group's leader (start_new_session): whatever of the group is left
    # (a postgres backend, a daemon that ignored `how`) goes now. ESRCH when none is.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
        problem = problem or f"processes of its group were left after {how.name}: killed"
    process.wait()
    return problem


@contextlib.contextmanager
def _running(command: Sequence[str], *, host: str, port: int, log: Path, cwd: Path,
             stop: signal.Signals = signal.SIGTERM, user: str | None = None
             ) -> Iterator[subprocess.Popen[bytes]]:
    """Start a foreground daemon (output to `log`), wait until it listens on host:port,
    and stop it when done; fail the test if it does not start, or does not stop cleanly."""
    daemons.port_free(host, port)
    with log.open("wb") as out:
        process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                   **_as(user))
    try:
        daemons.wait_listening(host, port, process=process, log=log)
        yield process
    finally:
        problem = _stop(process, stop)
    if problem is not None:
        detail = log.read_text(errors="replace")[-3000:]
        pytest.fail(f"{command[0]} on {host}:{port}: {problem}\n{detail}", pytrace=False)


def _as(user: str | None) -> dict[str, Any]:
    """subprocess keywords that run a command as `user` (None: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def _folder(prefix: str) -> Iterator[Path]:
    """A fresh daemons.workdir folder, removed afterwards whatever is in it."""
    path = daemons.workdir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- slapd ---------------------------------------------------------------------------------


@contextlib.contextmanager
def run_slapd(ca: trustme.CA | None, port: int) -> Iterator[DbDaemon]:
    """slapd with a slapd.conf and no database: the rootDSE and StartTLS are all it
    serves. Without `ca` it has no TLS* lines, and so refuses StartTLS."""
    daemons.require("slapd", SLAPD)
    if port < 1024:
        daemons.need_root(f"slapd on port {port}")
    name = "ldap.test"
    with _folder("slapd") as folder:
        lines = [f"pidfile {folder / 'slapd.pid'}", f"argsfile {folder / 'slapd.args'}"]
        leaf = None
        if ca is not None:
            chain, key = daemons.certificate(ca, name, folder)
            lines += [f"TLSCertificateFile {chain}", f"TLSCertificateKeyFile {key}"]
            leaf = _leaf_pem(chain)
        (folder / "slapd.conf").write_text("\n".join(lines) + "\n")
        # -d: stay in the foreground, logging connections (stats) to the log file. No -u/-g:
        # it stays root, for port 389.
        command = [SLAPD, "-h", f"ldap://{LDAP_HOST}:{port}/", "-f", str(folder / "slapd.conf"),
                   "-d", "stats"]
        with _running(command, host=LDAP_HOST, port=port, log=folder / "slapd.log",
                      cwd=folder):
            yield DbDaemon("ldap", LDAP_HOST, port, name, leaf)


@pytest.fixture(scope="module")
def slapd(ca: trustme.CA) -> Iterator[DbDaemon]:
    with run_slapd(ca, 389) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def slapd_without_tls() -> Iterator[DbDaemon]:
    with run_slapd(None, 1389) as daemon:
        yield daemon


# --- PostgreSQL ----------------------------------------------------------------------------


def _postgres_user() -> str | None:
    """Who runs initdb and postgres: `postgres` when we are root (postgres will not run
    as root), else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("no `postgres` user: it is created by the postgresql-common package "
                    "(apt-get install postgresql-15)", pytrace=False)
    return "postgres"


@contextlib.contextmanager
def run_postgres(ca: trustme.CA | None, port: int) -> Iterator[DbDaemon]:
    """initdb into a fresh folder, then postgres in the foreground with everything on its
    command line: ssl on with the certificate when `ca` is given, else ssl off."""
    daemons.require("postgresql-15", INITDB, POSTGRES)
    user = _postgres_user()
    name = "db.test"
    with _folder("postgres") as folder:
        home = folder / "pg"  # the daemon's own: data dir, socket, key, log
        home.mkdir(mode=0o700)
        settings = {"listen_addresses": PG_HOST, "port": str(port),
                    "unix_socket_directories": str(home), "ssl": "off", "fsync": "off",
                    "max_connections": "10", "shared_buffers": "16MB"}
        leaf = None
        if ca is not None:
            chain, key = daemons.certificate(ca, name, home)
            key.chmod(0o600)  # postgres: owned by its user, no access for group or others
            settings |= {"ssl": "on", "ssl_cert_file": str(chain), "ssl_key_file": str(key)}
            leaf = _leaf_pem(chain)
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (home, *home.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        data = home / "data"
        daemons.run([INITDB, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--locale=C", "--no-sync", "--no-instructions"], cwd=home, **_as(user))
        command = [POSTGRES, "-D", str(data)]
        for setting, value in settings.items():
            command += ["-c", f"{setting}={value}"]
        # SIGINT is postgres's fast shutdown (SIGTERM would wait for clients to leave).
        with _running(command, host=PG_HOST, port=port, log=home / "postgres.log", cwd=home,
                      stop=signal.SIGINT, user=user):
            yield DbDaemon("postgres", PG_HOST, port, name, leaf)


@pytest.fixture(scope="module")
def postgres(ca: trustme.CA) -> Iterator[DbDaemon]:
    with run_postgres(ca, 5432) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def postgres_without_ssl() -> Iterator[DbDaemon]:
    with run_postgres(None, 5433) as daemon:
        yield daemon


# --- MariaDB -------------------------------------------------------------------------------


@contextlib.contextmanager
def run_mariadb(ca: trustme.CA | None, port: int) -> Iterator[DbDaemon]:
    """mariadb-install-db into a fresh datadir, then mariadbd with --no-defaults (no
    /etc/mysql), --skip-grant-tables, TCP on its address only: with the certificate when
    `ca` is given, else --skip-ssl (CLIENT_SSL not offered)."""
    daemons.require("mariadb-server", MARIADBD, MARIADB_INSTALL_DB, "my_print_defaults")
    name = "mysql.test"
    me = pwd.getpwuid(os.geteuid()).pw_name  # mariadbd runs as root only given --user=root
    with _folder("mariadb") as folder:
        data = folder / "data"
        daemons.run([MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={data}", f"--user={me}",
                     "--auth-root-authentication-method=normal", "--skip-test-db",
                     "--skip-name-resolve", *_INNODB], cwd=folder)
        tls = ["--skip-ssl"]
        leaf = None
        if ca is not None:
            chain, key = daemons.certificate(ca, name, folder)
            tls = [f"--ssl-cert={chain}", f"--ssl-key={key}"]
            leaf = _leaf_pem(chain)
        command = [MARIADBD, "--no-defaults", f"--datadir={data}", f"--user={me}",
                   f"--socket={folder / 'mysqld.sock'}", f"--pid-file={folder / 'mysqld.pid'}",
                   f"--tmpdir={folder}", f"--bind-address={MYSQL_HOST}", f"--port={port}",
                   "--skip-grant-tables", "--skip-name-resolve", "--skip-log-bin",
                   "--max-connections=20", *_INNODB, *tls]
        with _running(command, host=MYSQL_HOST, port=port, log=folder / "mariadbd.log",
                      cwd=folder):
            yield DbDaemon("mysql", MYSQL_HOST, port, name, leaf)


@pytest.fixture(scope="module")
def mariadb(ca: trustme.CA) -> Iterator[DbDaemon]:
    with run_mariadb(ca, 3306) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def mariadb_without_ssl() -> Iterator[DbDaemon]:
    with run_mariadb(None, 3307) as daemon:
        yield daemon
