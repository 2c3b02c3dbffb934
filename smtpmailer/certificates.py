"""The PEM files TLS is given: a relay's client certificate and its key, read and checked
to be a pair. Here, not in delivery/, because the config checks them when it is loaded."""

from __future__ import annotations

import re

from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet import ssl
from twisted.internet.error import VerifyError

PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class CertificateFileError(ValueError):
    """What is wrong, and ``key``: the config key (cert_file or key_file) naming the file."""

    def __init__(self, key: str, text: str) -> None:
        super().__init__(text)
        self.key = key


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise CertificateFileError(key, f"{key}: cannot read {path}: {error.strerror}") from None


def load_client_certificate(cert_file: str, key_file: str | None) -> ssl.PrivateCertificate:
    """The certificate and its key (in cert_file, or in key_file); CertificateFileError
    saying which file is wrong and how."""
    cert_pem = _read("cert_file", cert_file)
    key_pem = _read("key_file", key_file) if key_file else cert_pem
    blocks = PEM_CERTIFICATE.findall(cert_pem)
    if not blocks:
        raise CertificateFileError("cert_file", f"cert_file {cert_file} holds no PEM certificate")
    try:
        key = ssl.KeyPair.load(key_pem, FILETYPE_PEM)
    except Exception:  # OpenSSL's own errors say little a user can act on
        key_name = "key_file" if key_file else "cert_file"
        text = f"{key_name} {key_file or cert_file} holds no PEM private key"
        text += " (or one with a passphrase)"
        raise CertificateFileError(key_name, text) from None
    try:
        return ssl.PrivateCertificate.load(blocks[0], key, FILETYPE_PEM)
    except VerifyError:
        raise CertificateFileError(
            "cert_file", f"cert_file {cert_file}: the certificate is not for that key"
        ) from None
