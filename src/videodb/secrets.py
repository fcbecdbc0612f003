"""Generated passwords, kept in 0600 files under the state directory and never printed."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import SecretStr

from videodb.config import LoadedSettings
from videodb.errors import ConfigError, NotRunningError
from videodb.layout import StateLayout, resolve_layout

SUPERUSER_FILE = "superuser.password"
API_FILE = "patroni-api.password"
APP_FILE = "app.password"  # the application role's, once 'rotate password app' made one


@dataclass(frozen=True)
class ClusterSecrets:
    """The passwords of the superuser and of Patroni's REST API. The replication role has none:
    it logs in with a client certificate (cluster/tls.py)."""

    superuser_password: str
    api_password: str

    def __repr__(self) -> str:  # never leak a password through a log or a traceback
        return "ClusterSecrets(********)"


def write_private(path: Path, text: str) -> None:
    """Create or replace `path` with mode 0600 from the start (no window where others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_or_create(path: Path) -> str:
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = secrets.token_urlsafe(32)
    write_private(path, value + "\n")
    return value


def bundle_path(cluster_file: Path) -> Path:
    """Where `cluster init FILE` puts the cluster's shared secrets: FILE.secrets, beside it."""
    return cluster_file.with_name(cluster_file.name + ".secrets")


@dataclass(frozen=True)
class CAMaterial:
    """The cluster CA as PEM text: the one that signs (`cert_pem`, `key_pem`), and during
    'rotate ca' the others every host trusts meanwhile: `next_*` (made, not signing yet: the
    'trust' phase) or `previous_pem` (replaced, still trusted until the 'finish' phase)."""

    cert_pem: str
    key_pem: str
    previous_pem: str = ""
    next_cert_pem: str = ""
    next_key_pem: str = ""

    def __repr__(self) -> str:
        return "CAMaterial(********)"

    @property
    def trust_pem(self) -> str:
        return self.cert_pem + self.previous_pem + self.next_cert_pem


@dataclass(frozen=True)
class SecretsBundle:
    """The secrets every host of one cluster shares, in one 0600 JSON file to copy to each."""

    cluster: ClusterSecrets
    app_password: str
    ca: CAMaterial | None = None
    # SeaweedFS's S3 gateway identity (storage.backend = "seaweedfs"); empty in a bundle made
    # before it ('cluster init' adds it)
    storage_secret: str = ""

    def __repr__(self) -> str:
        return "SecretsBundle(********)"

    def with_ca(self, ca: CAMaterial) -> SecretsBundle:
        return replace(self, ca=ca)

    def with_storage_secret(self) -> SecretsBundle:
        return replace(self, storage_secret=secrets.token_urlsafe(32))

    def with_passwords(
        self, *, superuser: str | None = None, api: str | None = None, app: str | None = None
    ) -> SecretsBundle:
        cluster = ClusterSecrets(
            superuser or self.cluster.superuser_password, api or self.cluster.api_password
        )
        return replace(self, cluster=cluster, app_password=app or self.app_password)


def write_bundle(path: Path, bundle: SecretsBundle) -> None:
    data: dict[str, str] = {
        "superuser_password": bundle.cluster.superuser_password,
        "api_password": bundle.cluster.api_password,
        "app_password": bundle.app_password,
    }
    if bundle.storage_secret:
        data["storage_secret"] = bundle.storage_secret
    if bundle.ca is not None:
        data.update(ca_cert=bundle.ca.cert_pem, ca_key=bundle.ca.key_pem)
        if bundle.ca.previous_pem:
            data["ca_previous"] = bundle.ca.previous_pem
        if bundle.ca.next_cert_pem:
            data.update(ca_next_cert=bundle.ca.next_cert_pem, ca_next_key=bundle.ca.next_key_pem)
    write_private(path, json.dumps(data, indent=2) + "\n")


def create_bundle(path: Path, ca: CAMaterial, *, force: bool = False) -> SecretsBundle:
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists already: this cluster's secrets were made before; copy that file to "
            "each host (making new ones would lock the running hosts out)"
        )
    bundle = SecretsBundle(
        ClusterSecrets(secrets.token_urlsafe(32), secrets.token_urlsafe(32)),
        secrets.token_urlsafe(24),
        ca,
        secrets.token_urlsafe(32),
    )
    write_bundle(path, bundle)
    return bundle


def read_bundle(path: Path) -> SecretsBundle:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ca = None
        if data.get("ca_cert") and data.get("ca_key"):
            ca = CAMaterial(
                data["ca_cert"],
                data["ca_key"],
                data.get("ca_previous", ""),
                data.get("ca_next_cert", ""),
                data.get("ca_next_key", ""),
            )
        return SecretsBundle(
            ClusterSecrets(data["superuser_password"], data["api_password"]),
            data["app_password"],
            ca,
            data.get("storage_secret", ""),
        )
    except FileNotFoundError:
        raise ConfigError(
            f"the cluster's secrets bundle {path} does not exist; make it once with "
            "'platform.sh cluster init CLUSTER_FILE' and copy it to every host beside the file"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the cluster's secrets bundle {path} cannot be read ({exc!r}); copy it again from "
            "the host where 'platform.sh cluster init' made it"
        ) from exc


def with_bundle_password(loaded: LoadedSettings) -> LoadedSettings:
    """The application password: given explicitly (config, DB_PASSWORD, --set), else the
    cluster's bundle's, else the one 'rotate password app' stored in the state directory."""
    s = loaded.settings
    if "database.app_password" in loaded.sources:
        return loaded
    if s.secrets_bundle is not None:
        app_password = SecretStr(read_bundle(s.secrets_bundle).app_password)
    else:
        stored = resolve_layout(s).secret(APP_FILE)
        try:
            value = stored.read_text(encoding="utf-8").strip()
        except OSError:
            return loaded
        if not value:
            return loaded
        app_password = SecretStr(value)
    database = s.database.model_copy(update={"app_password": app_password})
    loaded.settings = s.model_copy(update={"database": database})
    return loaded


def install_bundle(layout: StateLayout, bundle: SecretsBundle, *, replace: bool = False) -> None:
    """Put the bundle's secrets in this state directory, refusing another cluster's secrets
    (unless `replace`: a rotated password, applied by 'rotate password')."""
    layout.secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.secrets, 0o700)
    wanted = {
        SUPERUSER_FILE: bundle.cluster.superuser_password,
        API_FILE: bundle.cluster.api_password,
    }
    for name, value in wanted.items():
        path = layout.secret(name)
        if (
            not replace
            and path.exists()
            and path.read_text(encoding="utf-8").strip() not in ("", value)
        ):
            raise ConfigError(
                f"{path} holds another cluster's secret than the bundle; this state directory "
                "belongs to another cluster: use another --state-dir, or 'destroy' this one"
            )
    for name, value in wanted.items():
        write_private(layout.secret(name), value + "\n")


def ensure_secrets(layout: StateLayout) -> ClusterSecrets:
    layout.secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.secrets, 0o700)
    return ClusterSecrets(
        superuser_password=_load_or_create(layout.secret(SUPERUSER_FILE)),
        api_password=_load_or_create(layout.secret(API_FILE)),
    )


def load_secrets(layout: StateLayout) -> ClusterSecrets:
    files = [layout.secret(n) for n in (SUPERUSER_FILE, API_FILE)]
    if not all(f.exists() for f in files):
        raise NotRunningError(
            f"no cluster secrets under {layout.secrets}; start the platform first "
            "('platform.sh start video')"
        )
    su, api = (f.read_text(encoding="utf-8").strip() for f in files)
    return ClusterSecrets(superuser_password=su, api_password=api)


def write_pgpass(layout: StateLayout, host: str, superuser: str, password: str) -> Path:
    """A libpq password file for the CLI's own psql / pg_dump runs (PGPASSFILE)."""
    path = layout.pgpass()
    write_private(path, f"{host}:*:*:{superuser}:{password}\n")
    return path
