"""The simulator behind TLS on loopback, for clients that only speak https (the official `fal-client` builds
`https://{FAL_QUEUE_RUN_HOST}/…` URLs). A throwaway self-signed certificate for 127.0.0.1 is written to
`--cert-dir`; point the client at it with `SSL_CERT_FILE`.

`python -m benchmarks._tls_sim --cert-dir DIR --run-latency 2 [--max-running 50]` prints `https://127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import signal
import socket
import threading
from pathlib import Path


def self_signed(cert_dir: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = cert_dir / "cert.pem", cert_dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from sora_pipeline.simulator import SimulatorConfig
    from sora_pipeline.simulator.app import create_app

    ap = argparse.ArgumentParser()
    ap.add_argument("--cert-dir", required=True)
    ap.add_argument("--run-latency", type=float, default=2.0)
    ap.add_argument("--max-running", type=int, default=None)
    ap.add_argument("--video-cache-dir", default=None)
    args = ap.parse_args(argv)
    cert, key = self_signed(Path(args.cert_dir))
    config = SimulatorConfig(run_latency=args.run_latency, max_running=args.max_running,
                             video_cache_dir=args.video_cache_dir)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", access_log=False,
                                           ssl_certfile=str(cert), ssl_keyfile=str(key), lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not server.started and thread.is_alive():
        stop.wait(0.01)
    print(f"https://127.0.0.1:{port}", flush=True)
    stop.wait()
    server.should_exit = True
    thread.join(10)


if __name__ == "__main__":
    main()
