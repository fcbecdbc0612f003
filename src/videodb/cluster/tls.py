"""The cluster's certificates on this host: where they live, making them, checking them at start,
and the TLS context the CLI's own clients (Patroni REST, etcd) use.

The CA (certificate and key) is the cluster's: in the secrets bundle across hosts, in
`secrets/ca.crt` + `secrets/ca.key` on one machine. Each host makes its own keys and has them
signed by the CA (no key is shared between hosts), under `conf/tls/` (0700, the service user's):

    ca.crt           the CAs this host trusts (two during 'rotate ca')
    host.crt/.key    this host's identity: PostgreSQL, etcd (client and peer), Patroni's REST API
                     (server, and client of the other members); SANs: the host's name and address,
                     localhost, 127.0.0.1, and the PostgreSQL service name (verify-full through
                     HAProxy)
    replicator.crt/.key  a client certificate for the replication role (CN = its name): replicas
                     and pg_basebackup log in with it; the role has no password
    monitor.crt/.key     the same for the monitoring role (pg_monitor only): the postgres
                     exporters log in with it
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from videodb.certs import (
    Authority,
    CertInfo,
    cert_info,
    issue,
    load_authority,
    new_authority,
    read_certs,
    signed_by,
)
from videodb.config import Settings
from videodb.errors import ConfigError
from videodb.layout import ServiceUser, StateLayout, TLSFiles, resolve_layout, tls_files
from videodb.secrets import CAMaterial, SecretsBundle, read_bundle, write_bundle, write_private

Progress = Callable[[str], None]

LOCAL_CA_CERT = "ca.crt"
LOCAL_CA_KEY = "ca.key"
LOCAL_CA_PREVIOUS = "ca-previous.crt"
LOCAL_CA_NEXT_CERT = "ca-next.crt"
LOCAL_CA_NEXT_KEY = "ca-next.key"


# -- the CA ----------------------------------------------------------------------------------


def _where(settings: Settings, layout: StateLayout) -> str:
    bundle = settings.secrets_bundle
    return str(bundle) if bundle is not None else str(layout.secret(LOCAL_CA_CERT))


def load_ca(settings: Settings, layout: StateLayout, *, create: bool = False) -> CAMaterial:
    """The cluster CA: the bundle's across hosts, else this state directory's (made when
    `create` and there is none yet: a new single-host platform)."""
    if settings.secrets_bundle is not None:
        ca = read_bundle(settings.secrets_bundle).ca
        if ca is None:
            raise ConfigError(
                f"the secrets bundle {settings.secrets_bundle} holds no cluster CA (it was made "
                "before TLS); add one with 'platform.sh cluster init FILE' (the passwords are "
                "kept), copy the bundle to every host, and restart each host's part"
            )
        return ca
    cert, key = layout.secret(LOCAL_CA_CERT), layout.secret(LOCAL_CA_KEY)
    if cert.exists() and key.exists():

        def text(name: str) -> str:
            path = layout.secret(name)
            return path.read_text(encoding="utf-8") if path.exists() else ""

        return CAMaterial(
            text(LOCAL_CA_CERT),
            text(LOCAL_CA_KEY),
            text(LOCAL_CA_PREVIOUS),
            text(LOCAL_CA_NEXT_CERT),
            text(LOCAL_CA_NEXT_KEY),
        )
    if cert.exists() != key.exists():
        missing = key if cert.exists() else cert
        raise ConfigError(
            f"the cluster CA is incomplete: {missing} is missing; put back both {cert} and "
            f"{key} (your own CA: see docs/operator-guide.md, 'Certificates'), or replace the CA "
            "with 'platform.sh rotate ca'"
        )
    if not create:
        raise ConfigError(f"no cluster CA in {cert}; 'platform.sh start video' makes one")
    authority = new_authority(f"{settings.patroni.scope} cluster CA")
    material = CAMaterial(authority.cert_pem, authority.key_pem)
    save_ca(settings, layout, material)
    return material


def save_ca(settings: Settings, layout: StateLayout, material: CAMaterial) -> None:
    if settings.secrets_bundle is not None:
        bundle = read_bundle(settings.secrets_bundle)
        write_bundle(settings.secrets_bundle, bundle.with_ca(material))
        return
    layout.secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.secrets, 0o700)
    for name, text in (
        (LOCAL_CA_KEY, material.key_pem),
        (LOCAL_CA_CERT, material.cert_pem),
        (LOCAL_CA_PREVIOUS, material.previous_pem),
        (LOCAL_CA_NEXT_KEY, material.next_key_pem),
        (LOCAL_CA_NEXT_CERT, material.next_cert_pem),
    ):
        if text:
            write_private(layout.secret(name), text)
        else:
            layout.secret(name).unlink(missing_ok=True)


def authority(settings: Settings, layout: StateLayout, material: CAMaterial) -> Authority:
    return load_authority(material.cert_pem, material.key_pem, _where(settings, layout))


# -- this host's certificates -------------------------------------------------------------


def host_names(settings: Settings) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) in this host's certificate."""
    this = settings.this_host()
    dns = [this.name, "localhost", settings.postgres_tls_name()]
    ips = [this.address, "127.0.0.1"]
    return dns, ips


def _write_pair(path_cert: Path, path_key: Path, cert: str, key: str, user: ServiceUser) -> None:
    for path, text in ((path_key, key), (path_cert, cert)):
        write_private(path, text)
        if not user.is_current:
            os.chown(path, user.uid, user.gid)


def _write_trust(files: TLSFiles, material: CAMaterial, user: ServiceUser) -> None:
    write_private(files.ca, material.trust_pem)
    if not user.is_current:
        os.chown(files.ca, user.uid, user.gid)


def _own_dir(files: TLSFiles, user: ServiceUser) -> None:
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    if not user.is_current:
        os.chown(files.root, user.uid, user.gid)


def issue_host_certs(
    settings: Settings, layout: StateLayout, user: ServiceUser, material: CAMaterial
) -> None:
    """New keys and certificates for this host from the CA (the trust file too)."""
    files = tls_files(layout)
    _own_dir(files, user)
    _write_trust(files, material, user)
    ca = authority(settings, layout, material)
    dns, ips = host_names(settings)
    days = settings.tls.host_cert_days
    host = issue(ca, settings.this_host().name, dns=dns, ips=ips, days=days)
    _write_pair(files.cert, files.key, host.cert_pem, host.key_pem, user)
    _issue_monitor(settings, files, ca, user)
    replicator = issue(ca, settings.database.replication_user, server=False, days=days)
    _write_pair(
        files.replicator_cert, files.replicator_key, replicator.cert_pem, replicator.key_pem, user
    )


def _issue_monitor(settings: Settings, files: TLSFiles, ca: Authority, user: ServiceUser) -> None:
    monitor = issue(
        ca, settings.database.monitor_user, server=False, days=settings.tls.host_cert_days
    )
    _write_pair(files.monitor_cert, files.monitor_key, monitor.cert_pem, monitor.key_pem, user)


def _covers(cert: x509.Certificate, settings: Settings) -> bool:
    dns, ips = host_names(settings)
    names = set(cert_info(Path(), cert).names)
    return set(dns) | set(ips) <= names


def ensure_host_certs(
    settings: Settings, layout: StateLayout, user: ServiceUser, progress: Progress
) -> None:
    """At start: make this host's certificates on a first start; afterwards check them, and
    refuse (naming the file and the fix) a missing, expired or foreign one. A certificate whose
    names no longer match the cluster file (an address changed) is made again."""
    files = tls_files(layout)
    material = load_ca(settings, layout, create=settings.secrets_bundle is None)
    existing = [p for pair in files.leaves() for p in pair if p.exists()]
    if not existing:
        progress(f"making this host's certificates under {files.root}")
        issue_host_certs(settings, layout, user, material)
        return
    _own_dir(files, user)
    _write_trust(files, material, user)
    if not files.monitor_cert.exists() and not files.monitor_key.exists():
        # Certificates made before the monitoring role had one: add it, keep the rest.
        progress("making the monitoring role's client certificate")
        _issue_monitor(settings, files, authority(settings, layout, material), user)
    trusted = x509.load_pem_x509_certificates(material.trust_pem.encode())
    now = dt.datetime.now(dt.UTC)
    for ca in trusted:
        if ca.not_valid_after_utc <= now:
            raise ConfigError(
                f"the cluster CA ({ca.subject.rfc4514_string()}, in {_where(settings, layout)}) "
                f"expired on {ca.not_valid_after_utc:%Y-%m-%d}; replace it with "
                "'platform.sh rotate ca' (see docs/operator-guide.md, 'Certificates')"
            )
    for cert_path, key_path in files.leaves():
        for path in (cert_path, key_path):
            if not path.exists():
                raise ConfigError(
                    f"{path} is missing; make this host's certificates again with "
                    "'platform.sh rotate certs' (then start again)"
                )
        cert = read_certs(cert_path)[0]
        if cert.not_valid_after_utc <= now:
            raise ConfigError(
                f"certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                "UTC; make new ones with 'platform.sh rotate certs' (then start again)"
            )
        if not any(signed_by(cert, ca) for ca in trusted):
            raise ConfigError(
                f"certificate {cert_path} was not signed by the cluster CA "
                f"({cert.issuer.rfc4514_string()}); make new ones with 'platform.sh rotate certs'"
            )
    if not _covers(read_certs(files.cert)[0], settings):
        progress("this host's name or address changed: making its certificates again")
        issue_host_certs(settings, layout, user, material)


@dataclass(frozen=True)
class CertStatus:
    info: CertInfo
    role: str  # "CA", "host", "replicator", "monitor"
    warn: bool  # expires within tls.warn_days

    def to_json(self) -> dict[str, object]:
        return {
            "file": str(self.info.path),
            "role": self.role,
            "subject": self.info.subject,
            "issuer": self.info.issuer,
            "not_after": self.info.not_after.isoformat(),
            "days_left": round(self.info.days_left(), 1),
            "names": list(self.info.names),
            "warning": self.warn,
        }


def certificate_status(settings: Settings, layout: StateLayout) -> list[CertStatus]:
    """Every certificate this host uses, with its expiry (empty before the first start)."""
    files = tls_files(layout)
    found: list[CertStatus] = []
    for path, role in (
        (files.ca, "CA"),
        (files.cert, "host"),
        (files.replicator_cert, "replicator"),
        (files.monitor_cert, "monitor"),
    ):
        if not path.exists():
            continue
        try:
            certs = read_certs(path)
        except ConfigError:
            continue
        for cert in certs:
            info = cert_info(path, cert)
            found.append(CertStatus(info, role, info.days_left() < settings.tls.warn_days))
    return found


# -- the CLI's own TLS clients ------------------------------------------------------------

_contexts: dict[tuple[Path, float, float], ssl.SSLContext] = {}


def client_context(settings: Settings) -> ssl.SSLContext:
    """Trust the cluster CA and present this host's certificate (Patroni's unsafe endpoints and
    etcd require one). Before the first start there are no files: the context then trusts the
    system's CAs only, and every cluster connection fails to verify, as it should."""
    files = tls_files(resolve_layout(settings))
    try:
        key = (files.root, files.ca.stat().st_mtime, files.cert.stat().st_mtime)
    except OSError:
        return ssl.create_default_context()
    context = _contexts.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=str(files.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # not readable by this user: the server is verified, no client certificate offered
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_cert_chain(str(files.cert), str(files.key))
        _contexts.clear()
        _contexts[key] = context
    return context


def ca_material(scope: str, cert: Path | None = None, key: Path | None = None) -> CAMaterial:
    """A new cluster CA, or the operator's own (--ca-cert/--ca-key), checked."""
    if cert is None and key is None:
        made = new_authority(f"{scope} cluster CA")
        return CAMaterial(made.cert_pem, made.key_pem)
    if cert is None or key is None:
        raise ConfigError("--ca-cert and --ca-key go together: give both, or neither")
    try:
        cert_pem, key_pem = cert.read_text(encoding="utf-8"), key.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename} ({exc.strerror})") from exc
    own = load_authority(cert_pem, key_pem, f"{cert} + {key}")
    if own.cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(f"the CA in {cert} expired on {own.cert.not_valid_after_utc:%Y-%m-%d}")
    return CAMaterial(cert_pem, key_pem)


def same_cluster(layout: StateLayout, bundle: SecretsBundle) -> bool:
    """The bundle's CA is one this host already trusts: the bundle is this cluster's."""
    trust = tls_files(layout).ca
    if bundle.ca is None or not trust.exists():
        return False
    trusted = {c.fingerprint(hashes.SHA256()) for c in read_certs(trust)}
    ours = x509.load_pem_x509_certificates(bundle.ca.trust_pem.encode())
    return any(c.fingerprint(hashes.SHA256()) in trusted for c in ours)
