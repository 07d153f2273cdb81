"""Module signatures as modinfo shows them (libkmod ``libkmod-signature.c``).

A signed module ends with::

    [ module ][ signer ][ key id ][ signature ][ struct module_signature ][ MAGIC ]

where MAGIC is ``~Module signature appended~\\n`` and ``struct module_signature`` is 12 bytes:
``algo, hash, id_type, signer_len, key_id_len`` (u8 each), 3 pad bytes, ``sig_len`` (u32 big
endian). ``id_type`` 2 (PKCS#7, what the kernel's sign-file writes) means the signature is a
DER PKCS#7 SignedData message; libkmod (built with OpenSSL, as Debian's) reports from its first
SignerInfo: the issuer's common name as ``signer``, the serial number as ``sig_key``, the digest
algorithm's OpenSSL long name as ``sig_hashalgo`` and the encrypted digest as ``signature``.
Older id types carry signer and key id in the trailer itself.

Only as much DER as that needs is parsed here; anything unexpected means "no signature
information", as when OpenSSL fails to parse.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

MAGIC = b"~Module signature appended~\n"
_TRAILER = struct.Struct(">BBBBB3xI")

PKEY_ALGO = ("DSA", "RSA")
PKEY_HASH = ("md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "sm3")
PKEY_ID_TYPE = ("PGP", "X509", "PKCS#7")
PKEY_ID_PKCS7 = 2

#: digest algorithm OIDs -> OpenSSL long names (OBJ_obj2txt with names); others print dotted.
DIGEST_NAMES: dict[str, str] = {
    "1.2.840.113549.2.2": "md2",
    "1.2.840.113549.2.4": "md4",
    "1.2.840.113549.2.5": "md5",
    "1.3.14.3.2.26": "sha1",
    "1.3.36.3.2.1": "ripemd160",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.5": "sha512-224",
    "2.16.840.1.101.3.4.2.6": "sha512-256",
    "2.16.840.1.101.3.4.2.7": "sha3-224",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
    "1.2.156.10197.1.401": "sm3",
}
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_COMMON_NAME = "2.5.4.3"


@dataclass(frozen=True)
class SignatureInfo:
    """The signature fields modinfo shows of a signed module."""

    id_type: str
    signer: bytes
    key_id: bytes
    hash_algo: str
    signature: bytes


class _Bad(Exception):
    pass


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    if pos + 2 > end:
        raise _Bad
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _Bad  # multi-byte tags do not occur here
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise _Bad
        n = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + n > end:
        raise _Bad
    return tag, pos, pos + n


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, cs, ce = _tlv(data, start, end)
        out.append((tag, cs, ce))
        start = ce
    return out


def _oid(raw: bytes) -> str:
    if not raw:
        raise _Bad
    parts: list[int] = []
    value = 0
    for b in raw:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    first = parts[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(p) for p in head + parts[1:])


def _expect(el: tuple[int, int, int], tag: int) -> tuple[int, int]:
    if el[0] != tag:
        raise _Bad
    return el[1], el[2]


def _common_name(data: bytes, start: int, end: int) -> Optional[bytes]:
    """x509_name_to_str: the first commonName's text, else (libkmod quirk) the last entry's."""
    found: Optional[bytes] = None
    for rdn in _children(data, start, end):
        s, e = _expect(rdn, 0x31)
        for atv in _children(data, s, e):
            s2, e2 = _expect(atv, 0x30)
            kids = _children(data, s2, e2)
            if len(kids) < 2:
                raise _Bad
            oid = _oid(data[kids[0][1]:kids[0][2]])
            found = data[kids[1][1]:kids[1][2]].split(b"\0", 1)[0]
            if oid == OID_COMMON_NAME:
                return found
    return found


def _pkcs7(blob: bytes) -> Optional[tuple[bytes, bytes, str, bytes]]:
    """(signer, serial, digest name, encrypted digest) of the first SignerInfo."""
    try:
        _t, s, e = _tlv(blob, 0, len(blob))
        kids = _children(blob, s, e)
        if len(kids) < 2 or kids[0][0] != 0x06:
            return None
        if _oid(blob[kids[0][1]:kids[0][2]]) != OID_SIGNED_DATA:
            return None
        s, e = _expect(kids[1], 0xA0)
        (sd,) = _children(blob, s, e)[:1]
        s, e = _expect(sd, 0x30)
        sd_kids = _children(blob, s, e)
        signer_infos = sd_kids[-1]
        s, e = _expect(signer_infos, 0x31)
        infos = _children(blob, s, e)
        if not infos:
            return None
        s, e = _expect(infos[0], 0x30)
        si = _children(blob, s, e)
        s, e = _expect(si[1], 0x30)  # issuerAndSerialNumber
        ias = _children(blob, s, e)
        ns, ne = _expect(ias[0], 0x30)
        signer = _common_name(blob, ns, ne) or b""
        ss, se = _expect(ias[1], 0x02)
        serial = blob[ss:se].lstrip(b"\0")
        ds, de = _expect(si[2], 0x30)  # digestAlgorithm
        alg = _children(blob, ds, de)
        oid = _oid(blob[alg[0][1]:alg[0][2]])
        rest = si[3:]
        if rest and rest[0][0] == 0xA0:  # authenticatedAttributes
            rest = rest[1:]
        if len(rest) < 2:
            return None
        gs, ge = _expect(rest[1], 0x04)  # encryptedDigest
        return signer, serial, DIGEST_NAMES.get(oid, oid), blob[gs:ge]
    except (_Bad, ValueError, IndexError):
        return None


def signature_info(content: bytes) -> Optional[SignatureInfo]:
    """The signature of a (decompressed) module file, or None."""
    size = len(content) - len(MAGIC)
    if size < 0 or content[size:] != MAGIC:
        return None
    size -= _TRAILER.size
    if size < 0:
        return None
    algo, hash_, id_type, signer_len, key_id_len, sig_len = _TRAILER.unpack_from(content, size)
    if algo >= len(PKEY_ALGO) or hash_ >= len(PKEY_HASH) or id_type >= len(PKEY_ID_TYPE):
        return None
    if sig_len == 0 or size < sig_len + signer_len + key_id_len:
        return None
    sig = content[size - sig_len:size]
    if id_type == PKEY_ID_PKCS7:
        parsed = _pkcs7(sig)
        if parsed is None:
            return None
        signer, serial, algo_name, digest = parsed
        return SignatureInfo(PKEY_ID_TYPE[id_type], signer, serial, algo_name, digest)
    key_end = size - sig_len
    key_id = content[key_end - key_id_len:key_end]
    signer = content[key_end - key_id_len - signer_len:key_end - key_id_len]
    return SignatureInfo(PKEY_ID_TYPE[id_type], signer, key_id, PKEY_HASH[hash_], sig)


def hex_colons(data: bytes) -> bytes:
    """``01:AB:...`` with a line break and two tabs after every 20 bytes (libkmod)."""
    out = bytearray()
    for i, b in enumerate(data):
        out += b"%02X" % b
        if i < len(data) - 1:
            out += b":"
            if (i + 1) % 20 == 0:
                out += b"\n\t\t"
    return bytes(out)


def info_fields(sig: SignatureInfo) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs modinfo appends for a signature."""
    return [
        (b"sig_id", sig.id_type.encode()),
        (b"signer", sig.signer),
        (b"sig_key", hex_colons(sig.key_id)),
        (b"sig_hashalgo", sig.hash_algo.encode()),
        (b"signature", hex_colons(sig.signature)),
    ]
