"""Client TLS options for a relay: verified against the system's roots or ``ca_file``."""

from __future__ import annotations

import functools
import os
import re

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from smtpmailer.config import SMTPRelayConfig

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def client_tls_options(relay: SMTPRelayConfig) -> IOpenSSLClientConnectionCreator:
    """Certificate and host name are checked (service_identity) unless ``verify = false``.

    Built once per relay and ca_file version, not per connection: reading and parsing the
    CA file is blocking work on the reactor thread. A rotated ca_file (new mtime) is read
    again at the next connection.
    """
    mtime = os.stat(relay.ca_file).st_mtime_ns if relay.ca_file and relay.verify else 0
    return _options(relay, mtime)


@functools.lru_cache(maxsize=32)
def _options(relay: SMTPRelayConfig, ca_mtime: int) -> IOpenSSLClientConnectionCreator:
    if not relay.verify:
        return ssl.CertificateOptions(verify=False)
    if relay.ca_file:
        with open(relay.ca_file, "rb") as handle:
            pem = handle.read()
        certificates = [ssl.Certificate.loadPEM(block) for block in _PEM_CERT.findall(pem)]
        if not certificates:
            raise ValueError(f"ca_file {relay.ca_file} holds no PEM certificate")
        trust = ssl.trustRootFromCertificates(certificates)
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(relay.host, trustRoot=trust)
