"""How long scanner.certs takes per certificate, in CPU time (time.process_time).

    python bench/certs_speed.py                      # this checkout's scanner/certs.py
    python bench/certs_speed.py --baseline git:HEAD  # ... and another version, interleaved
    python bench/certs_speed.py --baseline /tmp/old_certs.py --calls 4000

Three kinds of leaf: the fleet's ECDSA P-256 leaves with an IP SAN (bench/out/fleet, made
here with the same shape when missing), trustme leaves (ECDSA P-256, DNS SAN), and RSA-2048
leaves under an RSA-2048 intermediate. Each timed loop cycles through --distinct different
leaves (more than the module's name cache holds), so a leaf's subject is never a cache hit,
as in a real scan; the issuer and the intermediate repeat, as they do in a real scan. The
machine may be busy: compare versions in one run (--baseline), not across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import ipaddress
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent
FLEET = REPO / "bench" / "out" / "fleet"
NOW = dt.datetime.now(dt.UTC)


def load_module(source: str, label: str) -> ModuleType:
    """scanner.certs from a file, or from a git revision ("git:HEAD")."""
    if source.startswith("git:"):
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{source[4:]}:scanner/certs.py"],
                              check=True, capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / "certs.py"
        path.write_text(text)
    else:
        path = Path(source)
    spec = importlib.util.spec_from_file_location(f"certs_{label}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def issue(subject: x509.Name, issuer: x509.Name, key: object, signer: object, serial: int,
          san: list[x509.GeneralName] | None, ca: bool) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key())  # type: ignore[attr-defined]
               .serial_number(serial)
               .not_valid_before(NOW - dt.timedelta(days=1))
               .not_valid_after(NOW + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    builder = builder.add_extension(  # type: ignore[assignment]
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()),  # type: ignore[attr-defined]
        critical=False)
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


def name(cn: str, org: str = "certscan bench") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def fleet_kind(count: int) -> tuple[list[bytes], bytes]:
    leaves = sorted(FLEET.glob("leaves/leaf-*.pem"), key=lambda p: int(p.stem[5:]))[:count]
    if len(leaves) >= count and (FLEET / "ca.pem").exists():
        ca = x509.load_pem_x509_certificate((FLEET / "ca.pem").read_bytes())
        return ([der(x509.load_pem_x509_certificate(p.read_bytes())) for p in leaves], der(ca))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = issue(name("certscan bench CA"), name("certscan bench CA"), ca_key, ca_key, 1, None, True)
    return ([der(issue(name(f"127.88.{i // 250 + 1}.{i % 250 + 1}"), ca.subject, key, ca_key,
                       x509.random_serial_number(),
                       [x509.IPAddress(ipaddress.ip_address(f"127.88.{i // 250 + 1}.{i % 250 + 1}"))],
                       False)) for i in range(count)], der(ca))


def trustme_kind(count: int) -> tuple[list[bytes], bytes]:
    import trustme

    ca = trustme.CA()
    leaves = [ca.issue_cert(f"host{i}.example.org").cert_chain_pems[0].bytes()
              for i in range(count)]
    return ([der(x509.load_pem_x509_certificate(pem)) for pem in leaves],
            der(x509.load_pem_x509_certificate(ca.cert_pem.bytes())))


def rsa_kind(count: int) -> tuple[list[bytes], bytes]:
    root_key, inter_key, key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                                for _ in range(3))
    root_name, inter_name = name("Bench Root R1", "Bench Trust"), name("Bench TLS R2", "Bench Trust")
    inter = issue(inter_name, root_name, inter_key, root_key, 2, None, True)
    return ([der(issue(name(f"www{i}.example.com", "Example Ltd"), inter_name, key, inter_key,
                       x509.random_serial_number(),
                       [x509.DNSName(f"www{i}.example.com"), x509.DNSName("example.com")],
                       False)) for i in range(count)], der(inter))


def per_call_ms(function: Callable[[object], object], items: list[object], calls: int) -> float:
    start = time.process_time()
    for i in range(calls):
        function(items[i % len(items)])
    return (time.process_time() - start) / calls * 1000


def workloads(module: ModuleType, leaves: list[bytes], issuer: bytes
              ) -> dict[str, tuple[Callable[[object], object], list[object]] | None]:
    """What each row times: a function of one item, and the items it cycles through."""
    facts = module.certificate_facts
    entry = getattr(module, "leaf_entry", None)
    return {
        "certificate_facts(leaf)": (lambda der: facts(der, now=NOW), list(leaves)),
        "chain_entry(leaf)": (module.chain_entry, list(leaves)),
        "chain_entry(issuer)": (module.chain_entry, [issuer]),
        "leaf_entry(facts)": None if entry is None else (
            entry, [facts(der, now=NOW) for der in leaves]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=2000, help="different leaves per kind")
    parser.add_argument("--reps", type=int, default=5, help="best of this many loops")
    parser.add_argument("--baseline", help="another scanner/certs.py: a path or git:REV")
    args = parser.parse_args()

    modules = {"new": load_module(str(REPO / "scanner" / "certs.py"), "new")}
    if args.baseline:
        modules = {"old": load_module(args.baseline, "old"), **modules}
    kinds = {"fleet-p256-ip": fleet_kind, "trustme-p256": trustme_kind,
             "rsa2048+intermediate": rsa_kind}
    print(f"ms per call, CPU time, best of {args.reps} x {args.calls} calls")
    print(f"{'certificate':<22} {'function':<26}" + "".join(f"{m:>9}" for m in modules))
    for kind, make in kinds.items():
        leaves, issuer = make(args.distinct)
        loads = {label: workloads(module, leaves, issuer) for label, module in modules.items()}
        for row in loads["new"]:
            best = {label: float("inf") for label in modules}
            for _ in range(args.reps):  # interleaved, so a burst of load hits all versions
                for label in modules:
                    work = loads[label][row]
                    best[label] = min(best[label], per_call_ms(*work, args.calls)
                                      if work else float("nan"))
            print(f"{kind:<22} {row:<26}" + "".join(f"{best[m]:9.4f}" for m in modules))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
