"""HTTPS: ``[server] tls_cert`` and ``tls_key`` on a real server process, and the start refused
in one line when they cannot be used.

The certificates are made here with ``cryptography``, as a LAN box's self-signed one would be.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apps import ROOT, ServerProcess, write_settings
from common import Images

StartServer = Callable[..., ServerProcess]


def self_signed(folder: Path, name: str = "box") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_serves_https_with_a_secure_cross_site_cursor_cookie(
    tmp_path: Path, start_server: StartServer, images: Images
) -> None:
    cert, key = self_signed(tmp_path)
    repositories = tmp_path / "repositories"
    images.folder(repositories / "cam", ["a.jpg", "b.jpg"])
    server = start_server(
        {
            "server": {"tls_cert": str(cert), "tls_key": str(key)},
            "repositories": {"dir": str(repositories)},
        }
    )
    server.wait_ready()
    https = f"https://127.0.0.1:{server.port}"
    trusting = ssl.create_default_context(cafile=str(cert))
    # unsafe: keep cookies of an IP address host, as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{https}/cam/video.jpg", ssl=trusting) as resp:
            assert resp.status == 200
            set_cookie = resp.headers["Set-Cookie"]
            first = int(resp.headers["X-Frame-Number"])
        async with browser.get(f"{https}/cam/video.jpg", ssl=trusting) as resp:
            assert int(resp.headers["X-Frame-Number"]) == 1 - first  # the cookie came back
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not spoken on that port
            async with browser.get(f"{server.url}/healthz") as resp:
                await resp.read()
    attributes = [part.strip() for part in set_cookie.split(";")]
    assert "Secure" in attributes and "SameSite=None" in attributes, set_cookie
    assert "HttpOnly" in attributes
    assert server.stop() == 0
    assert f"listening on https://127.0.0.1:{server.port}" in server.stderr()


def _start_refused(tmp_path: Path, server: dict[str, Any], *command: str) -> list[str]:
    config = tmp_path / "settings.toml"
    write_settings(config, {"server": server, "repositories": {"create_demo": False}})
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *command, "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr.splitlines()


@pytest.mark.parametrize("command", [[], ["check-config"]], ids=["serve", "check-config"])
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-key-file", "server.tls_key: "),
        ("key-of-another-certificate", "must be a PEM certificate and its private key"),
        ("not-pem", "must be a PEM certificate and its private key"),
        ("encrypted-key", "without a passphrase"),
        ("only-the-certificate", "server.tls_cert and server.tls_key go together"),
    ],
)
def test_unusable_tls_files_stop_the_start_in_one_line(
    tmp_path: Path, command: list[str], case: str, expected: str
) -> None:
    cert, key = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    server = {
        "missing-key-file": {"tls_cert": str(cert), "tls_key": str(tmp_path / "absent.key")},
        "key-of-another-certificate": {"tls_cert": str(cert), "tls_key": str(other_key)},
        "not-pem": {"tls_cert": str(garbage), "tls_key": str(key)},
        "encrypted-key": {"tls_cert": str(cert), "tls_key": str(encrypted)},
        "only-the-certificate": {"tls_cert": str(cert)},
    }[case]

    lines = _start_refused(tmp_path, server, *command)

    assert len(lines) == 1, lines
    assert lines[0].startswith("framehub: settings.toml: "), lines
    assert expected in lines[0], lines
    assert "secret" not in lines[0]
