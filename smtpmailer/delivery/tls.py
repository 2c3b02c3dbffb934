"""Client TLS options for a relay: verified against the system's roots or ``ca_file``."""

from __future__ import annotations

import re

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from smtpmailer.config import RelayConfig

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def client_tls_options(relay: RelayConfig) -> IOpenSSLClientConnectionCreator:
    """Certificate and host name are checked (service_identity) unless ``verify = false``."""
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
