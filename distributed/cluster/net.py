"""The network facts every cluster module shares: the loopback address single-machine runs stay on, and free ports."""
from __future__ import annotations

import ipaddress
import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free right now on ``host`` (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = LOOPBACK, avoid: tuple[int, ...] = ()) -> list[int]:
    """``n`` distinct TCP ports free right now on ``host``, none in ``avoid``. All are held bound until every one is
    picked: separate :func:`free_port` calls may return the same port twice (the OS reuses a just-closed one), which
    once made Ray refuse to start ("port ... used by other components")."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < n + len(avoid):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        picked = [s.getsockname()[1] for s in socks]
        return [p for p in picked if p not in avoid][:n]
    finally:
        for s in socks:
            s.close()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
