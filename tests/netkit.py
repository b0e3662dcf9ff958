"""Which TCP sockets a set of processes listens on (/proc): how the tests prove that a cluster stays on loopback."""
from __future__ import annotations

import os
import socket
from pathlib import Path


def _listening_inodes() -> dict[int, tuple[str, int]]:
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A":  # TCP_LISTEN
                addr, port = cols[1].split(":")
                inodes[int(cols[9])] = (_decode_addr(addr), int(port, 16))
    return inodes


def listening_sockets(pids: list[int]) -> list[tuple[int, str, int]]:
    """``(pid, host, port)`` of every listening TCP socket held by ``pids`` (from /proc/net/tcp{,6} + fds)."""
    inodes = _listening_inodes()
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    found.append((pid, *inodes[inode]))
    return sorted(set(found))


def _decode_addr(hex_addr: str) -> str:
    """/proc/net/tcp{,6} address (host byte order per 32-bit word) -> printable IP."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)
