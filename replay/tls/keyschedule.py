"""TLS record keys: the TLS 1.2 PRF and key expansion (RFC 5246 §5, §6.3) and the TLS 1.3
HKDF-Expand-Label traffic keys (RFC 8446 §7.1, §7.3), plus the AEAD cipher suites shadowtap
decrypts. Pure functions over bytes; the ciphers themselves come from ``cryptography``."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305


@dataclass(frozen=True, slots=True)
class Suite:
    """A cipher suite: name (IANA), TLS 1.3 or not, cipher, key length, hash (and for the
    TLS 1.2 CBC suites, the record MAC's hash)."""

    code: int
    name: str
    tls13: bool
    cipher: str
    """``aes-gcm``, ``chacha20`` or ``aes-cbc`` (TLS 1.2 only)."""
    key_len: int
    hash: str
    """``sha256`` or ``sha384``: the PRF/HKDF hash."""
    mac: str = ""
    """CBC suites: the HMAC hash of the record MAC (``sha1``, ``sha256``, ``sha384``)."""

    @property
    def fixed_iv_len(self) -> int:
        """TLS 1.2 key block IV length: the 4-byte GCM salt, or ChaCha20's 12-byte IV
        (RFC 5288 §3, RFC 7905 §2); TLS 1.3 always 12; CBC none (explicit per record)."""
        if self.cipher == "aes-cbc":
            return 0
        return 12 if self.tls13 or self.cipher == "chacha20" else 4

    @property
    def mac_len(self) -> int:
        return hashlib.new(self.mac).digest_size if self.mac else 0

    def aead(self, key: bytes) -> Any:
        """The AEAD object of a key (CBC suites: the key itself, for ``cbc_open``)."""
        if self.cipher == "aes-cbc":
            return key
        return ChaCha20Poly1305(key) if self.cipher == "chacha20" else AESGCM(key)


_SUITES = [
    Suite(0x1301, "TLS_AES_128_GCM_SHA256", True, "aes-gcm", 16, "sha256"),
    Suite(0x1302, "TLS_AES_256_GCM_SHA384", True, "aes-gcm", 32, "sha384"),
    Suite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", True, "chacha20", 32, "sha256"),
    Suite(0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", False, "aes-gcm", 16, "sha256"),
    Suite(0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", False, "aes-gcm", 32, "sha384"),
    Suite(0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", False, "aes-gcm", 16, "sha256"),
    Suite(0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", False, "aes-gcm", 32, "sha384"),
    Suite(0x009C, "TLS_RSA_WITH_AES_128_GCM_SHA256", False, "aes-gcm", 16, "sha256"),
    Suite(0x009D, "TLS_RSA_WITH_AES_256_GCM_SHA384", False, "aes-gcm", 32, "sha384"),
    Suite(0x009E, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", False, "aes-gcm", 16, "sha256"),
    Suite(0x009F, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", False, "aes-gcm", 32, "sha384"),
    Suite(0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", False, "chacha20", 32,
          "sha256"),
    Suite(0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", False, "chacha20", 32,
          "sha256"),
    Suite(0xCCAA, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", False, "chacha20", 32,
          "sha256"),
    # CBC (MAC-then-encrypt, or encrypt-then-MAC when RFC 7366 was negotiated)
    Suite(0xC013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", False, "aes-cbc", 16, "sha256", "sha1"),
    Suite(0xC014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", False, "aes-cbc", 32, "sha256", "sha1"),
    Suite(0xC009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", False, "aes-cbc", 16, "sha256",
          "sha1"),
    Suite(0xC00A, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", False, "aes-cbc", 32, "sha256",
          "sha1"),
    Suite(0xC027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", False, "aes-cbc", 16, "sha256",
          "sha256"),
    Suite(0xC028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", False, "aes-cbc", 32, "sha384",
          "sha384"),
    Suite(0xC023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", False, "aes-cbc", 16, "sha256",
          "sha256"),
    Suite(0xC024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", False, "aes-cbc", 32, "sha384",
          "sha384"),
    Suite(0x002F, "TLS_RSA_WITH_AES_128_CBC_SHA", False, "aes-cbc", 16, "sha256", "sha1"),
    Suite(0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", False, "aes-cbc", 32, "sha256", "sha1"),
    Suite(0x003C, "TLS_RSA_WITH_AES_128_CBC_SHA256", False, "aes-cbc", 16, "sha256", "sha256"),
    Suite(0x003D, "TLS_RSA_WITH_AES_256_CBC_SHA256", False, "aes-cbc", 32, "sha256", "sha256"),
    Suite(0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA", False, "aes-cbc", 16, "sha256", "sha1"),
    Suite(0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA", False, "aes-cbc", 32, "sha256", "sha1"),
    Suite(0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", False, "aes-cbc", 16, "sha256",
          "sha256"),
    Suite(0x006B, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256", False, "aes-cbc", 32, "sha256",
          "sha256"),
]
SUITES: dict[int, Suite] = {s.code: s for s in _SUITES}
"""The suites shadowtap decrypts, by code point (TLS 1.2 CBC only with TLS 1.2's explicit IV).
Others (CCM, 3DES, CBC under TLS 1.0/1.1...) are reported as unsupported."""


def suite_name(code: int) -> str:
    s = SUITES.get(code)
    return s.name if s is not None else f"0x{code:04X}"


# -- TLS 1.2 -------------------------------------------------------------------------------------

def p_hash(hash_name: str, secret: bytes, seed: bytes, n: int) -> bytes:
    """P_hash(secret, seed) of RFC 5246 §5, ``n`` bytes."""
    out = bytearray()
    a = seed
    while len(out) < n:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return bytes(out[:n])


def prf12(hash_name: str, secret: bytes, label: bytes, seed: bytes, n: int) -> bytes:
    """PRF(secret, label, seed) of TLS 1.2 (RFC 5246 §5): P_<hash>(secret, label + seed)."""
    return p_hash(hash_name, secret, label + seed, n)


def tls12_keys(suite: Suite, master: bytes, client_random: bytes, server_random: bytes
               ) -> tuple[bytes, bytes, bytes, bytes]:
    """(client key, client IV, server key, server IV) from the key block (RFC 5246 §6.3); AEAD
    suites have no MAC keys. For CBC suites (no implicit IV) the MAC keys take the IVs' place:
    (client key, client MAC key, server key, server MAC key)."""
    k, iv = suite.key_len, suite.fixed_iv_len
    if suite.cipher == "aes-cbc":
        m = suite.mac_len
        block = prf12(suite.hash, master, b"key expansion", server_random + client_random,
                      2 * m + 2 * k)
        return block[2 * m:2 * m + k], block[:m], block[2 * m + k:2 * m + 2 * k], block[m:2 * m]
    block = prf12(suite.hash, master, b"key expansion", server_random + client_random,
                  2 * k + 2 * iv)
    return block[:k], block[2 * k:2 * k + iv], block[k:2 * k], block[2 * k + iv:2 * k + 2 * iv]


# -- TLS 1.3 -------------------------------------------------------------------------------------

def hkdf_expand(hash_name: str, prk: bytes, info: bytes, n: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3)."""
    out = bytearray()
    t = b""
    i = 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes((i,)), hash_name).digest()
        out += t
        i += 1
    return bytes(out[:n])


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, n: int
                      ) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1)."""
    full = b"tls13 " + label
    info = n.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context
    return hkdf_expand(hash_name, secret, info, n)


def tls13_keys(suite: Suite, secret: bytes) -> tuple[bytes, bytes]:
    """(key, iv) of a traffic secret (RFC 8446 §7.3)."""
    return (hkdf_expand_label(suite.hash, secret, b"key", b"", suite.key_len),
            hkdf_expand_label(suite.hash, secret, b"iv", b"", 12))


def tls13_next_secret(suite: Suite, secret: bytes) -> bytes:
    """application_traffic_secret_N+1 after a KeyUpdate (RFC 8446 §7.2)."""
    return hkdf_expand_label(suite.hash, secret, b"traffic upd", b"",
                             hashlib.new(suite.hash).digest_size)


def cbc_open(suite: Suite, key: bytes, mac_key: bytes, seq: int, header: bytes, body: bytes,
             etm: bool) -> bytes | None:
    """A TLS 1.2 CBC record's plaintext (explicit IV, RFC 5246 §6.2.3.2), MAC-then-encrypt or
    encrypt-then-MAC (RFC 7366); None if the MAC or the padding is wrong."""
    m = suite.mac_len
    if etm:
        if len(body) < 32 + m or (len(body) - m) % 16:
            return None
        c, tag = body[:-m], body[-m:]
        want = hmac.new(mac_key, seq.to_bytes(8, "big") + header[:3]
                        + len(c).to_bytes(2, "big") + c, suite.mac).digest()
        if not hmac.compare_digest(tag, want):
            return None
        p = _cbc(key, c)
        pad = p[-1]
        if pad + 1 > len(p):
            return None
        return p[:-(pad + 1)]
    if len(body) < 32 or len(body) % 16:
        return None
    p = _cbc(key, body)
    pad = p[-1]
    if pad + 1 + m > len(p) or p[-(pad + 1):] != bytes((pad,)) * (pad + 1):
        return None
    content, tag = p[:-(pad + 1) - m], p[-(pad + 1) - m:-(pad + 1)]
    want = hmac.new(mac_key, seq.to_bytes(8, "big") + header[:3]
                    + len(content).to_bytes(2, "big") + content, suite.mac).digest()
    return content if hmac.compare_digest(tag, want) else None


def _cbc(key: bytes, body: bytes) -> bytes:
    """AES-CBC decryption of an explicit-IV record body (IV first); the IV block drops out."""
    d = Cipher(algorithms.AES(key), modes.CBC(body[:16])).decryptor()
    return d.update(body[16:]) + d.finalize()
