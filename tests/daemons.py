"""Real Debian daemons for the STARTTLS tests: the common parts.

Each daemon is started by the test setup (a module-scoped fixture in daemons_mail.py or
daemons_db.py), never as a system service: its own config and data directory under a
fresh temporary folder, its own 127.25.x.y address, a trustme certificate for its name,
and it is stopped (and its folder removed) when the module's tests are done.

Where a daemon's program is not installed the tests that need it skip, saying which
package to install; with CERTSCAN_REQUIRE_DAEMONS=1 (set by .ci/run, which installs them)
a missing daemon fails instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass(frozen=True)
class Daemon:
    """One running daemon that speaks `protocol` with STARTTLS on host:port for `name`."""

    protocol: str  # the target scheme: smtp, imap, pop3, ftp, ldap, postgres, mysql, xmpp
    host: str
    port: int
    name: str  # the name its certificate is for (sent as SNI, checked by the verdict)

    @property
    def target(self) -> str:
        """The target line that scans it."""
        return f"{self.protocol}://{self.host}:{self.port} {self.name}"


def require(package: str, *programs: str) -> None:
    """Skip (or, under CERTSCAN_REQUIRE_DAEMONS=1, fail) unless every program exists.
    A program is a name on PATH or an absolute path."""
    missing = [p for p in programs if not (os.path.isabs(p) and os.access(p, os.X_OK))
               and shutil.which(p) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (apt-get install {package})"
    if os.environ.get("CERTSCAN_REQUIRE_DAEMONS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def need_root(what: str) -> None:
    """Skip (or, under CERTSCAN_REQUIRE_DAEMONS=1, fail) unless root: the daemons bind
    ports below 1024 and switch to their own users."""
    if os.geteuid() == 0:
        return
    message = f"{what} needs root (ports below 1024, its own users)"
    if os.environ.get("CERTSCAN_REQUIRE_DAEMONS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def port_free(host: str, port: int) -> None:
    """Fail now if something already answers on host:port: most likely a daemon left
    running by an earlier, killed run, which the new one could not displace and whose
    certificate is from another CA."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        pytest.fail(f"{host}:{port} is taken already (by a daemon left from an earlier "
                    "run? see ps)", pytrace=False)


def workdir(prefix: str) -> Path:
    """A fresh folder every user can enter (daemons that drop privileges or refuse to run
    as root read their files from here): pytest's own tmp folders are root-only."""
    path = Path(tempfile.mkdtemp(prefix=f"certscan-{prefix}-"))
    path.chmod(0o755)
    return path


def certificate(ca: trustme.CA, name: str, directory: Path) -> tuple[Path, Path]:
    """A certificate for `name` issued by `ca`: (chain PEM, key PEM), readable by all."""
    leaf = ca.issue_cert(name)
    chain = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    chain.chmod(0o644)
    key.chmod(0o644)
    return chain, key


def wait_listening(host: str, port: int, *, process: subprocess.Popen[bytes] | None = None,
                   timeout: float = 30.0, log: Path | None = None) -> None:
    """Return once something accepts TCP connections on host:port; fail the test (with
    the daemon's log) if it does not within `timeout` or `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    detail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"nothing listening on {host}:{port}\n{detail}", pytrace=False)


def run(command: Sequence[str], *, timeout: float = 60.0, **kwargs: object) -> str:
    """Run a set-up command; fail the test with its output when it fails."""
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                          check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}", pytrace=False)
    return str(done.stdout)
