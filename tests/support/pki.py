"""A throw-away PKI made with openssl for TLS tests.

``make_pki(d, cn)`` writes a CA and a server certificate for ``cn`` (also as IP SAN, server auth)
under ``d`` and returns {"ca": ca.pem, "cert": server.pem, "key": server.key}.
"""
from __future__ import annotations

import subprocess
from pathlib import Path


def make_pki(d: Path, cn: str = "127.0.0.1") -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=vigil-test-ca",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(d / "server.key"),
         "-out", str(d / "server.csr"))
    (d / "ext.cnf").write_text(f"subjectAltName=IP:{cn}\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
         "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext.cnf"), "-out", str(d / "server.pem"))
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
