"""Which certificate a server presents right now (to confirm a reload took the new one)."""

from __future__ import annotations

import socket
import ssl
import struct

from cryptography import x509

SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL's "let us speak TLS"


def _reader() -> ssl.SSLContext:
    """Reads the certificate only; trust is checked by the real clients, not here."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_serial(address: str, port: int, *, postgres: bool, timeout: float = 2.0) -> int | None:
    """The serial number of the certificate served on address:port (None: no TLS answer)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            if postgres:
                sock.sendall(SSL_REQUEST)
                if sock.recv(1) != b"S":
                    return None
            with _reader().wrap_socket(sock, server_hostname=address) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None
