"""TLS decryption from key logs, sans-I/O: ciphertext records in, plaintext streams out.

``keylog`` reads NSS key log files (``SSLKEYLOGFILE``) and pcapng Decryption Secrets Blocks;
``keyschedule`` derives record keys (TLS 1.2 PRF, RFC 5246 §6.3; TLS 1.3 HKDF-Expand-Label,
RFC 8446 §7); ``records`` observes one TCP connection's two directions, decrypts its records and
hands the application data of each direction to the HTTP/1 reader as if it were the TCP payload.

Only the handful of names below are imported by the rest of the house: ``replay.tls.records``
imports ``cryptography``, which costs start-up time, so ``replay.extract`` imports it only when a
connection turns out to be TLS.
"""

from __future__ import annotations

from replay.tls.keylog import KeyLog, looks_like_tls

__all__ = ["KeyLog", "looks_like_tls"]
