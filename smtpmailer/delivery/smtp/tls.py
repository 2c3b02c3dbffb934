"""Client TLS options for a relay: verified against the system's roots or ``ca_file``, and
with ``cert_file`` (and ``key_file``) a client certificate to show."""

from __future__ import annotations

import functools
import os

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from smtpmailer.certificates import PEM_CERTIFICATE, load_client_certificate
from smtpmailer.config import SMTPRelayConfig


def client_tls_options(relay: SMTPRelayConfig) -> IOpenSSLClientConnectionCreator:
    """Certificate and host name are checked (service_identity) unless ``verify = false``.

    Built once per relay and ca_file version, not per connection: reading and parsing the
    CA file is blocking work on the reactor thread. A rotated ca_file (new mtime) is read
    again at the next connection.
    """
    mtime = os.stat(relay.ca_file).st_mtime_ns if relay.ca_file and relay.verify else 0
    mine = [path for path in (relay.cert_file, relay.key_file) if path]
    return _options(relay, mtime, tuple(os.stat(path).st_mtime_ns for path in mine))


@functools.lru_cache(maxsize=32)
def _options(
    relay: SMTPRelayConfig, ca_mtime: int, mine_mtime: tuple[int, ...]
) -> IOpenSSLClientConnectionCreator:
    mine = load_client_certificate(relay.cert_file, relay.key_file) if relay.cert_file else None
    if not relay.verify:
        if mine is None:
            return ssl.CertificateOptions(verify=False)
        return ssl.CertificateOptions(
            verify=False, privateKey=mine.privateKey.original, certificate=mine.original
        )
    if relay.ca_file:
        with open(relay.ca_file, "rb") as handle:
            pem = handle.read()
        certificates = [ssl.Certificate.loadPEM(block) for block in PEM_CERTIFICATE.findall(pem)]
        if not certificates:
            raise ValueError(f"ca_file {relay.ca_file} holds no PEM certificate")
        trust = ssl.trustRootFromCertificates(certificates)
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(relay.host, trustRoot=trust, clientCertificate=mine)
