"""The STARTTLS dances (scanner/starttls.py), pure and in memory: dialogues as real Debian
servers speak them, fed in every split, and each way a server can fail to upgrade."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

import pytest

from scanner.starttls import DANCES, MAX_DIALOGUE, UpgradeError, dance_for, shown

# --- what the servers say ---------------------------------------------------------------

POSTFIX_GREETING = b"220 mail.test ESMTP Postfix (Debian/GNU)\r\n"
POSTFIX_EHLO = (b"250-mail.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n"
                b"250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
                b"250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n")
DOVECOT_IMAP_GREETING = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
                         b"LITERAL+ STARTTLS LOGINDISABLED] Dovecot (Debian) ready.\r\n")
DOVECOT_POP3_GREETING = b"+OK Dovecot (Debian) ready.\r\n"
# Plaintext logins disabled: no USER, no SASL mechanisms before TLS.
DOVECOT_CAPA = (b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n"
                b"STLS\r\nSASL\r\n.\r\n")
VSFTPD_GREETING = b"220 (vsFTPd 3.0.3)\r\n"
PROSODY_HEADER = (b"<?xml version='1.0'?><stream:stream xml:lang='en' xmlns='jabber:client' "
                  b"xmlns:stream='http://etherx.jabber.org/streams' "
                  b"id='c8c3c1ef-de14-4933-8817-bd16dc9c30b5' version='1.0' from='xmpp.test'>")
PROSODY_FEATURES = (b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                    b"<required/></starttls></stream:features>")
XMPP_STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
XMPP_PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
LDAP_START_TLS = b"1.3.6.1.4.1.1466.20037"


def ber(tag: int, contents: bytes, *, long_form: bool = False) -> bytes:
    """One BER element; Active Directory writes every length in the 4-byte long form."""
    if long_form:
        return bytes([tag, 0x84]) + len(contents).to_bytes(4) + contents
    if len(contents) < 0x80:
        return bytes([tag, len(contents)]) + contents
    size = (len(contents).bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + len(contents).to_bytes(size) + contents


def ldap_response(code: int, diagnostic: bytes = b"", *, message_id: int = 1,
                  name: bytes | None = None, long_form: bool = False) -> bytes:
    """LDAPMessage { messageID, ExtendedResponse { resultCode, matchedDN "",
    diagnosticMessage, [10] responseName? } }."""
    fields = ber(0x0A, bytes([code])) + ber(0x04, b"") + ber(0x04, diagnostic)
    if name is not None:
        fields += ber(0x8A, name)
    return ber(0x30, ber(0x02, bytes([message_id]))
               + ber(0x78, fields, long_form=long_form), long_form=long_form)


def postgres_error(**fields: bytes) -> bytes:
    """A protocol 3 ErrorResponse: "E", int32 length, typed NUL-terminated fields, NUL."""
    body = b"".join(key.encode() + value + b"\0" for key, value in fields.items()) + b"\0"
    return b"E" + (4 + len(body)).to_bytes(4) + body


# MariaDB 10.11 on Debian 12 (SSL on), as it greets: the initial handshake, protocol 10.
MARIADB_GREETING = (
    b"d\x00\x00\x00\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x04\x00\x00\x00^I3`m!Y!\x00\xfe\xff"
    b"\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x006-|MHb7+opf.\x00"
    b"mysql_native_password\x00")


def mysql_greeting(*, capabilities: int = 0xFFFE,
                   version: bytes = b"5.5.5-10.11.19-MariaDB-0+deb12u1",
                   upper: bytes = b"\xff\x81", charset: int = 0x08,
                   plugin: bytes = b"mysql_native_password") -> bytes:
    """The initial handshake, field by field; by default MARIADB_GREETING."""
    payload = b"".join((
        b"\x0a",  # protocol version
        version + b"\0",
        (4).to_bytes(4, "little"),  # connection id
        b"^I3`m!Y!",  # auth-plugin-data, first 8 bytes
        b"\0",  # filler
        capabilities.to_bytes(2, "little"),  # capability flags, lower 2 bytes (0x0800: SSL)
        bytes([charset]),  # 0x08: latin1_swedish_ci
        b"\x02\x00",  # status: SERVER_STATUS_AUTOCOMMIT
        upper,  # capability flags, upper 2 bytes
        b"\x15",  # length of auth-plugin-data: 21
        bytes(6),  # reserved
        b"\x1d\x00\x00\x00",  # MariaDB's extended capabilities (MySQL: 4 more reserved)
        b"6-|MHb7+opf.\0",  # auth-plugin-data, the other 13 bytes
        plugin + b"\0",
    ))
    return mysql_packet(payload)


def mysql_packet(payload: bytes, sequence: int = 0) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


# The client's SSLRequest: packet 1, 32 bytes: CLIENT_SSL | CLIENT_PROTOCOL_41 |
# CLIENT_SECURE_CONNECTION | CLIENT_LONG_PASSWORD, max packet 16 MiB, charset 0x21, zeros.
MYSQL_SSL_REQUEST = mysql_packet(
    (0x0800 | 0x0200 | 0x8000 | 0x0001).to_bytes(4, "little") + (1 << 24).to_bytes(4, "little")
    + b"\x21" + bytes(23), sequence=1)


# --- the dialogues ------------------------------------------------------------------------

@dataclass(frozen=True)
class Dialogue:
    """A recorded upgrade, reply by reply (Prosody, for one, sends its stream header and
    features in one write: replies that come together have a test of their own)."""

    name: str
    protocol: str
    hello: bytes  # what the client says first (b"" when the server speaks first)
    # (what the server says, what the client answers, what the dance awaited before it)
    steps: tuple[tuple[bytes, bytes, str], ...]
    server_name: str = "mail.test"


DIALOGUES = [
    Dialogue("smtp-postfix", "smtp", b"", (
        (POSTFIX_GREETING, b"EHLO certscan.invalid\r\n", "greeting"),
        (POSTFIX_EHLO, b"STARTTLS\r\n", "reply to EHLO"),
        (b"220 2.0.0 Ready to start TLS\r\n", b"", "reply to STARTTLS"),
    )),
    Dialogue("smtp-exim-multiline-greeting", "smtp", b"", (
        (b"220-mail.test ESMTP Exim 4.96 Debian\r\n220-We do not authorize the use of this "
         b"system to transport unsolicited,\r\n220 and/or bulk e-mail.\r\n",
         b"EHLO certscan.invalid\r\n", "greeting"),
        (b"250-mail.test Hello certscan.invalid [127.0.0.1]\r\n250-SIZE 52428800\r\n"
         b"250-8BITMIME\r\n250-PIPELINING\r\n250-PIPECONNECT\r\n250-CHUNKING\r\n"
         b"250-STARTTLS\r\n250-PRDR\r\n250 HELP\r\n", b"STARTTLS\r\n", "reply to EHLO"),
        (b"220 TLS go ahead\r\n", b"", "reply to STARTTLS"),
    )),
    Dialogue("smtp-bare-lf-lower-case", "smtp", b"", (
        (b"220 mail.test ESMTP\n", b"EHLO certscan.invalid\r\n", "greeting"),
        (b"250-mail.test\n250-starttls\n250 8BITMIME\n", b"STARTTLS\r\n", "reply to EHLO"),
        (b"220 go ahead\n", b"", "reply to STARTTLS"),
    )),
    Dialogue("imap-dovecot", "imap", b"", (
        (DOVECOT_IMAP_GREETING, b"a2 STARTTLS\r\n", "greeting"),
        (b"a2 OK Begin TLS negotiation now.\r\n", b"", "reply to STARTTLS"),
    )),
    Dialogue("imap-capability-command", "imap", b"", (
        (b"* OK IMAP4rev1 server ready\r\n", b"a1 CAPABILITY\r\n", "greeting"),
        (b"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
         b"LOGINDISABLED\r\na1 OK Pre-login capabilities listed, post-login capabilities have "
         b"more.\r\n", b"a2 STARTTLS\r\n", "reply to CAPABILITY"),
        (b"* OK still here\r\na2 OK Begin TLS negotiation now.\r\n", b"", "reply to STARTTLS"),
    )),
    Dialogue("imap-preauth", "imap", b"", (
        (b"* PREAUTH [CAPABILITY IMAP4rev1 starttls] Logged in as certscan\r\n",
         b"a2 STARTTLS\r\n", "greeting"),
        (b"a2 ok Begin TLS negotiation now.\r\n", b"", "reply to STARTTLS"),
    )),
    Dialogue("pop3-dovecot", "pop3", b"", (
        (DOVECOT_POP3_GREETING, b"CAPA\r\n", "greeting"),
        (DOVECOT_CAPA, b"STLS\r\n", "reply to CAPA"),
        (b"+OK Begin TLS negotiation now.\r\n", b"", "reply to STLS"),
    )),
    Dialogue("pop3-before-capa", "pop3", b"", (
        (b"+OK POP3 server ready <1896.697170952@mail.test>\r\n", b"CAPA\r\n", "greeting"),
        (b"-ERR Unknown command: CAPA\r\n", b"STLS\r\n", "reply to CAPA"),
        (b"+OK Begin TLS negotiation\r\n", b"", "reply to STLS"),
    )),
    Dialogue("ftp-vsftpd", "ftp", b"", (
        (VSFTPD_GREETING, b"AUTH TLS\r\n", "greeting"),
        (b"234 Proceed with negotiation.\r\n", b"", "reply to AUTH TLS"),
    )),
    Dialogue("ftp-pureftpd-multiline", "ftp", b"", (
        (b"220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\r\n"
         b"220-You are user number 1 of 50 allowed.\r\n"
         b"220-Local time is now 12:00. Server port: 21.\r\n"
         b"220-This is a private system - No anonymous login\r\n"
         b"220 You will be disconnected after 15 minutes of inactivity.\r\n",
         b"AUTH TLS\r\n", "greeting"),
        (b"234 AUTH TLS OK.\r\n", b"", "reply to AUTH TLS"),
    )),
    Dialogue("ftp-120-then-proftpd", "ftp", b"", (
        (b"120 Service ready in 1 minutes.\r\n", b"", "greeting"),
        (b"220 ProFTPD Server (Debian) [::ffff:127.0.0.1]\r\n", b"AUTH TLS\r\n", "greeting"),
        (b"234-AUTH TLS\r\n  successful\r\n234 \r\n", b"", "reply to AUTH TLS"),
    )),
    Dialogue("ldap-openldap", "ldap", b"\x30\x1d\x02\x01\x01\x77\x18\x80\x16" + LDAP_START_TLS, (
        (b"\x30\x0c\x02\x01\x01\x78\x07\x0a\x01\x00\x04\x00\x04\x00", b"", "reply to StartTLS"),
    )),
    Dialogue("ldap-active-directory-long-form", "ldap",
             b"\x30\x1d\x02\x01\x01\x77\x18\x80\x16" + LDAP_START_TLS, (
        (ldap_response(0, name=LDAP_START_TLS, long_form=True), b"", "reply to StartTLS"),
    )),
    Dialogue("postgres", "postgres", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", (
        (b"S", b"", "answer to the SSLRequest"),
    )),
    Dialogue("mysql-mariadb-10.11", "mysql", b"", (
        (MARIADB_GREETING, MYSQL_SSL_REQUEST, "greeting"),
    )),
    Dialogue("mysql-8.0", "mysql", b"", (
        (mysql_greeting(capabilities=0xFFFF, version=b"8.0.36", upper=b"\xff\xdf",
                        charset=0xFF, plugin=b"caching_sha2_password"),
         MYSQL_SSL_REQUEST, "greeting"),
    )),
    Dialogue("xmpp-prosody", "xmpp",
             b"<?xml version='1.0'?><stream:stream to='xmpp.test' xmlns='jabber:client' "
             b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>", (
        (PROSODY_HEADER, b"", "stream header"),
        (PROSODY_FEATURES, XMPP_STARTTLS, "<stream:features>"),
        (XMPP_PROCEED, b"", "reply to <starttls/>"),
    ), server_name="xmpp.test"),
    Dialogue("xmpp-ejabberd", "xmpp",
             b"<?xml version='1.0'?><stream:stream to='xmpp.test' xmlns='jabber:client' "
             b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>", (
        (b"<?xml version='1.0'?><stream:stream id='14330545218460208437' version='1.0' "
         b"xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' from='xmpp.test' "
         b"xmlns='jabber:client'>", b"", "stream header"),
        (b"\n<stream:features><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
         b"node='http://www.process-one.net/en/ejabberd/' ver='8sfd3J+1I8Yc6ZsJqYq7iWSDTfw='/>"
         b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
         XMPP_STARTTLS, "<stream:features>"),
        (b" " + XMPP_PROCEED, b"", "reply to <starttls/>"),
    ), server_name="xmpp.test"),
]


def pieces(data: bytes, split: str) -> list[bytes]:
    """`data` as a server might deliver it."""
    if split == "whole":
        return [data]
    if split == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    if split == "lines":
        return [piece for piece in re.split(rb"(?<=\n)", data) if piece]
    cuts, rng = [0], random.Random(data)
    while cuts[-1] < len(data):
        cuts.append(cuts[-1] + rng.randint(1, 7))
    return [data[start:stop] for start, stop in itertools.pairwise(cuts)]


@pytest.mark.parametrize("split", ["whole", "bytes", "lines", "random"])
@pytest.mark.parametrize("dialogue", DIALOGUES, ids=lambda d: d.name)
def test_a_real_servers_dialogue_upgrades(dialogue: Dialogue, split: str) -> None:
    dance = dance_for(dialogue.protocol, dialogue.server_name)
    assert dance.start() == dialogue.hello
    for said, answer, _ in dialogue.steps:
        assert not dance.upgraded
        answers = [dance.receive(piece) for piece in pieces(said, split)]
        # The client answers once the reply is whole, and not before.
        assert answers[-1] == answer
        assert not any(answers[:-1])
    assert dance.upgraded


@pytest.mark.parametrize("dialogue", DIALOGUES, ids=lambda d: d.name)
def test_replies_that_come_together_are_answered_together(dialogue: Dialogue) -> None:
    dance = dance_for(dialogue.protocol, dialogue.server_name)
    dance.start()
    said = b"".join(said for said, _, _ in dialogue.steps)
    assert dance.receive(said) == b"".join(answer for _, answer, _ in dialogue.steps)
    assert dance.upgraded


@pytest.mark.parametrize("dialogue", DIALOGUES, ids=lambda d: d.name)
def test_bytes_after_the_go_ahead_are_refused(dialogue: Dialogue) -> None:
    # Whatever comes with the go-ahead would be read as the server's TLS: injected data.
    dance = dance_for(dialogue.protocol, dialogue.server_name)
    dance.start()
    for said, _, _ in dialogue.steps[:-1]:
        dance.receive(said)
    with pytest.raises(UpgradeError, match=re.escape(
            r'server sent 3 bytes after its go-ahead, before the TLS handshake: "\x16\x03\x01"')):
        dance.receive(dialogue.steps[-1][0] + b"\x16\x03\x01")


@pytest.mark.parametrize("dialogue", DIALOGUES, ids=lambda d: d.name)
def test_receive_after_the_upgrade_is_a_bug(dialogue: Dialogue) -> None:
    dance = dance_for(dialogue.protocol, dialogue.server_name)
    dance.start()
    for said, _, _ in dialogue.steps:
        dance.receive(said)
    with pytest.raises(RuntimeError, match="after the go-ahead"):
        dance.receive(b"\x16\x03\x03")


@pytest.mark.parametrize("cut", [False, True], ids=["between-replies", "within-a-reply"])
@pytest.mark.parametrize(("dialogue", "step"), [
    pytest.param(dialogue, step, id=f"{dialogue.name}-{step}")
    for dialogue in DIALOGUES for step in range(len(dialogue.steps))])
def test_a_close_says_where_and_what_the_server_said_last(
        dialogue: Dialogue, step: int, cut: bool) -> None:
    dance = dance_for(dialogue.protocol, dialogue.server_name)
    dance.start()
    for said, _, _ in dialogue.steps[:step]:
        dance.receive(said)
    said, _, awaited = dialogue.steps[step]
    cut = cut and len(said) > 1  # PostgreSQL's one byte has no middle
    if cut:
        dance.receive(said[:len(said) // 2])
    with pytest.raises(UpgradeError) as caught:
        dance.receive_eof()
    message = str(caught.value)
    assert f"server closed the connection before its {awaited}" in message
    if cut:
        assert "; it last sent \"" in message
    elif step == 0:
        assert message.endswith(", having sent nothing")
    else:
        last = dialogue.steps[step - 1][0].strip()
        assert f'; it last sent "{shown(last)[:80]}' in message


def test_eight_protocols_with_their_ports() -> None:
    assert {name: dance.default_port for name, dance in DANCES.items()} == {
        "smtp": 25, "imap": 143, "pop3": 110, "ftp": 21, "ldap": 389, "postgres": 5432,
        "mysql": 3306, "xmpp": 5222}
    for name, dance in DANCES.items():
        assert dance.protocol == name
        assert type(dance_for(name, "example.org")) is dance
    with pytest.raises(ValueError, match="no STARTTLS dance for 'http'"):
        dance_for("http", "example.org")


def test_the_mariadb_greeting_is_read_field_by_field() -> None:
    assert mysql_greeting() == MARIADB_GREETING


def test_the_xmpp_header_escapes_the_server_name() -> None:
    hello = dance_for("xmpp", "a'b&c<d").start()
    assert b" to='a&apos;b&amp;c&lt;d' " in hello


# --- failures -----------------------------------------------------------------------------

NO_CAPS_IMAP = b"* OK IMAP4rev1 server ready\r\n"
FAILURES = [
    # SMTP
    ("smtp", [POSTFIX_GREETING, b"250-mail.test\r\n250 SIZE 10240000\r\n"],
     r'SMTP server does not offer STARTTLS: "250-mail.test\r\n250 SIZE 10240000"'),
    ("smtp", [b"554 5.7.1 <unknown[192.0.2.9]>: Client host rejected: Access denied\r\n"],
     'SMTP server did not greet with 220: '
     '"554 5.7.1 <unknown[192.0.2.9]>: Client host rejected: Access denied"'),
    ("smtp", [b"421-mail.test Service not available\r\n421 closing transmission channel\r\n"],
     r'SMTP server closed the connection in its greeting: '
     r'"421-mail.test Service not available\r\n421 closing transmission channel"'),
    ("smtp", [POSTFIX_GREETING, POSTFIX_EHLO, b"421 4.3.0 mail.test Server shutting down\r\n"],
     'SMTP server closed the connection in its reply to STARTTLS: '
     '"421 4.3.0 mail.test Server shutting down"'),
    ("smtp", [POSTFIX_GREETING, b"502 5.5.2 Error: command not recognized\r\n"],
     'SMTP server refused EHLO: "502 5.5.2 Error: command not recognized"'),
    ("smtp", [POSTFIX_GREETING, POSTFIX_EHLO,
              b"454 4.7.0 TLS not available due to local problem\r\n"],
     'SMTP server refused STARTTLS: "454 4.7.0 TLS not available due to local problem"'),
    ("smtp", [b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"],
     'SMTP server\'s greeting is not SMTP: "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"'),
    ("smtp", [POSTFIX_GREETING, b"HTTP/1.1 400 Bad Request\r\n"],
     'SMTP server\'s reply to EHLO is not SMTP: "HTTP/1.1 400 Bad Request"'),
    # IMAP
    ("imap", [b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID IDLE AUTH=PLAIN] Dovecot (Debian) "
              b"ready.\r\n"],
     'IMAP server does not offer STARTTLS: '
     '"* OK [CAPABILITY IMAP4rev1 SASL-IR ID IDLE AUTH=PLAIN] Dovecot (Debian) ready."'),
    ("imap", [NO_CAPS_IMAP, b"* CAPABILITY IMAP4rev1 IDLE\r\na1 OK Capability completed.\r\n"],
     r'IMAP server does not offer STARTTLS: '
     r'"* CAPABILITY IMAP4rev1 IDLE\r\na1 OK Capability completed."'),
    ("imap", [b"* BYE Too many connections from 192.0.2.9\r\n"],
     'IMAP server said BYE instead of its greeting: "* BYE Too many connections from 192.0.2.9"'),
    ("imap", [NO_CAPS_IMAP, b"* BYE Server shutting down.\r\n"],
     'IMAP server said BYE instead of its reply to CAPABILITY: "* BYE Server shutting down."'),
    ("imap", [NO_CAPS_IMAP, b"a1 BAD Error in IMAP command received by server.\r\n"],
     'IMAP server refused CAPABILITY: "a1 BAD Error in IMAP command received by server."'),
    ("imap", [DOVECOT_IMAP_GREETING, b"a2 NO [UNAVAILABLE] TLS support isn't enabled.\r\n"],
     'IMAP server refused STARTTLS: "a2 NO [UNAVAILABLE] TLS support isn\'t enabled."'),
    ("imap", [DOVECOT_IMAP_GREETING, b"a2 BAD Unknown command.\r\n"],
     'IMAP server refused STARTTLS: "a2 BAD Unknown command."'),
    ("imap", [POSTFIX_GREETING],
     'IMAP server did not greet with * OK: "220 mail.test ESMTP Postfix (Debian/GNU)"'),
    ("imap", [DOVECOT_IMAP_GREETING, b"+ go on\r\n"],
     'IMAP server\'s reply to STARTTLS is not IMAP: "+ go on"'),
    # POP3
    ("pop3", [DOVECOT_POP3_GREETING, DOVECOT_CAPA.replace(b"STLS\r\n", b"")],
     r'POP3 server does not offer STLS: "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n'
     r'PIPELINING\r\nAUTH-RESP-CODE\r\nSASL\r\n."'),
    ("pop3", [b"-ERR [SYS/TEMP] Too many connections\r\n"],
     'POP3 server did not greet with +OK: "-ERR [SYS/TEMP] Too many connections"'),
    ("pop3", [DOVECOT_POP3_GREETING, DOVECOT_CAPA, b"-ERR TLS support isn't enabled.\r\n"],
     'POP3 server refused STLS: "-ERR TLS support isn\'t enabled."'),
    ("pop3", [DOVECOT_POP3_GREETING, b"HTTP/1.0 200 OK\r\n"],
     'POP3 server\'s reply to CAPA is not POP3: "HTTP/1.0 200 OK"'),
    ("pop3", [DOVECOT_POP3_GREETING, DOVECOT_CAPA, b"220 ready\r\n"],
     'POP3 server\'s reply to STLS is not POP3: "220 ready"'),
    # FTP
    ("ftp", [VSFTPD_GREETING, b"530 Please login with USER and PASS.\r\n"],
     'FTP server refused AUTH TLS: "530 Please login with USER and PASS."'),
    ("ftp", [b"220 ProFTPD Server (Debian) [::ffff:127.0.0.1]\r\n", b"500 AUTH not understood\r\n"],
     'FTP server refused AUTH TLS: "500 AUTH not understood"'),
    ("ftp", [VSFTPD_GREETING, b"534-Policy forbids TLS\r\n from your address\r\n534 Denied.\r\n"],
     r'FTP server refused AUTH TLS: "534-Policy forbids TLS\r\n from your address\r\n'
     r'534 Denied."'),
    ("ftp", [b"421 There are too many connected users, please try later.\r\n"],
     'FTP server closed the connection in its greeting: '
     '"421 There are too many connected users, please try later."'),
    ("ftp", [b"530 Access denied.\r\n"], 'FTP server did not greet with 220: "530 Access denied."'),
    ("ftp", [b"* OK ready\r\n"], 'FTP server\'s greeting is not FTP: "* OK ready"'),
    # LDAP
    ("ldap", [ldap_response(52, b"Could not initialize TLS")],
     'LDAP server refused StartTLS: 52 unavailable: "Could not initialize TLS"'),
    ("ldap", [ldap_response(2, b"unsupported extended operation")],
     'LDAP server refused StartTLS: 2 protocolError: "unsupported extended operation"'),
    ("ldap", [ldap_response(53, b"x" * 300)],  # a long-form length inside
     f'LDAP server refused StartTLS: 53 unwillingToPerform: "{"x" * 200}..."'),
    ("ldap", [ldap_response(123, b"")], 'LDAP server refused StartTLS: 123: ""'),
    ("ldap", [ldap_response(2, b"Connection reset", message_id=0,
                            name=b"1.3.6.1.4.1.1466.20036")],
     'LDAP server sent a notice of disconnection: 2 protocolError: "Connection reset"'),
    ("ldap", [b"HTTP/1.1 400 Bad Request\r\n"],
     'LDAP server\'s reply to StartTLS is not LDAP (not an LDAPMessage): '
     '"HTTP/1.1 400 Bad Request"'),
    ("ldap", [b"\x30\x84\x7f\xff\xff\xff\x02"],
     'LDAP server\'s reply to StartTLS is not LDAP (an element of 2147483647 bytes): '
     r'"0\x84\x7f\xff\xff\xff\x02"'),
    ("ldap", [b"\x30\x80\x02\x01\x01"],
     'LDAP server\'s reply to StartTLS is not LDAP (an indefinite length): '
     r'"0\x80\x02\x01\x01"'),
    ("ldap", [b"\x30\x0c\x02\x01\x01\x61\x07\x0a\x01\x00\x04\x00\x04\x00"],
     'LDAP server\'s reply to StartTLS is not LDAP (not an ExtendedResponse): '
     r'"0\x0c\x02\x01\x01a\x07\n\x01\x00\x04\x00\x04\x00"'),
    ("ldap", [ldap_response(0, message_id=2)],
     'LDAP server\'s reply to StartTLS is not LDAP (an answer to message 2): '
     r'"0\x0c\x02\x01\x02x\x07\n\x01\x00\x04\x00\x04\x00"'),
    ("ldap", [b"\x30\x05\x02\x01\x01\x78\x10"],
     'LDAP server\'s reply to StartTLS is not LDAP (an element overruns its parent): '
     r'"0\x05\x02\x01\x01x\x10"'),
    # PostgreSQL
    ("postgres", [b"N"], 'PostgreSQL server does not accept SSL: "N"'),
    ("postgres", [postgres_error(S=b"FATAL", V=b"FATAL", C=b"53300",
                                 M=b"sorry, too many clients already", F=b"proc.c", L=b"359",
                                 R=b"InitProcess")],
     'PostgreSQL server answered the SSLRequest with an error: '
     '"FATAL 53300: sorry, too many clients already"'),
    ("postgres", [b"Ecould not fork new process for connection: Cannot allocate memory\n\0"],
     'PostgreSQL server answered the SSLRequest with an error: '
     '"could not fork new process for connection: Cannot allocate memory"'),
    ("postgres", [b"HTTP/1.1 400 Bad Request\r\n"],
     'PostgreSQL server\'s answer to the SSLRequest is not PostgreSQL: '
     '"HTTP/1.1 400 Bad Request"'),
    ("postgres", [b"E\x00\x10\x00\x00"],
     'PostgreSQL server\'s answer to the SSLRequest is not PostgreSQL '
     r'(an ErrorResponse of 1048576 bytes): "E\x00\x10\x00\x00"'),
    # MySQL
    ("mysql", [mysql_packet(b"\xff\x6a\x04Host '192.0.2.9' is not allowed to connect to this "
                            b"MariaDB server")],
     'MySQL server answered with error 1130 instead of its greeting: '
     '"Host \'192.0.2.9\' is not allowed to connect to this MariaDB server"'),
    ("mysql", [mysql_packet(b"\xff\x10\x04#08004Too many connections")],
     'MySQL server answered with error 1040 instead of its greeting: "Too many connections"'),
    ("mysql", [mysql_greeting(capabilities=0xF7FE)],
     'MySQL server does not offer SSL: "5.5.5-10.11.19-MariaDB-0+deb12u1"'),
    ("mysql", [mysql_packet(b"\x093.21.33\0\x01\0\0\0abcdefgh\0")],
     r'MySQL server speaks protocol version 9, not 10: '
     r'"\x16\x00\x00\x00\t3.21.33\x00\x01\x00\x00\x00abcdefgh\x00"'),
    ("mysql", [POSTFIX_GREETING],
     'MySQL server\'s greeting is not MySQL (a packet of 3158578 bytes): '
     r'"220 mail.test ESMTP Postfix (Debian/GNU)"'),
    ("mysql", [mysql_packet(b"\x0a8.0.36\0\x01\0\0\0")],
     'MySQL server\'s greeting is not MySQL (a greeting cut short): '
     r'"\x0c\x00\x00\x00\n8.0.36\x00\x01\x00\x00\x00"'),
    # XMPP
    ("xmpp", [PROSODY_HEADER + b"<stream:features><mechanisms "
              b"xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
              b"</mechanisms></stream:features>"],
     'XMPP server does not offer STARTTLS: "<stream:features><mechanisms '
     'xmlns=\'urn:ietf:params:xml:ns:xmpp-sasl\'><mechanism>PLAIN</mechanism></mechanisms>'
     '</stream:features>"'),
    ("xmpp", [PROSODY_HEADER + PROSODY_FEATURES,
              b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>"],
     'XMPP server refused STARTTLS: "<failure xmlns=\'urn:ietf:params:xml:ns:xmpp-tls\'/>"'),
    ("xmpp", [PROSODY_HEADER + b"<stream:error><host-unknown "
              b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text "
              b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'>This server does not serve "
              b"xmpp.test</text></stream:error></stream:stream>"],
     'XMPP server sent stream error host-unknown instead of its <stream:features>: '
     '"This server does not serve xmpp.test"'),
    ("xmpp", [PROSODY_HEADER + PROSODY_FEATURES, b"<stream:error><policy-violation "
              b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"],
     'XMPP server sent stream error policy-violation instead of its reply to <starttls/>: '
     '"<stream:error><policy-violation xmlns=\'urn:ietf:params:xml:ns:xmpp-streams\'/>'
     '</stream:error>"'),
    ("xmpp", [PROSODY_HEADER + PROSODY_FEATURES,
              b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"],
     'XMPP server sent another element instead of its reply to <starttls/>: '
     '"<success xmlns=\'urn:ietf:params:xml:ns:xmpp-sasl\'/>"'),
    ("xmpp", [PROSODY_HEADER + b"</stream:stream>"],
     'XMPP server closed its stream before its <stream:features>: "'
     + shown(PROSODY_HEADER + b"</stream:stream>")[:200] + '..."'),
    ("xmpp", [b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY a 'aaaaaaaaaa'>]>"
              b"<stream:stream>&a;&a;"],
     'XMPP server sent a DOCTYPE, which XMPP forbids (not read): '
     '"<?xml version=\'1.0\'?><!DOCTYPE stream [<!ENTITY a \'aaaaaaaaaa\'>]>'
     '<stream:stream>&a;&a;"'),
    ("xmpp", [PROSODY_HEADER + b"<stream:features><starttls></stream:features>"],
     'XMPP server\'s <stream:features> is not XMPP (malformed XML: mismatched tag: line 1, '
     'column 222): "<stream:features><starttls></stream:features>"'),
    ("xmpp", [b"HTTP/1.1 400 Bad Request\r\n"],
     'XMPP server\'s stream header is not XMPP (malformed XML: not well-formed (invalid '
     'token): line 1, column 4): "HTTP/1.1 400 Bad Request"'),
    ("xmpp", [b"<html><body>"], 'XMPP server\'s stream header is not XMPP: "<html>"'),
    ("xmpp", [b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' from='xmpp.test' id='5'>"],
     'XMPP server speaks XMPP before 1.0 (no version=\'1.0\' in its stream header), so no '
     'STARTTLS: "<?xml version=\'1.0\'?><stream:stream xmlns=\'jabber:client\' '
     'xmlns:stream=\'http://etherx.jabber.org/streams\' from=\'xmpp.test\' id=\'5\'>"'),
]


def _failure_id(case: tuple[str, list[bytes], str]) -> str:
    protocol, _, message = case
    return f"{protocol}-" + re.sub(r"\W+", "-", message.split(":")[0].split(" ", 2)[-1])


@pytest.mark.parametrize(("protocol", "replies", "message"), FAILURES,
                         ids=[_failure_id(case) for case in FAILURES])
def test_a_server_that_will_not_upgrade_is_quoted(
        protocol: str, replies: list[bytes], message: str) -> None:
    dance = dance_for(protocol, "xmpp.test")
    dance.start()
    with pytest.raises(UpgradeError) as caught:
        for reply in replies:
            dance.receive(reply)
    assert str(caught.value) == message
    assert not dance.upgraded


@pytest.mark.parametrize(("protocol", "replies", "message"), FAILURES,
                         ids=[_failure_id(case) for case in FAILURES])
def test_a_refusal_byte_by_byte_is_the_same_refusal(
        protocol: str, replies: list[bytes], message: str) -> None:
    # What was wrong is known as soon as it can be; the quote may be shorter.
    dance = dance_for(protocol, "xmpp.test")
    dance.start()
    with pytest.raises(UpgradeError) as caught:
        for byte in b"".join(replies):
            dance.receive(bytes([byte]))
    assert str(caught.value).split(": ", 1)[0] == message.split(": ", 1)[0]


# --- limits ------------------------------------------------------------------------------

FLOODS = [  # (protocol, what starts the dialogue, what then repeats without end)
    ("smtp", b"", b"220-spam spam spam\r\n"),
    ("smtp", POSTFIX_GREETING, b"250-SIZE 10240000\r\n"),
    ("ftp", b"", b"220-Welcome\r\n"),
    ("ftp", b"", b"120 Service ready in 1 minutes.\r\n"),
    ("imap", NO_CAPS_IMAP, b"* OK still thinking\r\n"),
    ("pop3", DOVECOT_POP3_GREETING + b"+OK\r\n", b"X-CAPABILITY\r\n"),
    ("ldap", b"\x30\x83" + MAX_DIALOGUE.to_bytes(3), bytes(1000)),
    ("mysql", (0xFFFF).to_bytes(3, "little") + b"\0", bytes(1000)),
    ("xmpp", PROSODY_HEADER, b" "),
]


@pytest.mark.parametrize(("protocol", "opening", "flood"), FLOODS,
                         ids=[f"{protocol}-{i}" for i, (protocol, _, _) in enumerate(FLOODS)])
def test_a_server_that_never_comes_to_the_point_is_cut_off(
        protocol: str, opening: bytes, flood: bytes) -> None:
    dance = dance_for(protocol, "xmpp.test")
    dance.start()
    dance.receive(opening)
    sent, chunk = len(opening), flood * max(1, 4096 // len(flood))
    with pytest.raises(UpgradeError, match=f"server sent more than {MAX_DIALOGUE} bytes without "
                                           "a go-ahead, awaiting its "):
        while sent <= MAX_DIALOGUE + len(chunk):
            dance.receive(chunk)
            sent += len(chunk)


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3", "ftp", "postgres"])
@pytest.mark.parametrize("ended", [False, True], ids=["unended", "ended"])
def test_a_line_without_end_is_cut_off(protocol: str, ended: bool) -> None:
    # PostgreSQL's protocol 2 error message is a NUL-terminated line.
    dance = dance_for(protocol, "xmpp.test")
    dance.start()
    line = b"E" + b"2" * 9000 + (b"\r\n\0" if ended else b"")
    with pytest.raises(UpgradeError, match="longer than 8192 bytes"):
        dance.receive(line[:5000])
        dance.receive(line[5000:])
