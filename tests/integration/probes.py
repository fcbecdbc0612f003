"""HTTPS probes the TLS tests share: what a client with a given certificate is answered."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from pathlib import Path


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Trusting `ca`; presenting `cert` and `key` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def https_status(
    url: str, context: ssl.SSLContext, password: str | None = None, method: str | None = None
) -> int | str:
    """The HTTP status, or "refused: why" when TLS or the connection failed. POST (with Patroni's
    API password: /reload and the like) when a password is given, else GET, unless `method`."""
    method = method or ("POST" if password is not None else "GET")
    request = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method)
    if password is not None:
        token = base64.b64encode(f"patroni:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ssl.SSLError) as exc:
        return f"refused: {exc}"
