"""The cluster CA and this host's certificates, without servers: making, checking, rotating."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from unittest import mock

import pytest
from cryptography import x509

from videodb import certs
from videodb.cluster import tls
from videodb.cluster.rotate import CAPhase, _phase_material
from videodb.config import Settings, load_settings
from videodb.errors import ConfigError
from videodb.layout import ServiceUser, StateLayout, tls_files
from videodb.secrets import (
    CAMaterial,
    create_bundle,
    read_bundle,
    with_bundle_password,
    write_bundle,
)

ME = ServiceUser("me", os.geteuid(), os.getegid())
EXAMPLE = Path(__file__).parents[2] / "examples" / "cluster.toml"


def quiet(_: str) -> None:
    return None


def names(path: Path) -> set[str]:
    return set(certs.cert_info(path, certs.read_certs(path)[0]).names)


def single(tmp_path: Path) -> tuple[Settings, StateLayout]:
    settings = Settings(state_dir=tmp_path)
    return settings, StateLayout(tmp_path)


def test_a_new_ca_signs_host_certificates_with_their_names_and_their_own_keys() -> None:
    ca = certs.new_authority("test CA")
    one = certs.issue(ca, "db1", dns=["db1", "video-postgres"], ips=["10.0.0.11", "127.0.0.1"])
    two = certs.issue(ca, "db2", dns=["db2"], ips=["10.0.0.12"])
    assert one.key_pem != two.key_pem  # never one key for every host
    cert = x509.load_pem_x509_certificate(one.cert_pem.encode())
    assert certs.signed_by(cert, ca.cert)
    assert not certs.signed_by(cert, certs.new_authority("another CA").cert)
    info = certs.cert_info(Path("x"), cert)
    assert {"db1", "video-postgres", "10.0.0.11", "127.0.0.1"} == set(info.names)
    assert 800 < info.days_left() <= certs.LEAF_DAYS


def test_load_authority_refuses_a_leaf_a_mismatched_key_and_garbage() -> None:
    ca = certs.new_authority("CA")
    other = certs.new_authority("other")
    leaf = certs.issue(ca, "leaf")
    with pytest.raises(ConfigError, match="not a CA"):
        certs.load_authority(leaf.cert_pem, leaf.key_pem, "mine.pem")
    with pytest.raises(ConfigError, match="do not belong together"):
        certs.load_authority(ca.cert_pem, other.key_pem, "mine.pem")
    with pytest.raises(ConfigError, match=r"mine\.pem cannot be read"):
        certs.load_authority("not pem", ca.key_pem, "mine.pem")
    assert certs.load_authority(ca.cert_pem, ca.key_pem, "mine.pem").cert == ca.cert


def test_first_start_makes_the_files_private_and_names_this_host(tmp_path: Path) -> None:
    settings, layout = single(tmp_path)
    tls.ensure_host_certs(settings, layout, ME, quiet)
    files = tls_files(layout)
    leaves = [p for pair in files.leaves() for p in pair]
    for path in (files.ca, *leaves):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert files.root.stat().st_mode & 0o777 == 0o700
    assert names(files.cert) == {"local", "localhost", "video-postgres", "127.0.0.1"}
    replicator = certs.read_certs(files.replicator_cert)[0]
    assert replicator.subject.rfc4514_string() == "CN=replicator"
    monitor = certs.read_certs(files.monitor_cert)[0]
    assert monitor.subject.rfc4514_string() == "CN=videodb_monitor"
    # the CA key stays in the secrets directory, never beside the host's files
    assert layout.secret("ca.key").exists()
    assert not any("ca.key" in p.name for p in files.root.iterdir())


def test_start_names_a_missing_an_expired_or_a_foreign_certificate(tmp_path: Path) -> None:
    settings, layout = single(tmp_path)
    tls.ensure_host_certs(settings, layout, ME, quiet)
    files = tls_files(layout)
    files.key.rename(tmp_path / "kept")
    with pytest.raises(ConfigError, match=rf"{files.key} is missing.*rotate certs"):
        tls.ensure_host_certs(settings, layout, ME, quiet)
    (tmp_path / "kept").rename(files.key)

    material = tls.load_ca(settings, layout)
    ca = tls.authority(settings, layout, material)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    with mock.patch.object(certs, "_now", return_value=past):
        old = certs.issue(ca, "local", dns=["local"], days=1)
    files.cert.write_text(old.cert_pem)
    with pytest.raises(ConfigError, match=rf"{files.cert} expired on .*rotate certs"):
        tls.ensure_host_certs(settings, layout, ME, quiet)

    foreign = certs.issue(certs.new_authority("elsewhere"), "local", dns=["local"])
    files.cert.write_text(foreign.cert_pem)
    with pytest.raises(ConfigError, match="not signed by the cluster CA"):
        tls.ensure_host_certs(settings, layout, ME, quiet)


def test_a_changed_address_gets_new_certificates_at_start(tmp_path: Path) -> None:
    settings, layout = single(tmp_path)
    tls.ensure_host_certs(settings, layout, ME, quiet)
    moved = Settings(state_dir=tmp_path, listen_host="127.0.0.2")
    said: list[str] = []
    tls.ensure_host_certs(moved, layout, ME, said.append)
    assert "127.0.0.2" in names(tls_files(layout).cert)
    assert any("changed" in s for s in said)


def test_status_warns_before_expiry(tmp_path: Path) -> None:
    settings, layout = single(tmp_path)
    tls.ensure_host_certs(settings, layout, ME, quiet)
    assert not any(c.warn for c in tls.certificate_status(settings, layout))
    soon = settings.model_copy(update={"tls": settings.tls.model_copy(update={"warn_days": 900})})
    warned = {c.role for c in tls.certificate_status(soon, layout) if c.warn}
    assert warned == {"host", "replicator", "monitor"}  # the CA lasts ten years


def test_ca_phases_trust_both_then_sign_with_the_new_then_drop_the_old() -> None:
    old = tls.ca_material("video")
    trusting = _phase_material(old, CAPhase.TRUST, None, "video", old.trust_pem)
    assert trusting.cert_pem == old.cert_pem  # still signing with the old one
    assert trusting.next_cert_pem and trusting.trust_pem.count("BEGIN CERTIFICATE") == 2
    # on another host (the bundle copied): the same new CA, not a third one
    again = _phase_material(trusting, CAPhase.TRUST, None, "video", old.trust_pem)
    assert again == trusting
    swapped = _phase_material(trusting, CAPhase.REISSUE, None, "video", trusting.trust_pem)
    assert swapped.cert_pem == trusting.next_cert_pem and swapped.previous_pem == old.cert_pem
    with pytest.raises(ConfigError, match="past its trust phase"):
        _phase_material(swapped, CAPhase.TRUST, None, "video", swapped.trust_pem)
    done = _phase_material(swapped, CAPhase.FINISH, None, "video", swapped.trust_pem)
    assert done.trust_pem == swapped.cert_pem
    # another host whose bundle copy is finished already still drops the old CA from its trust
    assert _phase_material(done, CAPhase.FINISH, None, "video", swapped.trust_pem) == done
    with pytest.raises(ConfigError, match="no CA rotation is under way"):
        _phase_material(done, CAPhase.FINISH, None, "video", done.trust_pem)
    with pytest.raises(ConfigError, match="reissue' on every host first"):
        _phase_material(trusting, CAPhase.FINISH, None, "video", trusting.trust_pem)


def test_the_bundle_keeps_the_ca_and_a_rotation_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml.secrets"
    ca = tls.ca_material("video")
    create_bundle(path, ca)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_bundle(path).ca == ca
    assert "replication" not in path.read_text()  # the replication role has no password
    rotating = CAMaterial(ca.cert_pem, ca.key_pem, "", "NEXT", "NEXTKEY")
    write_bundle(path, read_bundle(path).with_ca(rotating))
    assert read_bundle(path).ca == rotating


def test_your_own_ca_is_checked(tmp_path: Path) -> None:
    own = certs.new_authority("corp CA")
    (tmp_path / "ca.pem").write_text(own.cert_pem)
    (tmp_path / "ca.key").write_text(own.key_pem)
    material = tls.ca_material("video", tmp_path / "ca.pem", tmp_path / "ca.key")
    assert material.cert_pem == own.cert_pem
    with pytest.raises(ConfigError, match="go together"):
        tls.ca_material("video", tmp_path / "ca.pem", None)
    with pytest.raises(ConfigError, match="cannot read"):
        tls.ca_material("video", tmp_path / "nope.pem", tmp_path / "ca.key")


def test_a_rotated_app_password_is_used_unless_one_is_given(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    layout.secrets.mkdir()
    (layout.secrets / "app.password").write_text("rotated\n")
    config = tmp_path / "platform.toml"
    config.write_text("")
    plain = load_settings(config, env={}, assignments=[f"state_dir={tmp_path}"])
    assert with_bundle_password(plain).settings.database.app_password.get_secret_value() == (
        "rotated"
    )
    given = load_settings(
        config, env={"DB_PASSWORD": "mine"}, assignments=[f"state_dir={tmp_path}"]
    )
    assert with_bundle_password(given).settings.database.app_password.get_secret_value() == "mine"


@pytest.mark.parametrize(
    ("status", "routes"), [("UP", True), ("UP 1/2", True), ("DOWN", False), (None, False)]
)
def test_a_replica_out_of_reach_counts_as_replayed_only_when_the_read_port_skips_it(
    monkeypatch: pytest.MonkeyPatch, status: str | None, routes: bool
) -> None:
    """rotate password app waits for every replica to replay the change; one it cannot reach is
    passed over only when this host's read port sends it no reads (None: no HAProxy answers)."""
    from videodb.cluster import rotate
    from videodb.cluster.haproxy_stats import ServerStatus
    from videodb.cluster.render import READ_BACKEND
    from videodb.config import Settings
    from videodb.errors import NotRunningError

    def servers(_settings: Settings) -> list[ServerStatus]:
        if status is None:
            raise NotRunningError("HAProxy stats not reachable")
        line = ServerStatus(READ_BACKEND, "postgres-video-slave", status, 0, 0, None, None, "", 0)
        return [line]

    monkeypatch.setattr(rotate, "fetch_server_status", servers)
    assert rotate.read_port_routes_to(Settings(), "postgres-video-slave") is routes
    assert rotate.read_port_routes_to(Settings(), "postgres-video-master") is False
