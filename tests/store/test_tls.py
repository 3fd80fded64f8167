"""TLS to Redis with a private CA and a client certificate (mutual TLS, as managed Redis
offerings use): the request path's pipelined connection honours the rediss:// URL's options
exactly as the admin client does. Against a real redis-server with TLS on."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.settings import StoreSettings
from sidecar.store.redis import StoreError, connect
from tests.conftest import REDIS_SERVER, free_port


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _issue(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
           server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    elif server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class TLSRedis:
    port: int
    ca: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing the server presents


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    """A redis-server that speaks only TLS and requires a client certificate from our CA."""
    tmp = tmp_path_factory.mktemp("tls")
    ca_key, other_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecar test CA")])
    ca_cert = _issue("sidecar test CA", ca_key, ca_name, ca_key, ca=True)
    ca_path, _ = _write(tmp / "ca", ca_cert, ca_key)
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    other_path, _ = _write(tmp / "other-ca", _issue("another CA", other_key, other_name, other_key,
                                                    ca=True), other_key)
    server_key, client_key = _key(), _key()
    server_cert, server_key_path = _write(
        tmp / "server", _issue("localhost", server_key, ca_name, ca_key, server=True), server_key)
    client_cert, client_key_path = _write(
        tmp / "client", _issue("sidecar", client_key, ca_name, ca_key), client_key)
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "127.0.0.2",
         "--tls-cert-file", server_cert, "--tls-key-file", server_key_path,
         "--tls-ca-cert-file", ca_path, "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield TLSRedis(port, ca_path, client_cert, client_key_path, other_path)
    finally:
        proc.terminate()
        proc.wait(10)


def url(tls: TLSRedis, host: str = "localhost", **query: str) -> str:
    return f"rediss://{host}:{tls.port}/0?" + "&".join(f"{k}={v}" for k, v in query.items())


async def wait_ready(tls: TLSRedis) -> None:
    """The server has opened its TLS port (a start-up condition, polled, not slept)."""
    store = await connect(StoreSettings(url=url(tls, ssl_ca_certs=tls.ca,
                                                ssl_certfile=tls.client_cert,
                                                ssl_keyfile=tls.client_key), timeout_s=1.0))
    try:
        for _ in range(500):
            try:
                if await store.call("ping"):
                    return
            except StoreError:  # not listening yet
                await asyncio.sleep(0.02)
        pytest.fail("TLS redis-server did not come up within 10 s")
    finally:
        await store.close()


async def test_request_path_honours_the_urls_ca_and_client_certificate(tls_redis: TLSRedis) -> None:
    """With the private CA and a client certificate named in the rediss:// URL, the scripted
    request path (the pipelined connection) works end to end, as the admin client does."""
    await wait_ready(tls_redis)
    store = await connect(StoreSettings(url=url(
        tls_redis, ssl_ca_certs=tls_redis.ca, ssl_certfile=tls_redis.client_cert,
        ssl_keyfile=tls_redis.client_key), timeout_s=2.0))
    try:
        assert store.fast is not None
        assert await store.run("health", [], [])  # the request path: EVALSHA over TLS
        assert store.fast.writes > 0
        assert await store.call("ping")  # the admin path
    finally:
        await store.close()


@pytest.mark.parametrize(("case", "query"), [
    ("no client certificate", {"ssl_ca_certs": "CA"}),
    ("a CA that did not sign the server", {"ssl_ca_certs": "OTHER", "ssl_certfile": "CERT",
                                           "ssl_keyfile": "KEY"}),
])
async def test_request_path_refuses_what_tls_should_refuse(tls_redis: TLSRedis, case: str,
                                                           query: dict[str, str]) -> None:
    """Without a client certificate the server refuses us; with a CA that did not sign the
    server's certificate we refuse the server: the store reports itself unhealthy (no silent
    downgrade to an unverified connection)."""
    await wait_ready(tls_redis)
    names = {"CA": tls_redis.ca, "OTHER": tls_redis.other_ca, "CERT": tls_redis.client_cert,
             "KEY": tls_redis.client_key}
    store = await connect(StoreSettings(
        url=url(tls_redis, **{k: names[v] for k, v in query.items()}), timeout_s=1.0))
    try:
        assert not await store.healthy(), case
    finally:
        await store.close()


@pytest.mark.parametrize(("check_hostname", "healthy"), [(None, False), ("false", True)])
async def test_verification_options_of_the_url_apply_to_the_request_path(
        tls_redis: TLSRedis, check_hostname: str | None, healthy: bool) -> None:
    """The server's certificate names localhost and 127.0.0.1, not 127.0.0.2 (where it listens
    too): dialled there, the request path refuses it by default and accepts it with the URL's
    `ssl_check_hostname=false`, exactly as the admin client does."""
    await wait_ready(tls_redis)
    query = {"ssl_ca_certs": tls_redis.ca, "ssl_certfile": tls_redis.client_cert,
             "ssl_keyfile": tls_redis.client_key}
    if check_hostname is not None:
        query["ssl_check_hostname"] = check_hostname
    store = await connect(StoreSettings(url=url(tls_redis, "127.0.0.2", **query), timeout_s=1.0))
    try:
        assert await store.healthy() is healthy  # the request path
        try:
            admin_ok = bool(await store.call("ping"))
        except StoreError:
            admin_ok = False
        assert admin_ok is healthy  # the admin path agrees
    finally:
        await store.close()
