"""Host-side probes the audit and the sandbox tests share: this host's addresses, a service to try to reach, and
the host processes whose command line holds a marker (to find what outlived a sandbox)."""

from __future__ import annotations

import contextlib
import socket
import threading

from autoembed.sandbox.procs import pids_with_cmdline


def host_pids_with(marker: str) -> list[int]:
    """Host processes whose command line holds marker (zombies excluded: they are already dead)."""
    return pids_with_cmdline(marker, live=True)


def host_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this host (the docker bridge's gateway among them)."""
    found = set()
    with contextlib.suppress(OSError):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
        found.add(probe.getsockname()[0])
        probe.close()
    with contextlib.suppress(OSError):
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return sorted(a for a in found if not a.startswith("127."))


@contextlib.contextmanager
def pong_server(host: str = "0.0.0.0"):
    """A TCP service on the host (default: every address; what a held-out server on the network would be) that
    answers 'pong' to anyone who connects; yields its port."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()
