"""The plaintext dances before a STARTTLS upgrade: pure state machines, bytes in, bytes out.

No sockets, no clock, no asyncio, in the manner of h11: the probe (probe.py) owns the
connection and the deadline, and drives a `Dance` with whatever the server sent, in
whatever pieces it arrived, sending back what the dance returns. When `upgraded` turns
True the server has said "go ahead": the next bytes on the wire are our ClientHello.

    dance = dance_for("smtp", "mail.example.org")
    send(dance.start())                 # b"" for protocols where the server speaks first
    while not dance.upgraded:
        send(dance.receive(recv()))     # raises UpgradeError when the server will not
                                        # (recv() returning b"": dance.receive_eof())

The call that turns `upgraded` True may return bytes to send before the ClientHello:
MySQL's SSLRequest (its go-ahead is the greeting itself; the server answers nothing).
The eight dances are in DANCES, by protocol name, each with its usual port.

Every refusal, missing offer, unexpected reply or close is an `UpgradeError` whose
message says what the server said (escaped and shortened by `shown`); the probe turns it
into error type `starttls` at stage `starttls`. A dance never waits for ever on its own:
a reply longer than `MAX_DIALOGUE` bytes is an error too (the deadline is the probe's).
"""

from __future__ import annotations

import abc
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Generic, NamedTuple, TypeVar

# The XML modules are XMPPDance's alone, imported where it uses them: every scan imports
# this module, few speak XMPP (and xml.sax.saxutils brings in urllib.request and email).
if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

# Bytes a server may send before the upgrade: greetings and capability lists are a few
# hundred bytes; past this the server is not speaking the protocol (or is a tarpit).
MAX_DIALOGUE = 64 << 10

# How much of a server's reply an error message quotes.
_SHOWN = 200

# The longest line a line-based server may send (before its LF): no unbounded buffering.
_MAX_LINE = 8 << 10


class UpgradeError(Exception):
    """The server did not let the upgrade happen. The message is for the record as is."""


def shown(data: bytes, limit: int = _SHOWN) -> str:
    """A server's bytes for an error message: printable ASCII as is, everything else
    escaped (\\r, \\n, \\xNN), cut to `limit` characters with "..." when longer."""
    text = data.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text if len(text) <= limit else text[:limit] + "..."


class Dance(abc.ABC):
    """One client's side of one protocol's upgrade. Subclasses are the protocols."""

    protocol: ClassVar[str]  # the scheme name: "smtp", "imap", ...
    default_port: ClassVar[int]

    def __init__(self, server_name: str) -> None:
        """server_name: the name the upgrade is for (XMPP's `to=`); the SNI that follows
        is the probe's business."""
        self.server_name = server_name

    @abc.abstractmethod
    def start(self) -> bytes:
        """What the client sends as soon as the connection is up (b"" if the server
        speaks first)."""

    @abc.abstractmethod
    def receive(self, data: bytes) -> bytes:
        """Take the server's next bytes (any split: one byte, or several replies at once);
        return what to send now (b"" for nothing yet). UpgradeError when the server
        refuses, does not offer the upgrade, or says something else; also when bytes
        follow the go-ahead in the same read (nothing may come between it and the
        handshake), or when more than MAX_DIALOGUE bytes came before it."""

    @abc.abstractmethod
    def receive_eof(self) -> None:
        """The server closed the connection before the go-ahead: always UpgradeError,
        saying where in the dance and what the server said last."""

    @property
    @abc.abstractmethod
    def upgraded(self) -> bool:
        """True once the server said go ahead: start TLS now."""


def _q(data: bytes) -> str:
    """`data` in quotes for a message, without the line end that closes a reply."""
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    return f'"{shown(data)}"'


def _first_word(text: bytes) -> bytes:
    """The first word of `text`, in upper case (b"" for none): a keyword, a status."""
    words = text.split(None, 1)
    return words[0].upper() if words else b""


_Unit = TypeVar("_Unit")


class _Dialogue(Dance, Generic[_Unit]):
    """What the eight dances share: the bytes received but not yet read, the byte budget,
    the step the dance is at, the go-ahead, and the messages. A subclass reads units (a
    line, a reply, a packet) with `_read`; each goes to the handler of the current step,
    which returns what to send and moves on with `_then` or `_go_ahead`."""

    _label: ClassVar[str]  # how messages name the protocol: "SMTP", "PostgreSQL"

    def __init__(self, server_name: str, awaited: str, expect: Callable[[_Unit], bytes]) -> None:
        super().__init__(server_name)
        self._awaited = awaited  # what the server is to say next: "greeting", "reply to EHLO"
        self._expect = expect  # the handler for it
        self._buffer = bytearray()  # received, not yet read
        self._reply = bytearray()  # read, of a reply not yet whole
        self._last = b""  # the last whole reply
        self._received = 0
        self._done = False

    def start(self) -> bytes:
        return b""

    @property
    def upgraded(self) -> bool:
        return self._done

    def receive(self, data: bytes) -> bytes:
        if self._done:
            raise RuntimeError(f"{self._label} dance: receive() after the go-ahead")
        self._received += len(data)
        self._buffer += data
        if self._received > MAX_DIALOGUE:
            raise self._error(f"sent more than {MAX_DIALOGUE} bytes without a go-ahead, "
                              f"awaiting its {self._awaited}: {_q(self._last_words())}")
        sent = bytearray()
        while not self._done and (unit := self._read()) is not None:
            sent += self._expect(unit)
        if self._done and self._buffer:
            count = f"{len(self._buffer)} byte" + "s" * (len(self._buffer) > 1)
            raise self._error(f"sent {count} after its go-ahead, before the TLS handshake: "
                              f"{_q(bytes(self._buffer))}")
        return bytes(sent)

    def receive_eof(self) -> None:
        words = self._last_words()
        said = f"; it last sent {_q(words)}" if words else ", having sent nothing"
        raise self._error(f"closed the connection before its {self._awaited}{said}")

    @abc.abstractmethod
    def _read(self) -> _Unit | None:
        """The next whole unit from the buffer, or None until more bytes come."""

    def _then(self, awaited: str, expect: Callable[[_Unit], bytes], send: bytes = b"") -> bytes:
        """Move on to the next step; returns `send`, what the client says to get there."""
        self._awaited, self._expect = awaited, expect
        return send

    def _go_ahead(self, send: bytes = b"") -> bytes:
        self._done = True
        return send

    def _take(self, size: int) -> bytes:
        """Read `size` bytes of the buffer, as part of the reply in progress."""
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._reply += data
        return data

    def _replied(self) -> bytes:
        """The reply just read whole, as received; the next one starts."""
        self._last = bytes(self._reply)
        self._reply.clear()
        return self._last

    def _last_words(self) -> bytes:
        """What the server said last: the reply in progress, else the last whole one."""
        return bytes(self._reply + self._buffer) or self._last

    def _line(self) -> bytes | None:
        """The next line without its CRLF (or bare LF), or None until it is whole."""
        end = self._buffer.find(b"\n")
        if end > _MAX_LINE or (end < 0 and len(self._buffer) > _MAX_LINE):
            raise self._error(f"sent a line longer than {_MAX_LINE} bytes, awaiting its "
                              f"{self._awaited}: {_q(bytes(self._buffer))}")
        if end < 0:
            return None
        line = self._take(end + 1)
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    def _error(self, what: str) -> UpgradeError:
        return UpgradeError(f"{self._label} server {what}")

    def _garbled(self, said: bytes, why: str = "") -> UpgradeError:
        """The server said something that is not the protocol at all."""
        return UpgradeError(f"{self._label} server's {self._awaited} is not {self._label}"
                            f"{why}: {_q(said)}")


class _Reply(NamedTuple):
    """An SMTP or FTP reply."""

    code: int
    lines: tuple[bytes, ...]  # whole, code included, without line ends
    raw: bytes  # as received


_REPLY_LINE = re.compile(rb"\d{3}(?:[ -]|$)")


class _NumberedDialogue(_Dialogue[_Reply]):
    """SMTP's and FTP's replies: `NNN text`, or `NNN-text` lines up to a `NNN text` line
    with the same code (FTP lets the lines between say anything). A 421, at any step, is
    the server closing the connection."""

    def __init__(self, server_name: str, awaited: str, expect: Callable[[_Reply], bytes]) -> None:
        super().__init__(server_name, awaited, expect)
        self._lines: list[bytes] = []

    def _read(self) -> _Reply | None:
        while (line := self._line()) is not None:
            if not self._lines and not _REPLY_LINE.match(line):
                raise self._garbled(self._replied())
            self._lines.append(line)
            code = self._lines[0][:3]
            if self._lines[0][3:4] != b"-" or (
                    len(self._lines) > 1 and line[:3] == code and line[3:4] in (b" ", b"")):
                lines, self._lines = tuple(self._lines), []
                reply = _Reply(int(code), lines, self._replied())
                if reply.code == 421:  # in both: not available, closing the connection
                    raise self._error(f"closed the connection in its {self._awaited}: "
                                      f"{_q(reply.raw)}")
                return reply
        return None


class SMTPDance(_NumberedDialogue):
    """SMTP (RFC 3207): greeting 220, EHLO, STARTTLS if offered, 220."""

    protocol = "smtp"
    default_port = 25
    _label = "SMTP"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name, "greeting", self._greeting)

    def _greeting(self, reply: _Reply) -> bytes:
        if reply.code != 220:
            raise self._error(f"did not greet with 220: {_q(reply.raw)}")
        return self._then("reply to EHLO", self._ehlo, b"EHLO certscan.invalid\r\n")

    def _ehlo(self, reply: _Reply) -> bytes:
        if reply.code != 250:
            raise self._error(f"refused EHLO: {_q(reply.raw)}")
        if all(_first_word(line[4:]) != b"STARTTLS" for line in reply.lines[1:]):
            raise self._error(f"does not offer STARTTLS: {_q(reply.raw)}")
        return self._then("reply to STARTTLS", self._starttls, b"STARTTLS\r\n")

    def _starttls(self, reply: _Reply) -> bytes:
        if reply.code != 220:
            raise self._error(f"refused STARTTLS: {_q(reply.raw)}")
        return self._go_ahead()


class FTPDance(_NumberedDialogue):
    """FTP (RFC 4217): greeting 220 (maybe after a 120), AUTH TLS, 234."""

    protocol = "ftp"
    default_port = 21
    _label = "FTP"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name, "greeting", self._greeting)

    def _greeting(self, reply: _Reply) -> bytes:
        if reply.code == 120:  # "ready in nnn minutes": the 220 follows
            return b""
        if reply.code != 220:
            raise self._error(f"did not greet with 220: {_q(reply.raw)}")
        return self._then("reply to AUTH TLS", self._auth, b"AUTH TLS\r\n")

    def _auth(self, reply: _Reply) -> bytes:
        if reply.code != 234:
            raise self._error(f"refused AUTH TLS: {_q(reply.raw)}")
        return self._go_ahead()


def _imap(line: bytes) -> tuple[bytes, bytes, bytes]:
    """An IMAP response line's tag, its status (upper case) and the rest."""
    tag, status, rest = [*line.split(b" ", 2), b"", b""][:3]
    return tag, status.upper(), rest


def _capabilities(text: bytes) -> list[bytes] | None:
    """The capabilities in a `[CAPABILITY ...]` response code opening `text`, if any."""
    if not text.startswith(b"["):
        return None
    words = text[1:].split(b"]", 1)[0].upper().split()
    return words[1:] if words[:1] == [b"CAPABILITY"] else None


class IMAPDance(_Dialogue[bytes]):
    """IMAP (RFC 3501): greeting * OK, capabilities (from it, or CAPABILITY), STARTTLS."""

    protocol = "imap"
    default_port = 143
    _label = "IMAP"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name, "greeting", self._greeting)
        self._offered: list[bytes] = []

    def _read(self) -> bytes | None:
        return self._line()

    def _greeting(self, line: bytes) -> bytes:
        tag, status, rest = _imap(line)
        self._replied()
        if tag != b"*" or status not in (b"OK", b"PREAUTH"):
            self._bye(tag, status, line)
            raise self._error(f"did not greet with * OK: {_q(line)}")
        offered = _capabilities(rest)
        if offered is None:
            return self._then("reply to CAPABILITY", self._capability, b"a1 CAPABILITY\r\n")
        return self._starttls_if_offered(offered, line)

    def _capability(self, line: bytes) -> bytes:
        tag, status, rest = _imap(line)
        if tag == b"*":
            self._bye(tag, status, line)
            if status == b"CAPABILITY":
                self._offered += rest.upper().split()
            return b""
        if tag != b"a1":
            raise self._garbled(self._replied())
        reply = self._replied()
        if status != b"OK":
            raise self._error(f"refused CAPABILITY: {_q(reply)}")
        return self._starttls_if_offered(self._offered + (_capabilities(rest) or []), reply)

    def _starttls_if_offered(self, offered: list[bytes], said: bytes) -> bytes:
        if b"STARTTLS" not in offered:
            raise self._error(f"does not offer STARTTLS: {_q(said)}")
        return self._then("reply to STARTTLS", self._starttls, b"a2 STARTTLS\r\n")

    def _starttls(self, line: bytes) -> bytes:
        tag, status, _ = _imap(line)
        if tag == b"*":
            self._bye(tag, status, line)
            return b""
        if tag != b"a2":
            raise self._garbled(self._replied())
        reply = self._replied()
        if status != b"OK":
            raise self._error(f"refused STARTTLS: {_q(reply)}")
        return self._go_ahead()

    def _bye(self, tag: bytes, status: bytes, line: bytes) -> None:
        if tag == b"*" and status == b"BYE":
            raise self._error(f"said BYE instead of its {self._awaited}: {_q(line)}")


class POP3Dance(_Dialogue[bytes]):
    """POP3 (RFC 2595): greeting +OK, CAPA (STLS listed, or CAPA unknown), STLS, +OK."""

    protocol = "pop3"
    default_port = 110
    _label = "POP3"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name, "greeting", self._greeting)
        self._offered = False

    def _read(self) -> bytes | None:
        return self._line()

    def _greeting(self, line: bytes) -> bytes:
        reply = self._replied()
        if _first_word(line) != b"+OK":
            raise self._error(f"did not greet with +OK: {_q(reply)}")
        return self._then("reply to CAPA", self._capa, b"CAPA\r\n")

    def _capa(self, line: bytes) -> bytes:
        status = _first_word(line)
        if status == b"-ERR":  # a server from before CAPA (RFC 2449) may still know STLS
            self._replied()
            return self._then("reply to STLS", self._stls, b"STLS\r\n")
        if status != b"+OK":
            raise self._garbled(self._replied())
        return self._then(self._awaited, self._listed)

    def _listed(self, line: bytes) -> bytes:
        if line != b".":
            self._offered |= _first_word(line) == b"STLS"
            return b""
        reply = self._replied()
        if not self._offered:
            raise self._error(f"does not offer STLS: {_q(reply)}")
        return self._then("reply to STLS", self._stls, b"STLS\r\n")

    def _stls(self, line: bytes) -> bytes:
        reply = self._replied()
        status = _first_word(line)
        if status == b"-ERR":
            raise self._error(f"refused STLS: {_q(reply)}")
        if status != b"+OK":
            raise self._garbled(reply)
        return self._go_ahead()


# LDAP (RFC 4511, 4513): BER with definite lengths.
_LDAP_START_TLS = b"1.3.6.1.4.1.1466.20037"
_LDAP_NOTICE_OF_DISCONNECTION = b"1.3.6.1.4.1.1466.20036"
# LDAPMessage { messageID 1, [APPLICATION 23] ExtendedRequest { [0] requestName } }
_LDAP_REQUEST = b"\x30\x1d\x02\x01\x01\x77\x18\x80\x16" + _LDAP_START_TLS
_LDAP_EXTENDED_RESPONSE = 0x78  # [APPLICATION 24], constructed
_LDAP_RESULTS = {
    0: "success", 1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded",
    4: "sizeLimitExceeded", 7: "authMethodNotSupported", 8: "strongerAuthRequired",
    10: "referral", 11: "adminLimitExceeded", 12: "unavailableCriticalExtension",
    13: "confidentialityRequired", 32: "noSuchObject", 48: "inappropriateAuthentication",
    49: "invalidCredentials", 50: "insufficientAccessRights", 51: "busy", 52: "unavailable",
    53: "unwillingToPerform", 80: "other",
}


def _ber(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int, int] | None:
    """(tag, start, stop) of the BER element at `pos`: its contents are data[start:stop].
    None when data[:end] ends before it does; ValueError when it cannot be read."""
    if pos + 2 > end:
        return None
    tag, length, start = data[pos], data[pos + 1], pos + 2
    if tag & 0x1F == 0x1F:
        raise ValueError("a multi-byte tag")
    if length & 0x80:  # long form: the low bits count the length bytes that follow
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError("an indefinite length" if size == 0 else "an absurd length")
        if start + size > end:
            return None
        length, start = int.from_bytes(data[start:start + size]), start + size
    if length > MAX_DIALOGUE:
        raise ValueError(f"an element of {length} bytes")
    return None if start + length > end else (tag, start, start + length)


def _ber_inside(data: bytes, parent: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """The elements that make up `parent`'s contents."""
    found, pos = [], parent[1]
    while pos < parent[2]:
        element = _ber(data, pos, parent[2])
        if element is None:
            raise ValueError("an element overruns its parent")
        found.append(element)
        pos = element[2]
    return found


class _LDAPResult(NamedTuple):
    message_id: int
    code: int
    diagnostic: bytes
    name: bytes  # responseName, b"" when absent


def _ldap_result(message: bytes) -> _LDAPResult:
    """The parts of an LDAPMessage holding an ExtendedResponse; ValueError for any other."""
    whole = _ber(message, 0, len(message))
    assert whole is not None
    parts = _ber_inside(message, whole)
    if len(parts) < 2 or parts[0][0] != 0x02 or parts[1][0] != _LDAP_EXTENDED_RESPONSE:
        raise ValueError("not an ExtendedResponse")
    fields = _ber_inside(message, parts[1])
    if [tag for tag, _, _ in fields[:3]] != [0x0A, 0x04, 0x04] or fields[0][1] == fields[0][2]:
        raise ValueError("not an LDAPResult")
    (_, id_start, id_stop), (_, code_start, code_stop), _, (_, diag_start, diag_stop) = (
        parts[0], *fields[:3])
    name = next((message[start:stop] for tag, start, stop in fields[3:] if tag == 0x8A), b"")
    return _LDAPResult(int.from_bytes(message[id_start:id_stop], signed=True),
                       int.from_bytes(message[code_start:code_stop], signed=True),
                       message[diag_start:diag_stop], name)


class LDAPDance(_Dialogue[bytes]):
    """LDAP (RFC 4511 section 4.14): the StartTLS extended operation, resultCode 0."""

    protocol = "ldap"
    default_port = 389
    _label = "LDAP"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name, "reply to StartTLS", self._answer)

    def start(self) -> bytes:
        return _LDAP_REQUEST

    def _read(self) -> bytes | None:
        if not self._buffer:
            return None
        if self._buffer[0] != 0x30:
            raise self._garbled(bytes(self._buffer), " (not an LDAPMessage)")
        try:
            whole = _ber(self._buffer, 0, len(self._buffer))
        except ValueError as exc:
            raise self._garbled(bytes(self._buffer), f" ({exc})") from None
        return None if whole is None else self._take(whole[2])

    def _answer(self, message: bytes) -> bytes:
        self._replied()
        try:
            result = _ldap_result(message)
        except ValueError as exc:
            raise self._garbled(message, f" ({exc})") from None
        code = f"{result.code} {_LDAP_RESULTS.get(result.code, '')}".rstrip()
        if result.message_id == 0:
            what = ("a notice of disconnection" if result.name == _LDAP_NOTICE_OF_DISCONNECTION
                    else f"an unsolicited notification {_q(result.name)}")
            raise self._error(f"sent {what}: {code}: {_q(result.diagnostic)}")
        if result.message_id != 1:
            raise self._garbled(message, f" (an answer to message {result.message_id})")
        if result.code != 0:
            raise self._error(f"refused StartTLS: {code}: {_q(result.diagnostic)}")
        return self._go_ahead()


# PostgreSQL: SSLRequest, a length and the code 1234.5679 as two int16s.
_POSTGRES_SSL_REQUEST = (8).to_bytes(4) + (80877103).to_bytes(4)


def _postgres_error(answer: bytes) -> bytes:
    """The words of an ErrorResponse: protocol 3 has typed fields (S severity, C SQLSTATE,
    M message), protocol 2 (a server that could not even fork) a line of text."""
    if answer[1]:
        return answer[1:].rstrip(b"\0").strip()
    fields = {field[:1]: field[1:] for field in answer[5:].split(b"\0") if field}
    severity = fields.get(b"V") or fields.get(b"S") or b"ERROR"
    return b"%s %s: %s" % (severity, fields.get(b"C", b"?"), fields.get(b"M", b""))


class PostgresDance(_Dialogue[bytes]):
    """PostgreSQL: the SSLRequest, answered with one byte, S for go ahead."""

    protocol = "postgres"
    default_port = 5432
    _label = "PostgreSQL"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name, "answer to the SSLRequest", self._answer)

    def start(self) -> bytes:
        return _POSTGRES_SSL_REQUEST

    def _read(self) -> bytes | None:
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] in b"SN":
            return self._take(1)
        if buffer[0] != ord("E"):
            raise self._garbled(bytes(buffer))
        if len(buffer) < 2:
            return None
        if buffer[1]:  # protocol 2: "E" and a NUL-terminated message
            end = buffer.find(b"\0")
            if end > _MAX_LINE or (end < 0 and len(buffer) > _MAX_LINE):
                raise self._garbled(bytes(buffer), f" (an error longer than {_MAX_LINE} bytes)")
            return None if end < 0 else self._take(end + 1)
        if len(buffer) < 5:
            return None
        length = int.from_bytes(buffer[1:5])
        if not 4 <= length <= _MAX_LINE:
            raise self._garbled(bytes(buffer), f" (an ErrorResponse of {length} bytes)")
        return None if len(buffer) <= length else self._take(1 + length)

    def _answer(self, answer: bytes) -> bytes:
        self._replied()
        if answer == b"S":
            return self._go_ahead()
        if answer == b"N":
            raise self._error(f"does not accept SSL: {_q(answer)}")
        raise self._error(f"answered the SSLRequest with an error: {_q(_postgres_error(answer))}")


# MySQL and MariaDB: the client's capability flags.
_CLIENT_LONG_PASSWORD = 0x0001
_CLIENT_PROTOCOL_41 = 0x0200
_CLIENT_SSL = 0x0800
_CLIENT_SECURE_CONNECTION = 0x8000
# SSLRequest, packet 1: flags, max packet size (16 MiB), charset utf8_general_ci, 23 zeros.
_MYSQL_SSL_REQUEST = b"\x20\x00\x00\x01" + b"".join((
    (_CLIENT_SSL | _CLIENT_PROTOCOL_41 | _CLIENT_SECURE_CONNECTION | _CLIENT_LONG_PASSWORD)
    .to_bytes(4, "little"),
    (1 << 24).to_bytes(4, "little"),
    b"\x21",
    bytes(23),
))


class MySQLDance(_Dialogue[bytes]):
    """MySQL and MariaDB: the server's initial handshake (CLIENT_SSL set), then the
    client's SSLRequest packet, after which TLS starts at once: the go-ahead is the
    greeting, and `receive` returns the SSLRequest as `upgraded` turns True."""

    protocol = "mysql"
    default_port = 3306
    _label = "MySQL"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name, "greeting", self._greeting)

    def _read(self) -> bytes | None:
        """The payload of the next packet (3-byte length, sequence id, payload)."""
        if len(self._buffer) < 4:
            return None
        length = int.from_bytes(self._buffer[:3], "little")
        if length > MAX_DIALOGUE:
            raise self._garbled(bytes(self._buffer), f" (a packet of {length} bytes)")
        return None if len(self._buffer) < 4 + length else self._take(4 + length)[4:]

    def _greeting(self, payload: bytes) -> bytes:
        packet = self._replied()
        if payload[:1] == b"\xff":  # ERR: code, maybe "#" and a SQLSTATE, message
            message = payload[3:]
            message = message[6:] if message[:1] == b"#" else message
            code = int.from_bytes(payload[1:3], "little")
            raise self._error(f"answered with error {code} instead of its greeting: "
                              f"{_q(message)}")
        if not payload:
            raise self._garbled(packet)
        if payload[0] != 10:
            raise self._error(f"speaks protocol version {payload[0]}, not 10: {_q(packet)}")
        end = payload.find(b"\0", 1)  # the server's version
        flags = end + 1 + 4 + 8 + 1  # connection id, auth-plugin-data part 1, filler
        if end < 0 or len(payload) < flags + 2:
            raise self._garbled(packet, " (a greeting cut short)")
        if not int.from_bytes(payload[flags:flags + 2], "little") & _CLIENT_SSL:
            raise self._error(f"does not offer SSL: {_q(payload[1:end])}")
        return self._go_ahead(_MYSQL_SSL_REQUEST)


# XMPP (RFC 6120): namespaces, in ElementTree's {uri}name spelling.
_STREAMS = "{http://etherx.jabber.org/streams}"
_STREAM_ERRORS = "{urn:ietf:params:xml:ns:xmpp-streams}"
_TLS = "{urn:ietf:params:xml:ns:xmpp-tls}"
_XMPP_STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


class _Stanza(NamedTuple):
    """A child of the server's stream root (or, first, the root's start tag, childless)."""

    element: ET.Element
    raw: bytes  # as received
    stop: int  # where it ends in the stream


def _clark(name: str) -> str:
    """expat's "uri}name" (namespace_separator "}") as ElementTree's "{uri}name"."""
    return "{" + name if "}" in name else name


def _tag_end(data: bytes | bytearray, pos: int) -> int:
    """Where the tag that opens at `pos` ends (after its ">"; quoted values may hold one)."""
    quote = 0
    for index in range(pos, len(data)):
        byte = data[index]
        if quote:
            quote = 0 if byte == quote else quote
        elif byte in b"'\"":
            quote = byte
        elif byte == ord(">"):
            return index + 1
    return len(data)


class XMPPDance(_Dialogue[_Stanza]):
    """XMPP client-to-server (RFC 6120 section 5): stream header, <stream:features> with
    <starttls/>, <starttls/>, <proceed/>. Parsed with expat as it comes; no DTD is read."""

    protocol = "xmpp"
    default_port = 5222
    _label = "XMPP"

    def __init__(self, server_name: str) -> None:
        import xml.etree.ElementTree as ET  # lazy: XMPP only (see the imports)
        from xml.parsers import expat

        super().__init__(server_name, "stream header", self._header)
        self._stream = bytearray()  # all the server sent, as expat's byte offsets count
        self._began = 0  # where the latest child of the root starts
        self._empty_stop = 0  # where it ends, if it is an empty-element tag (<proceed/>)
        self._depth = 0
        self._builder = ET.TreeBuilder()
        self._stanzas: deque[_Stanza] = deque()
        # Malformed, or closed: the error to raise once the stanzas before it are read.
        self._ended: Callable[[], UpgradeError] | None = None
        self._parser = expat.ParserCreate(namespace_separator="}")
        self._parser.StartElementHandler = self._opened
        self._parser.EndElementHandler = self._closed
        self._parser.CharacterDataHandler = self._text
        self._parser.StartDoctypeDeclHandler = self._doctype
        # Expat 2.6 holds back a small piece until more comes (reparse deferral, against
        # quadratic reparsing of huge tokens): a <proceed/> that arrives on its own would
        # then wait for bytes the server never sends. Our pieces are small and bounded.
        if hasattr(self._parser, "SetReparseDeferralEnabled"):
            self._parser.SetReparseDeferralEnabled(False)

    def start(self) -> bytes:
        from xml.sax.saxutils import escape  # lazy: XMPP only (see the imports)

        to = escape(self.server_name, {"'": "&apos;", '"': "&quot;"})
        return ("<?xml version='1.0'?><stream:stream to='" + to + "' xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()

    def _read(self) -> _Stanza | None:
        from xml.parsers import expat  # lazy: XMPP only (see the imports)

        if self._buffer and self._ended is None:
            data = bytes(self._buffer)
            self._buffer.clear()
            self._stream += data
            try:
                self._parser.Parse(data, False)
            except expat.ExpatError as exc:
                why = f" (malformed XML: {exc})"
                self._ended = lambda: self._garbled(self._last_words(), why)
        if self._stanzas:
            stanza = self._stanzas.popleft()
            if stanza.element.tag == _STREAMS + "error":
                raise self._stream_error(stanza)
            return stanza
        if self._ended is not None:
            raise self._ended()
        return None

    def _last_words(self) -> bytes:
        return bytes(self._stream[self._began:] + self._buffer)

    def _opened(self, name: str, attributes: dict[str, str]) -> None:
        import xml.etree.ElementTree as ET  # lazy: XMPP only (see the imports)

        self._depth += 1
        tag, attrib = _clark(name), {_clark(key): value for key, value in attributes.items()}
        at = self._parser.CurrentByteIndex
        if self._depth == 1:
            stop = _tag_end(self._stream, at)
            self._stanzas.append(_Stanza(ET.Element(tag, attrib), bytes(self._stream[:stop]), stop))
            return
        if self._depth == 2:
            self._builder, self._began = ET.TreeBuilder(), at
            stop = _tag_end(self._stream, at)
            self._empty_stop = stop if self._stream[stop - 2:stop] == b"/>" else 0
        self._builder.start(tag, attrib)

    def _closed(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._ended = lambda: self._error(f"closed its stream before its {self._awaited}: "
                                              f"{_q(self._last_words())}")
            return
        self._builder.end(_clark(name))
        if self._depth == 1:  # expat is at the end tag, or past an empty-element tag
            stop = self._empty_stop or _tag_end(self._stream, self._parser.CurrentByteIndex)
            raw = bytes(self._stream[self._began:stop])
            self._stanzas.append(_Stanza(self._builder.close(), raw, stop))

    def _text(self, text: str) -> None:
        if self._depth > 1:
            self._builder.data(text)

    def _doctype(self, name: str, system: str | None, public: str | None, internal: bool) -> None:
        raise self._error(f"sent a DOCTYPE, which XMPP forbids (not read): "
                          f"{_q(bytes(self._stream))}")

    def _header(self, stanza: _Stanza) -> bytes:
        if stanza.element.tag != _STREAMS + "stream":
            raise self._garbled(stanza.raw)
        major = stanza.element.get("version", "").split(".")[0]
        if not (major.isdigit() and int(major) >= 1):
            raise self._error(f"speaks XMPP before 1.0 (no version='1.0' in its stream header), "
                              f"so no STARTTLS: {_q(stanza.raw)}")
        return self._then("<stream:features>", self._features)

    def _features(self, stanza: _Stanza) -> bytes:
        if stanza.element.tag != _STREAMS + "features":
            raise self._unexpected(stanza)
        if stanza.element.find(_TLS + "starttls") is None:
            raise self._error(f"does not offer STARTTLS: {_q(stanza.raw)}")
        return self._then("reply to <starttls/>", self._proceed, _XMPP_STARTTLS)

    def _proceed(self, stanza: _Stanza) -> bytes:
        if stanza.element.tag == _TLS + "failure":
            raise self._error(f"refused STARTTLS: {_q(stanza.raw)}")
        if stanza.element.tag != _TLS + "proceed":
            raise self._unexpected(stanza)
        self._buffer[:] = self._stream[stanza.stop:]  # what came after it, for `receive`
        return self._go_ahead()

    def _unexpected(self, stanza: _Stanza) -> UpgradeError:
        return self._error(f"sent another element instead of its {self._awaited}: "
                           f"{_q(stanza.raw)}")

    def _stream_error(self, stanza: _Stanza) -> UpgradeError:
        """<stream:error>: its condition, an element named for it, and maybe a <text>."""
        children = [child for child in stanza.element if child.tag.startswith(_STREAM_ERRORS)]
        text = next((child.text or "" for child in children
                     if child.tag == _STREAM_ERRORS + "text"), None)
        condition = next((child.tag.removeprefix(_STREAM_ERRORS) for child in children
                          if child.tag != _STREAM_ERRORS + "text"), "(no condition)")
        said = stanza.raw if text is None else text.encode()
        return self._error(f"sent stream error {condition} instead of its {self._awaited}: "
                           f"{_q(said)}")


DANCES: dict[str, type[Dance]] = {
    dance.protocol: dance
    for dance in (SMTPDance, IMAPDance, POP3Dance, FTPDance, LDAPDance, PostgresDance,
                  MySQLDance, XMPPDance)
}


def dance_for(protocol: str, server_name: str) -> Dance:
    """A new dance for `protocol` (a key of DANCES), for the server `server_name`."""
    try:
        dance = DANCES[protocol]
    except KeyError:
        raise ValueError(f"no STARTTLS dance for {protocol!r}; there are: "
                         f"{', '.join(DANCES)}") from None
    return dance(server_name)
