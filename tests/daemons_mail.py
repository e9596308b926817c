"""Mail, FTP and XMPP daemons for the STARTTLS tests: postfix, dovecot, vsftpd, prosody.

Each fixture (module scope) starts the Debian package's own daemon from a fresh folder
(daemons.workdir) holding its whole config, its data and its log, with a trustme
certificate for its name issued by the session `ca`, on its own loopback address:

    postfix  127.25.1.1  smtp 25, smtp 587 (submission)  mail.test   SMTP STARTTLS
    dovecot  127.25.1.2  imap 143, pop3 110              imap.test   STARTTLS / STLS
    vsftpd   127.25.1.3  ftp 21                          ftp.test    AUTH TLS
    prosody  127.25.1.4  xmpp 5222 (c2s)                 xmpp.test   <starttls/>

Never a system service and never the system config (/etc/postfix, /etc/dovecot, ...):
only the packages' programs, the users their installation created (postfix, postdrop;
dovecot, dovenull; nobody), and postfix's lists of its own files in /etc/postfix
(postfix-files, dynamicmaps.cf: package data, not configuration). Start-up waits until
the ports accept (failing the test with the daemon's log otherwise); teardown stops the
daemon, then makes sure no process of it is left (SIGTERM, SIGKILL for stragglers), then
removes its folder. Each is started as
root, since the ports are below 1024: postfix, dovecot and vsftpd then drop privileges as
in production; prosody stays root (run_as_root).

A test module uses them by naming them (`postfix = daemons_mail.postfix`) and asking
for the fixture; each yields a `Served`: its `Daemon`s and the certificate chain served.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from daemons import (
    Daemon,
    certificate,
    need_root,
    port_free,
    require,
    wait_listening,
    workdir,
)

POSTFIX = "/usr/sbin/postfix"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
DOVECOT = "/usr/sbin/dovecot"
DOVECOT_LOGINS = ("/usr/lib/dovecot/imap-login", "/usr/lib/dovecot/pop3-login")
VSFTPD = "/usr/sbin/vsftpd"
PROSODY = "/usr/bin/prosody"

STARTUP = 20.0  # seconds a daemon gets to listen (they take well under one)
GRACE = 10.0  # seconds a daemon gets to stop (and stop its children) on SIGTERM
LEFTOVERS = 3.0  # seconds its stopped processes get to go before SIGTERM, then SIGKILL


@dataclass(frozen=True)
class Served:
    """One running daemon: its STARTTLS services, and the certificate chain (leaf first)
    that every one of them presents."""

    daemons: tuple[Daemon, ...]
    chain: Path
    log: Path

    def on(self, port: int) -> Daemon:
        """The service on `port`."""
        (daemon,) = (d for d in self.daemons if d.port == port)
        return daemon

    def tail(self, size: int = 2000) -> str:
        """The end of the daemon's log, to show why it refused or failed."""
        return _tail(self.log, size)

    def leaf(self) -> x509.Certificate:
        """The certificate the daemon is configured to present (its chain's first)."""
        return x509.load_pem_x509_certificates(self.chain.read_bytes())[0]


# --- processes ----------------------------------------------------------------------------


def _spawn(command: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """A daemon kept in the foreground, leading a process group (and session) of its
    own, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=log.parent,
                                start_new_session=True)


def _alive(group: int) -> list[int]:
    """The processes of process group `group`, zombies (already gone) aside."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        state, _ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
        if state != "Z" and int(pgrp) == group:
            members.append(int(stat.parent.name))
    return members


def _wait_gone(group: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(group):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _end_group(group: int, name: str) -> None:
    """Make sure nothing of process group `group` is left once its daemon has stopped:
    what is still there after a moment gets SIGTERM, then SIGKILL (a connection's process,
    say). Fails the test when even that does not help."""
    if _wait_gone(group, LEFTOVERS):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        if _wait_gone(group, 5.0):
            return
    pytest.fail(f"{name}: processes {_alive(group)} would not exit", pytrace=False)


def _stop(process: subprocess.Popen[bytes], name: str) -> None:
    """Stop a `_spawn`ed daemon the way its init script would (SIGTERM to the daemon,
    which stops its children), then anything of its group that is left."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    _end_group(process.pid, name)


def _ports_free(services: Sequence[Daemon]) -> None:
    for service in services:
        port_free(service.host, service.port)


def _tail(log: Path, size: int = 3000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else ""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


# --- postfix ------------------------------------------------------------------------------

POSTFIX_HOST = "127.25.1.1"
POSTFIX_NAME = "mail.test"

# Only what smtpd needs to answer EHLO and STARTTLS (and to take a message, should a test
# ever send one), every service outside a chroot. The listeners name their address:
# inet_interfaces only accepts addresses of an interface, and 127.25.1.1 is no interface's
# (loopback-only there binds nothing, no service being without an address).
_POSTFIX_MASTER_CF = """\
{host}:smtp inet  n       -       n       -       -       smtpd
{host}:587  inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {root}
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = {name}
mydomain = test
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_banner = $myhostname ESMTP
smtpd_tls_security_level = may
smtpd_tls_chain_files = {key}, {chain}
smtpd_tls_session_cache_database =
"""


def _postfix_master_pid(spool: Path) -> int | None:
    try:
        return int((spool / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def run_postfix(ca: trustme.CA) -> Iterator[Served]:
    """postfix (`postfix -c DIR/etc start`, stopped by `postfix -c DIR/etc stop`):
    smtpd on 127.25.1.1:25 and :587, STARTTLS offered on both, for mail.test."""
    require("postfix", POSTFIX, POSTFIX_MASTER)
    need_root("postfix")
    root = workdir("postfix")
    etc, spool, data = root / "etc", root / "spool", root / "data"
    log = root / "maillog"
    daemons = (Daemon("smtp", POSTFIX_HOST, 25, POSTFIX_NAME),
               Daemon("smtp", POSTFIX_HOST, 587, POSTFIX_NAME))
    try:
        _ports_free(daemons)
        for folder in (etc, spool, data):
            folder.mkdir(mode=0o755)
        shutil.chown(data, "postfix")  # master.lock; the queue's folders: postfix start
        chain, key = certificate(ca, POSTFIX_NAME, root)
        _write(etc / "master.cf", _POSTFIX_MASTER_CF.format(host=POSTFIX_HOST))
        main_cf = _write(etc / "main.cf", _POSTFIX_MAIN_CF.format(
            root=root, log=log, name=POSTFIX_NAME, key=key, chain=chain))
        # postfix stalls ~2 s (in 0.3 s naps) on a main.cf written a moment ago.
        then = time.time() - 60
        os.utime(main_cf, (then, then))
        # Its errors go to the maillog (stderr only on a terminal).
        done = subprocess.run([POSTFIX, "-c", str(etc), "start"], capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            pytest.fail(f"postfix start exited {done.returncode}\n{done.stdout}"
                        f"{done.stderr}\n{_tail(log)}", pytrace=False)
        for daemon in daemons:
            wait_listening(daemon.host, daemon.port, timeout=STARTUP, log=log)
        yield Served(daemons, chain, log)
    finally:
        try:
            master = _postfix_master_pid(spool)
            if master is not None:
                # Waits up to 5 s for the master (which stops its children), then kill -9.
                subprocess.run([POSTFIX, "-c", str(etc), "stop"], capture_output=True,
                               timeout=60, check=False)
                _end_group(master, "postfix")  # the master leads its own session
        finally:
            shutil.rmtree(root)


# --- dovecot ------------------------------------------------------------------------------

DOVECOT_HOST = "127.25.1.2"
DOVECOT_NAME = "imap.test"

# No includes: nothing of /etc/dovecot. Nobody can log in (an empty passwd-file); the
# implicit-TLS listeners (993, 995) are off.
_DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = certscan-dovecot
log_path = {log}
protocols = imap pop3
listen = {host}
ssl = yes
ssl_cert = <{chain}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = 143
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 110
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


@contextlib.contextmanager
def run_dovecot(ca: trustme.CA) -> Iterator[Served]:
    """dovecot (`dovecot -F -c DIR/dovecot.conf`, stopped by SIGTERM): IMAP on
    127.25.1.2:143 (STARTTLS) and POP3 on :110 (STLS), for imap.test."""
    require("dovecot-imapd dovecot-pop3d", DOVECOT, *DOVECOT_LOGINS)
    need_root("dovecot")
    root = workdir("dovecot")
    log = root / "dovecot.log"
    daemons = (Daemon("imap", DOVECOT_HOST, 143, DOVECOT_NAME),
               Daemon("pop3", DOVECOT_HOST, 110, DOVECOT_NAME))
    process = None
    try:
        _ports_free(daemons)
        chain, key = certificate(ca, DOVECOT_NAME, root)
        _write(root / "users", "")
        conf = _write(root / "dovecot.conf", _DOVECOT_CONF.format(
            root=root, log=log, host=DOVECOT_HOST, chain=chain, key=key))
        process = _spawn([DOVECOT, "-F", "-c", str(conf)], log)
        for daemon in daemons:
            wait_listening(daemon.host, daemon.port, process=process, timeout=STARTUP,
                           log=log)
        yield Served(daemons, chain, log)
    finally:
        try:
            if process is not None:
                _stop(process, "dovecot")
        finally:
            shutil.rmtree(root)


# --- vsftpd -------------------------------------------------------------------------------

VSFTPD_HOST = "127.25.1.3"
VSFTPD_NAME = "ftp.test"

# local_enable only because vsftpd refuses connections when no kind of login is enabled
# (nobody logs in). ssl_ciphers: the built-in default is DES-CBC3-SHA alone, which OpenSSL 3
# refuses, so that only TLS 1.3 would work. A client certificate is requested, as vsftpd
# does by default (ssl_request_cert), and not required.
_VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={host}
listen_port=21
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=NO
seccomp_sandbox=NO
secure_chroot_dir={root}/empty
ssl_enable=YES
rsa_cert_file={chain}
rsa_private_key_file={key}
ssl_ciphers=HIGH
xferlog_enable=NO
dual_log_enable=YES
vsftpd_log_file={log}
log_ftp_protocol=YES
"""


@contextlib.contextmanager
def run_vsftpd(ca: trustme.CA) -> Iterator[Served]:
    """vsftpd (`vsftpd DIR/vsftpd.conf` in the foreground, stopped by SIGTERM): FTP on
    127.25.1.3:21 with AUTH TLS, for ftp.test."""
    require("vsftpd", VSFTPD)
    need_root("vsftpd")
    root = workdir("vsftpd")
    log = root / "vsftpd.log"
    daemon = Daemon("ftp", VSFTPD_HOST, 21, VSFTPD_NAME)
    process = None
    try:
        _ports_free([daemon])
        (root / "empty").mkdir(mode=0o755)  # the connections' chroot: root's, read-only
        chain, key = certificate(ca, VSFTPD_NAME, root)
        conf = _write(root / "vsftpd.conf", _VSFTPD_CONF.format(
            host=VSFTPD_HOST, root=root, chain=chain, key=key, log=log))
        process = _spawn([VSFTPD, str(conf)], log)
        wait_listening(daemon.host, daemon.port, process=process, timeout=STARTUP, log=log)
        yield Served((daemon,), chain, log)
    finally:
        try:
            if process is not None:
                _stop(process, "vsftpd")
        finally:
            shutil.rmtree(root)


# --- prosody ------------------------------------------------------------------------------

PROSODY_HOST = "127.25.1.4"
PROSODY_NAME = "xmpp.test"

# Client-to-server only (no s2s, no direct TLS, no HTTP), encryption required.
_PROSODY_CONF = """\
run_as_root = true
data_path = {data}
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = {log} }} }}
interfaces = {{ {host} }}
c2s_ports = {{ 5222 }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
modules_enabled = {{ "tls", "saslauth", "disco" }}
modules_disabled = {{ "s2s", "offline" }}
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
certificates = {certs}
VirtualHost {name}
    ssl = {{ certificate = {chain}, key = {key} }}
"""


def _lua(value: object) -> str:
    """A Lua string literal (for the ASCII paths and names here JSON's is one)."""
    return json.dumps(str(value), ensure_ascii=True)


@contextlib.contextmanager
def run_prosody(ca: trustme.CA) -> Iterator[Served]:
    """prosody (`prosody -F --config DIR/prosody.cfg.lua`, stopped by SIGTERM): XMPP
    client port 127.25.1.4:5222 with STARTTLS required, VirtualHost xmpp.test. As root,
    which prosody refuses unless run_as_root is set."""
    require("prosody", PROSODY)
    need_root("prosody")
    root = workdir("prosody")
    log = root / "prosody.log"
    certs, data = root / "certs", root / "data"
    daemon = Daemon("xmpp", PROSODY_HOST, 5222, PROSODY_NAME)
    process = None
    try:
        _ports_free([daemon])
        certs.mkdir(mode=0o755)
        data.mkdir(mode=0o750)
        chain, key = certificate(ca, PROSODY_NAME, certs)
        conf = _write(root / "prosody.cfg.lua", _PROSODY_CONF.format(
            data=_lua(data), log=_lua(log), host=_lua(PROSODY_HOST), certs=_lua(certs),
            name=_lua(PROSODY_NAME), chain=_lua(chain), key=_lua(key)))
        process = _spawn([PROSODY, "-F", "--config", str(conf)], log)
        wait_listening(daemon.host, daemon.port, process=process, timeout=STARTUP, log=log)
        yield Served((daemon,), chain, log)
    finally:
        try:
            if process is not None:
                _stop(process, "prosody")
        finally:
            shutil.rmtree(root)


# --- the fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postfix(ca: trustme.CA) -> Iterator[Served]:
    with run_postfix(ca) as served:
        yield served


@pytest.fixture(scope="module")
def dovecot(ca: trustme.CA) -> Iterator[Served]:
    with run_dovecot(ca) as served:
        yield served


@pytest.fixture(scope="module")
def vsftpd(ca: trustme.CA) -> Iterator[Served]:
    with run_vsftpd(ca) as served:
        yield served


@pytest.fixture(scope="module")
def prosody(ca: trustme.CA) -> Iterator[Served]:
    with run_prosody(ca) as served:
        yield served


# --- by hand --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """`python tests/daemons_mail.py postfix|dovecot|vsftpd|prosody` (as root): run one
    daemon as the tests do, print its CA file and target lines, stop it on Ctrl-C."""
    import argparse
    import tempfile

    runners = {"postfix": run_postfix, "dovecot": run_dovecot, "vsftpd": run_vsftpd,
               "prosody": run_prosody}
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("daemon", choices=sorted(runners))
    args = parser.parse_args(argv)
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as folder, runners[args.daemon](ca) as served:
        bundle = Path(folder) / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        print(f"CA: {bundle}")
        for service in served.daemons:
            print(f"target: {service.target}")
        print("Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
