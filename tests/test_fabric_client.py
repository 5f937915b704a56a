"""The Fabric client's pieces that need no network: profiles, signatures, the wire format."""

from __future__ import annotations

import json

import pytest

from lineage_ledger import ConfigError, MissingExtra
from lineage_ledger.backends import backend_class
from tests.backend_conformance import chain_of
from tests.support.factories import make_records

pytest.importorskip("fabric_protos", reason="the fabric extra is not installed: make install-fabric")


def _identity(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tests.support.factories import BASE_TIME

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(BASE_TIME).not_valid_after(BASE_TIME.replace(year=2030))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key


def _profile(tmp_path, **fields):
    profile = {"endpoint": "127.0.0.1:1", "tls_ca": "ca.pem", "msp_id": "Org1MSP", "certificate": "cert.pem",
               "private_key": "key.pem", **fields}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    return path


def test_scheme_is_registered_with_its_extra():
    from lineage_ledger.backends.fabric import FabricBackend

    assert backend_class("fabric") is FabricBackend
    assert issubclass(MissingExtra, ConfigError)  # what a missing grpc would raise, with the hint


def test_profile_paths_are_relative_to_it_and_the_url_overrides(tmp_path):
    from lineage_ledger.backends import open_backend

    _identity(tmp_path)
    path = _profile(tmp_path, ledger="a")
    backend = open_backend(f"fabric://{path}?ledger=b&timeout=5")
    assert backend.profile.certificate == tmp_path / "cert.pem"
    assert (backend.profile.ledger, backend.profile.timeout) == ("b", 5.0)
    assert backend.identity == "fabric://127.0.0.1:1/lineage/lineage/b"  # not the profile's path
    backend.close()


@pytest.mark.parametrize("problem, fields, url_tail, message", [
    ("missing file", None, "", "No such file"),
    ("missing keys", {"msp_id": ""}, "", "lacks msp_id"),
    ("bad name", {"ledger": "a/b"}, "", "bad ledger name"),
    ("unknown parameter", {}, "?ledgr=x", "unknown parameter"),
    ("bad timeout", {"timeout": "soon"}, "", "timeout must be"),
    ("endorsers not a map", {"endorsers": ["ca.pem"]}, "", "endorsers must map MSP ids"),
    ("endorser without a CA", {"endorsers": {"Org1MSP": []}}, "", "must name one or more"),
    ("quorum of zero", {"endorsers": {"Org1MSP": "ca.pem"}, "endorsement_quorum": 0}, "", "whole number >= 1"),
    ("quorum as a flag", {"endorsement_quorum": True}, "", "whole number >= 1"),
    ("quorum above the endorsers", {"endorsers": {"Org1MSP": "ca.pem"}, "endorsement_quorum": 2}, "",
     "exceeds the 1 endorsers"),
])
def test_bad_profiles_are_config_errors(tmp_path, problem, fields, url_tail, message):
    from lineage_ledger.backends.fabric import parse_fabric_url

    path = tmp_path / "absent.json" if fields is None else _profile(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message):
        parse_fabric_url(f"fabric://{path}{url_tail}")


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path):
    from lineage_ledger.backends import open_backend

    _identity(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _identity(other)
    path = _profile(tmp_path, private_key="other/key.pem")
    with pytest.raises(ConfigError, match="does not belong"):
        open_backend(f"fabric://{path}")


def test_signatures_are_low_s_and_verify(tmp_path):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from lineage_ledger.backends.fabric._gateway import _P256_ORDER, Signer

    key = _identity(tmp_path)
    signer = Signer("Org1MSP", (tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes())
    for i in range(64):  # about half of raw ECDSA signatures are high-S
        message = b"proposal %d" % i
        signature = signer.sign(message)
        assert decode_dss_signature(signature)[1] <= _P256_ORDER // 2
        key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))


def test_wire_format_round_trips_blocks():
    from lineage_ledger.backends.fabric.backend import decode_blocks, encode_blocks

    blocks = chain_of(make_records(7), 3)
    decoded = decode_blocks(encode_blocks(blocks))
    assert [(b.height, b.id, b.header) for b in decoded] == [(b.height, b.id, b.header) for b in blocks]
    assert [[(r.id, r.body) for r in b.records] for b in decoded] == [[(r.id, r.body) for r in b.records] for b in blocks]


def test_endorsers_are_pinned_relative_to_the_profile(tmp_path):
    from lineage_ledger.backends import open_backend

    _identity(tmp_path)
    path = _profile(tmp_path, endorsers={"Org2MSP": ["ca.pem", "ca.pem"], "Org1MSP": "ca.pem"},
                    endorsement_quorum=2)
    backend = open_backend(f"fabric://{path}")
    assert backend.profile.endorsers == (("Org1MSP", (tmp_path / "ca.pem",)),
                                         ("Org2MSP", (tmp_path / "ca.pem", tmp_path / "ca.pem")))
    roots = backend.endorsement_roots()  # read from the files, no network
    assert sorted(roots) == ["Org1MSP", "Org2MSP"] and len(roots["Org2MSP"].roots) == 2
    backend.close()
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    backend = open_backend(f"fabric://{path}")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        backend.endorsement_roots()
    backend.close()


def test_unreadable_endorsed_answers_and_channel_configs_are_errors():
    from fabric_protos.common import common_pb2

    from lineage_ledger import BackendError, VerificationError
    from lineage_ledger.backends.fabric._channel import application_msp_roots
    from lineage_ledger.backends.fabric._endorsement import EndorsementRefused, verify_endorsed_answer

    assert issubclass(EndorsementRefused, VerificationError)  # exit 1, as a failed verification
    with pytest.raises(EndorsementRefused, match="not a Fabric transaction"):
        verify_endorsed_answer(b"", common_pb2.Envelope(payload=b"\xff\xff"), roots={}, quorum=1, chaincode="lineage")
    with pytest.raises(EndorsementRefused, match="holds 0 actions"):
        verify_endorsed_answer(b"", common_pb2.Envelope(payload=b""), roots={}, quorum=1, chaincode="lineage")
    for garbage in (b"\xff\xff\xff", b""):
        with pytest.raises(BackendError, match="channel configuration"):
            application_msp_roots(garbage)


def _ca_tree():
    """A root CA, an intermediate it issued, two peers under the intermediate and the
    intermediate's CRL revoking the second; a stranger CA and its peer."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name, unit, issuer=None, *, ca=False):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer_cert, signer_key = issuer or (None, key)
        cert = (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(signer_cert.subject if signer_cert else subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(signer_key, hashes.SHA256()))
        return cert, key

    root = issue("ca.org1", "ca", ca=True)
    middle = issue("ica.org1", "ca", root, ca=True)
    good, revoked = issue("peer0.org1", "peer", middle), issue("peer1.org1", "peer", middle)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(middle[0].subject).last_update(now)
           .next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(revoked[0].serial_number)
                                    .revocation_date(now).build())
           .sign(middle[1], hashes.SHA256()))
    stranger_ca = issue("ca.org1", "ca", ca=True)  # the same name, another key
    stranger = issue("peer0.org1", "peer", stranger_ca)
    return root[0], middle[0], crl, good[0], revoked[0], stranger[0], now


def test_channel_msps_bring_intermediate_cas_and_revocations():
    """The channel's MSP definition is all of it: roots, intermediates and CRLs."""
    from cryptography.hazmat.primitives import serialization
    from fabric_protos.common import configtx_pb2
    from fabric_protos.msp import identities_pb2, msp_config_pb2

    from lineage_ledger.backends.fabric._channel import application_msp_roots
    from lineage_ledger.backends.fabric._endorsement import EndorsementRefused, MSPTrust, _check_endorser

    root, middle, crl, good, revoked, stranger, now = _ca_tree()
    pem = serialization.Encoding.PEM
    fabric = msp_config_pb2.FabricMSPConfig(name="Org1MSP", root_certs=[root.public_bytes(pem)],
                                            intermediate_certs=[middle.public_bytes(pem)],
                                            revocation_list=[crl.public_bytes(pem)])
    config = configtx_pb2.Config()
    org = config.channel_group.groups["Application"].groups["Org1MSP"]
    org.values["MSP"].value = msp_config_pb2.MSPConfig(type=0, config=fabric.SerializeToString()).SerializeToString()
    trust = application_msp_roots(config.SerializeToString())
    assert list(trust) == ["Org1MSP"] and len(trust["Org1MSP"].crls) == 1

    def identity(cert, msp="Org1MSP"):
        return identities_pb2.SerializedIdentity(mspid=msp, id_bytes=cert.public_bytes(pem))

    assert _check_endorser(identity(good), trust, now) == good  # via the intermediate
    with pytest.raises(EndorsementRefused, match="is revoked"):
        _check_endorser(identity(revoked), trust, now)
    with pytest.raises(EndorsementRefused, match="no root CA of that MSP issued it"):
        _check_endorser(identity(stranger), trust, now)
    roots_only = {"Org1MSP": MSPTrust((root,))}  # the intermediate not in the MSP: no path to the root
    with pytest.raises(EndorsementRefused, match="no root CA of that MSP issued it"):
        _check_endorser(identity(good), roots_only, now)
    unrevoked = {"Org1MSP": MSPTrust((root,), (middle,))}  # no CRL: the same certificate passes
    assert _check_endorser(identity(revoked), unrevoked, now) == revoked
