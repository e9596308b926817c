"""certscan: bulk TLS certificate scanner.

The command line is `certscan scan ...` (see README). The library face:

    async for record in scanner.scan(["example.org", "192.0.2.0/30"], timeout=5):
        ...
    pem = await scanner.get_server_certificate(("example.org", 443), ca_certs="ca.pem")
"""

from __future__ import annotations

from .api import get_server_certificate, scan
from .config import ConfigError, ScanConfig
from .hooks import UnsupportedPlatform
from .record import SCHEMA_VERSION

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "ConfigError",
    "ScanConfig",
    "UnsupportedPlatform",
    "__version__",
    "get_server_certificate",
    "scan",
]
