"""HTTPS with server.tls_cert / server.tls_key: a self-signed certificate made here, the app served by uvicorn
on a loopback port with the arguments `serve` gives it, and an httpx client that trusts only that certificate.
A key without a certificate, a missing file and a file that is not PEM are refused with what to fix."""
import datetime
import ipaddress
import ssl

import httpx
import pytest

from governance_app import governed_service
from nlweb_local.cli.main import main
from nlweb_local.core.errors import BadRequestError
from nlweb_local.server.threaded import ThreadedServer
from nlweb_local.server.tls import check_tls, uvicorn_tls

x509 = pytest.importorskip("cryptography.x509")


def self_signed(tmp_path):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_a_self_signed_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    svc = governed_service(tmp_path / "data")
    tls = svc.settings.server.model_copy(update={"tls_cert": str(cert), "tls_key": str(key)})
    assert check_tls(tls) is not None
    secret = svc.key("u", "user")
    server = ThreadedServer(svc.app, **uvicorn_tls(tls))
    try:
        assert server.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        base = f"https://localhost:{server.port}"
        with httpx.Client(verify=trust, base_url=base) as c:
            r = c.get("/health")
            assert r.status_code == 200 and r.json()["status"] == "healthy"
            r = c.post("/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                       json={"model": "local", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "local says hello"
        with httpx.Client(base_url=base) as c:  # the system's trust store does not know this certificate
            with pytest.raises(httpx.ConnectError):
                c.get("/health")
        with httpx.Client(base_url=f"http://localhost:{server.port}") as c:  # plain HTTP to the TLS port
            with pytest.raises(httpx.HTTPError):
                c.get("/health")
    finally:
        server.stop()


def test_unusable_tls_files_are_refused_with_the_path_and_why(tmp_path):
    cert, key = self_signed(tmp_path)
    svc = governed_service(tmp_path / "data")
    server = svc.settings.server

    def with_files(c, k):
        return server.model_copy(update={"tls_cert": str(c), "tls_key": str(k)})

    with pytest.raises(BadRequestError, match="server.tls_cert: .*missing.pem does not exist"):
        check_tls(with_files(tmp_path / "missing.pem", key))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(BadRequestError, match="cannot be used"):
        check_tls(with_files(junk, key))
    with pytest.raises(BadRequestError, match="cannot be used"):  # the certificate given as its own key
        check_tls(with_files(cert, cert))


def test_serve_refuses_a_certificate_without_its_key(tmp_path, monkeypatch, capsys):
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NLWEB_LOCAL_SERVER__TLS_CERT", str(cert))
    assert main(["serve", "--port", "0", "--no-demo"]) != 0
    err = capsys.readouterr().err
    assert "server.tls_cert is set but server.tls_key is not" in err
    monkeypatch.setenv("NLWEB_LOCAL_SERVER__TLS_KEY", str(tmp_path / "nokey.pem"))
    assert main(["serve", "--port", "0", "--no-demo"]) != 0
    assert "server.tls_key: " in capsys.readouterr().err
