"""A static file server on loopback for HTTP(S) input tests: byte ranges, and switches for the ways servers fail.

It runs in its own process (`python -m tests.http_server ROOT`, see `conftest.http_files`): rasterio holds
the GIL while GDAL opens a file, so a server thread inside the test process could never answer GDAL.

The first path segment picks the behaviour, so that one server serves every case and each case has its own
URLs (GDAL caches what it learnt about a URL for the life of the process):

    /files/NAME      the file, with byte-range support (206 Partial Content)
    /norange/NAME    the whole file (200) whatever Range asks for, as a server without range support does
    /slow/NAME       every response held back `slow_s` seconds before it starts
    /slowtail/NAME   like /files/, but ranges that start past the first 16 KiB are held back `slow_s` seconds
    /flaky/N/NAME    503 Service Unavailable for the first N requests of this URL, then like /files/

HTTPS is the same handler behind TLS with a self-signed certificate for 127.0.0.1 made by `self_signed`.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import re
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HEAD_BYTES = 16 * 1024  # /slowtail/ serves this much at once: the header a reader needs to open a small GeoTIFF


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, slow_s: float, context: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.slow_s = root, slow_s
        self.requests: Counter[str] = Counter()  # by request path, for /flaky/
        self.lock = threading.Lock()
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gives up mid-response (a timeout under test) is expected, not news


class _Handler(BaseHTTPRequestHandler):
    server: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows failures, not traffic
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        with self.server.lock:
            self.server.requests[self.path] += 1
            count = self.server.requests[self.path]
        mode, _, rest = self.path.lstrip("/").partition("/")
        if mode == "flaky":
            failures, _, rest = rest.partition("/")
            if count <= int(failures):
                return self._status(503)
        file = (self.server.root / rest.split("?")[0]).resolve()
        if mode not in ("files", "norange", "slow", "slowtail", "flaky") or not file.is_file() \
                or self.server.root.resolve() not in file.parents:
            return self._status(404)
        data = file.read_bytes()
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if mode == "slow" or (mode == "slowtail" and wanted and int(wanted[1]) >= HEAD_BYTES):
            time.sleep(self.server.slow_s)
        if wanted and mode != "norange":
            start = int(wanted[1])
            end = min(int(wanted[2]) if wanted[2] else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self._status(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            data = data[start:end + 1]
        else:
            self.send_response(200)
        if mode != "norange":
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files in `folder`: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "segcore test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def main() -> None:
    """Serve ROOT over HTTP and HTTPS until killed; print one JSON line: {"http", "https", "ca"}."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--slow-s", type=float, default=3.0)
    args = parser.parse_args()
    cert, key = self_signed(args.root.parent)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    http, https = FileServer(args.root, args.slow_s), FileServer(args.root, args.slow_s, context)
    print(json.dumps({"http": http.url, "https": https.url, "ca": str(cert)}), flush=True)
    https.thread.join()


if __name__ == "__main__":
    main()
