"""How long scanner.certs takes per certificate, in CPU time (time.process_time).

    python bench/certs_speed.py                      # this checkout's scanner/certs.py
    python bench/certs_speed.py --baseline git:HEAD  # ... and another version, interleaved
    python bench/certs_speed.py --baseline /tmp/old/certs.py --calls 4000
    python bench/certs_speed.py --baseline git:HEAD --kinds fleet-p256-ip webpki-rsa

A git revision's certs.py is loaded with that revision's der.py (the walk it calls), and so
is a certs.py file with a der.py beside it; a lone certs.py file uses this checkout's der.py.

Four kinds of leaf: the fleet's ECDSA P-256 leaves with an IP SAN (bench/out/fleet, made
here with the same shape when missing), trustme leaves (ECDSA P-256, DNS SAN), RSA-2048
leaves under an RSA-2048 intermediate, and RSA-2048 leaves shaped as a public CA issues
them (CN only, AIA, CRL distribution points, policies, an SCT list, 2 DNS names, ~1.3 kB).
Each timed loop cycles through --distinct different leaves, more than the module's caches
hold (1024 names, 256 chain entries), so a leaf is never a cache hit, as in a real scan;
what repeats in a real scan repeats here: issuers and intermediates (chain_entry(issuer) is
a hit), and the parts that every leaf of a CA has (names' attributes, most extensions),
which the module keeps too. The machine may be busy: compare versions in one run
(--baseline), not across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import ipaddress
import os
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
    """scanner.certs from a file, or from a git revision ("git:HEAD") with its der.py."""
    if not source.startswith("git:"):
        path = Path(source)
        if path.name == "certs.py" and (path.parent / "der.py").exists():
            return load_package(path.parent, label)
        return load_file(path, label)
    with tempfile.TemporaryDirectory() as scratch:
        for module in ("certs", "der"):
            text = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{source[4:]}:scanner/{module}.py"],
                check=True, capture_output=True, text=True).stdout
            (Path(scratch) / f"{module}.py").write_text(text)
        return load_package(Path(scratch), label)


def load_package(folder: Path, label: str) -> ModuleType:
    """folder's certs.py and der.py as scanner._bench_<label>.certs and .der, importing
    this checkout's scanner.hooks (the only other module they import)."""
    import scanner
    from scanner import hooks

    package = ModuleType(f"scanner._bench_{label}")
    package.__path__ = [str(folder)]
    package.__package__ = package.__name__
    sys.modules[package.__name__] = package
    sys.modules[f"{package.__name__}.hooks"] = hooks
    setattr(scanner, package.__name__.rpartition(".")[2], package)
    return importlib.import_module(f"{package.__name__}.certs")  # reads the files now


def load_file(path: Path, label: str) -> ModuleType:
    # Loaded as a module of the scanner package, so that a certs.py with relative imports
    # (`from .der import ...`) finds them: in this checkout's package, not the revision's.
    import scanner  # noqa: F401 - the parent package must exist for the relative imports

    spec = importlib.util.spec_from_file_location(f"scanner._certs_{label}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def name(cn: str, org: str = "certscan bench") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def issue(subject: x509.Name, issuer: x509.Name, key: Key, signer: Key, *,
          san: list[x509.GeneralName] | None = None) -> bytes:
    """A CA certificate, or with `san` a server leaf, with the usual extensions. Leaves may
    share a key (to save time), but each has a key identifier of its own, as if it had its
    own key."""
    identifier = x509.SubjectKeyIdentifier(os.urandom(20)) if san else (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()))
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1))
               .not_valid_after(NOW + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=not san, path_length=None), critical=True)
               .add_extension(identifier, critical=False))
    if san:
        builder = (builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
    return der(builder.sign(signer, hashes.SHA256()))


def fleet_kind(count: int) -> tuple[list[bytes], bytes]:
    """bench/out/fleet's leaves and CA, or ones made the same way."""
    paths = sorted(FLEET.glob("leaves/leaf-*.pem"), key=lambda p: int(p.stem[5:]))[:count]
    if len(paths) >= count and (FLEET / "ca.pem").exists():
        return ([der(x509.load_pem_x509_certificate(p.read_bytes())) for p in paths],
                der(x509.load_pem_x509_certificate((FLEET / "ca.pem").read_bytes())))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = name("certscan bench CA")
    addresses = [f"127.88.{i // 250 + 1}.{i % 250 + 1}" for i in range(count)]
    return ([issue(name(address), ca_name, key, ca_key,
                   san=[x509.IPAddress(ipaddress.ip_address(address))]) for address in addresses],
            issue(ca_name, ca_name, ca_key, ca_key))


def trustme_kind(count: int) -> tuple[list[bytes], bytes]:
    import trustme

    ca = trustme.CA()
    leaves = [ca.issue_cert(f"host{i}.example.org").cert_chain_pems[0].bytes()
              for i in range(count)]
    return ([der(x509.load_pem_x509_certificate(pem)) for pem in leaves],
            der(x509.load_pem_x509_certificate(ca.cert_pem.bytes())))


def rsa_kind(count: int) -> tuple[list[bytes], bytes]:
    """RSA-2048 leaves (one key, to save time) under an RSA-2048 intermediate."""
    root_key, inter_key, key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                                for _ in range(3))
    root, inter = name("Bench Root R1", "Bench Trust"), name("Bench TLS R2", "Bench Trust")
    return ([issue(name(f"www{i}.example.com", "Example Ltd"), inter, key, inter_key,
                   san=[x509.DNSName(f"www{i}.example.com"), x509.DNSName("example.com")])
             for i in range(count)], issue(inter, root, inter_key, root_key))


def webpki_rsa_kind(count: int) -> tuple[list[bytes], bytes]:
    """RSA-2048 leaves with what a public CA puts in them: one key, to save time, but each
    with its own key identifier and SCTs (as if each had its own key), as in a real scan."""
    from cryptography.x509.oid import AuthorityInformationAccessOID, ObjectIdentifier

    inter_key, key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                      for _ in range(2))
    inter = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                       x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench Encrypt"),
                       x509.NameAttribute(NameOID.COMMON_NAME, "R11")])
    sct_list = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
    leaves = []
    for i in range(count):
        host = f"www{i}.example.com"
        scts = os.urandom(240)  # two SCTs' worth of opaque bytes
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(inter).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=90))
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(os.urandom(20)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                inter_key.public_key()), critical=False)
            .add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier("http://r11.o.bench.org")),
                x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                       x509.UniformResourceIdentifier("http://r11.i.bench.org/"))]),
                critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                        x509.DNSName("example.com")]),
                           critical=False)
            .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
                x509.ObjectIdentifier("2.23.140.1.2.1"), None)]), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier("http://r11.c.bench.org/42.crl")],
                None, None, None)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(sct_list, b"\x04\x81\xf0" + scts),
                           critical=False))
        leaves.append(der(builder.sign(inter_key, hashes.SHA256())))
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return leaves, issue(inter, name("Bench Root X1", "Bench Trust"), inter_key, root_key)


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
    slow = getattr(module, "_slow_facts", None)
    return {  # the scanner: certificate_facts(chain[0]), leaf_entry, chain_entry(the rest)
        "certificate_facts(leaf)": (lambda der: facts(der, now=NOW), list(leaves)),
        "chain_entry(leaf)": (module.chain_entry, list(leaves)),
        "chain_entry(issuer)": (module.chain_entry, [issuer]),
        "leaf_entry(facts)": None if entry is None else (
            entry, [facts(der, now=NOW) for der in leaves]),
        # what a leaf costs when the fast path leaves it to cryptography
        "_slow_facts(leaf)": None if slow is None else (
            lambda der: slow(der, module._FACT_KEYS, NOW), list(leaves)),
    }


KINDS: dict[str, Callable[[int], tuple[list[bytes], bytes]]] = {
    "fleet-p256-ip": fleet_kind, "trustme-p256": trustme_kind,
    "rsa2048+intermediate": rsa_kind, "webpki-rsa": webpki_rsa_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=2000, help="different leaves per kind")
    parser.add_argument("--reps", type=int, default=5, help="best of this many loops")
    parser.add_argument("--baseline", help="another scanner/certs.py: a path or git:REV")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="kinds of certificate (default: all)")
    parser.add_argument("--rows", nargs="+", help="functions to time (default: all)")
    args = parser.parse_args()

    modules = {"new": load_module(str(REPO / "scanner" / "certs.py"), "new")}
    if args.baseline:
        modules = {"old": load_module(args.baseline, "old"), **modules}
    print(f"ms per call, CPU time, best of {args.reps} x {args.calls} calls")
    ratio = " new/old" if "old" in modules else ""
    print(f"{'certificate':<22} {'function':<25}" + "".join(f"{m:>9}" for m in modules) + ratio)
    for kind in args.kinds:
        leaves, issuer = KINDS[kind](args.distinct)
        loads = {label: workloads(module, leaves, issuer) for label, module in modules.items()}
        for row in args.rows or loads["new"]:
            best = {label: float("inf") for label in modules}
            for _ in range(args.reps):  # interleaved, so a burst of load hits all versions
                for label in modules:
                    work = loads[label][row]
                    if work:
                        best[label] = min(best[label], per_call_ms(*work, args.calls))
            cells = "".join(f"{best[m]:9.4f}" if best[m] < float("inf") else f"{'n/a':>9}"
                            for m in modules)
            if ratio and best["old"] < float("inf"):
                cells += f"{best['new'] / best['old']:8.2f}"
            print(f"{kind:<22} {row:<25}{cells}", flush=True)


if __name__ == "__main__":
    main()
