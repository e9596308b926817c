"""How long scanner.certs takes per certificate, in CPU time (time.process_time).

    python bench/certs_speed.py                      # this checkout's scanner/certs.py
    python bench/certs_speed.py --baseline git:HEAD  # ... and another version, interleaved
    python bench/certs_speed.py --baseline /tmp/old_certs.py --calls 4000

Three kinds of leaf: the fleet's ECDSA P-256 leaves with an IP SAN (bench/out/fleet, made
here with the same shape when missing), trustme leaves (ECDSA P-256, DNS SAN), and RSA-2048
leaves under an RSA-2048 intermediate. Each timed loop cycles through --distinct different
leaves, more than the module's caches hold (1024 names, 256 chain entries), so a leaf is
never a cache hit, as in a real scan; issuers and intermediates repeat, as in a real scan,
so chain_entry(issuer) is. The machine may be busy: compare versions in one run
(--baseline), not across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import ipaddress
import subprocess
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
    if not source.startswith("git:"):
        return load_file(Path(source), label)
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{source[4:]}:scanner/certs.py"],
                          check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "certs.py").write_text(text)
        return load_file(Path(scratch) / "certs.py", label)


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
    """A CA certificate, or with `san` a server leaf, with the usual extensions."""
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1))
               .not_valid_after(NOW + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=not san, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
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
    ratio = " new/old" if "old" in modules else ""
    print(f"{'certificate':<22} {'function':<25}" + "".join(f"{m:>9}" for m in modules) + ratio)
    for kind, make in kinds.items():
        leaves, issuer = make(args.distinct)
        loads = {label: workloads(module, leaves, issuer) for label, module in modules.items()}
        for row in loads["new"]:
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
