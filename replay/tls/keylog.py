"""NSS key log files (``SSLKEYLOGFILE``) and pcapng Decryption Secrets Blocks, sans-I/O.

A key log line is ``LABEL <client_random hex> <secret hex>``; ``#`` starts a comment. The labels
read here: ``CLIENT_RANDOM`` (TLS 1.2 master secret), ``CLIENT_HANDSHAKE_TRAFFIC_SECRET``,
``SERVER_HANDSHAKE_TRAFFIC_SECRET``, ``CLIENT_TRAFFIC_SECRET_0``, ``SERVER_TRAFFIC_SECRET_0``
(TLS 1.3); other well-formed labels (``EXPORTER_SECRET``, ``CLIENT_EARLY_TRAFFIC_SECRET``,
``RSA``...) are kept but unused. Anything else is a garbage line: counted, skipped, never an
exception (key logs are appended to by several processes at once, and get cut mid-line).

``KeyLog`` is fed text (``add_text``), whole files (``add_file``), or the tail of a file that a
server keeps appending to (``poll_file``: only complete new lines are read).
"""

from __future__ import annotations

import os
from pathlib import Path

LABELS = frozenset((
    "CLIENT_RANDOM",
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
    "CLIENT_EARLY_TRAFFIC_SECRET",
    "EARLY_EXPORTER_SECRET",
))
_SECRET_LENS = {"CLIENT_RANDOM": (48,)}
"""Allowed secret lengths per label (TLS 1.3 secrets: a hash's length, 32 or 48)."""

DSB_TLS_KEY_LOG = 0x544C534B
"""pcapng Decryption Secrets Block secrets type for an NSS key log ("TLSK")."""


class KeyLog:
    """Secrets by client random: ``get(client_random)`` -> ``{label: secret}``."""

    def __init__(self) -> None:
        self.secrets: dict[bytes, dict[str, bytes]] = {}
        self.lines = 0
        """Key lines read (well-formed, any known label)."""
        self.garbage = 0
        """Lines that are not key log lines (counted, skipped)."""
        self.sources: list[str] = []
        self._tail: dict[str, tuple[int, int, bytes]] = {}
        """Per tailed file: (inode, offset read up to, a partial last line kept)."""

    def __len__(self) -> int:
        return len(self.secrets)

    def get(self, client_random: bytes) -> dict[str, bytes] | None:
        return self.secrets.get(client_random)

    def add_line(self, line: str) -> bool:
        """One line; False (and counted) if it is not a key log line. Blank lines and comments
        are neither."""
        s = line.strip()
        if not s or s.startswith("#"):
            return True
        parts = s.split()
        if len(parts) != 3 or (parts[0] not in LABELS and parts[0] != "RSA"):
            self.garbage += 1
            return False
        label, cr_hex, secret_hex = parts
        try:
            cr = bytes.fromhex(cr_hex)
            secret = bytes.fromhex(secret_hex)
        except ValueError:
            self.garbage += 1
            return False
        if label == "RSA":  # RSA <first 8 bytes of the encrypted premaster> <premaster>
            self.lines += 1
            return True
        if len(cr) != 32 or len(secret) not in _SECRET_LENS.get(label, (32, 48)):
            self.garbage += 1
            return False
        self.secrets.setdefault(cr, {})[label] = secret
        self.lines += 1
        return True

    def add_text(self, text: str | bytes) -> int:
        """Every line of ``text``; returns how many key lines were read."""
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        before = self.lines
        for line in text.splitlines():
            self.add_line(line)
        return self.lines - before

    def add_file(self, path: str | Path) -> int:
        """A whole key log file (``OSError`` if it cannot be read: the caller says which)."""
        data = Path(path).read_bytes()
        self.sources.append(str(path))
        return self.add_text(data)

    def add_dsb(self, secrets_type: int, data: bytes) -> int:
        """A pcapng Decryption Secrets Block's payload; other secrets types are ignored."""
        if secrets_type != DSB_TLS_KEY_LOG:
            return 0
        return self.add_text(data)

    def poll_file(self, path: str | Path) -> int:
        """Read the complete lines appended to ``path`` since the last poll (a file a server
        keeps writing; a replaced or truncated file is read again from its start). Returns how
        many key lines were new; a missing file is 0."""
        p = str(path)
        try:
            st = os.stat(p)
        except OSError:
            return 0
        ino, off, part = self._tail.get(p, (st.st_ino, 0, b""))
        if ino != st.st_ino or st.st_size < off:
            off, part = 0, b""
        if st.st_size == off:
            self._tail[p] = (st.st_ino, off, part)
            return 0
        try:
            with open(p, "rb") as f:
                f.seek(off)
                chunk = f.read(st.st_size - off)
        except OSError:
            return 0
        data = part + chunk
        cut = data.rfind(b"\n") + 1
        self._tail[p] = (st.st_ino, off + len(chunk), data[cut:])
        return self.add_text(data[:cut]) if cut else 0


def looks_like_tls(data: bytes, start: bool) -> bool:
    """Do these bytes begin a TLS record? ``start``: at the very start of a connection, where
    only a handshake record (a ClientHello, or a ServerHello) can come; there, a first
    segment too short to tell (a record header split) counts when it starts like one."""
    if len(data) < 3:
        return start and data[:1] == b"\x16" and data[1:2] in (b"", b"\x03")
    t = data[0]
    if data[1] != 3 or data[2] > 4:
        return False
    if start:
        if t != 22:
            return False
    elif not 20 <= t <= 24:
        return False
    if len(data) >= 5:
        n = (data[3] << 8) | data[4]
        if not 0 < n <= 18432:
            return False
        if start and len(data) >= 6 and data[5] not in (1, 2):
            return False  # a handshake record at the start holds a ClientHello or ServerHello
    return True
