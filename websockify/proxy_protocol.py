"""The client's real address through proxies: HAProxy's PROXY protocol and X-Forwarded-For.

Sans-I/O: bytes and strings in, values out; no sockets.

**PROXY protocol** (HAProxy's ``proxy-protocol.txt``), versions 1 (one text line,
at most 107 bytes) and 2 (a binary header with a 12-byte signature, the addresses,
then type-length-value extensions):

- ``encode_v1`` / ``encode_v2`` build the header websockify sends to the target
  before any byte of the client's, so the target sees the browser's address
  (``--send-proxy-header v1|v2``; hook point: where the relay has connected the
  target, before the first byte flows);
- ``parse`` reads one from the front of a connection's first bytes, incrementally
  (None until the header is complete), for a listener behind a trusted front end
  (hook point: the listener, before the HTTP request is parsed, and only for peers
  ``TrustedProxies.trusts``).

**Trusted front ends** (``--trusted-proxy ADDR|CIDR|unix …``): ``TrustedProxies``
says whose PROXY header or ``X-Forwarded-For`` is believed.  From anyone else they
are ignored (the caller logs that), since a browser can send any header it likes.
``client_address`` picks from ``X-Forwarded-For`` the rightmost address that is not
a trusted proxy: everything to its right was appended by proxies we trust, while
the entries to its left were written by the client itself and prove nothing.
(Hook point: the handler, when it builds the access log's client address.)
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from websockify.errors import ProxyHeaderError

V1_PREFIX = b"PROXY "
#: The longest v1 line the spec allows, CRLF included.
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Version 2 in the high nibble; the command in the low one.
_V2_LOCAL, _V2_PROXY = 0x20, 0x21
# Address family (high nibble) and transport (low nibble) bytes this module writes.
_V2_UNSPEC, _V2_TCP4, _V2_TCP6 = 0x00, 0x11, 0x21
_V2_FAMILY_INET, _V2_FAMILY_INET6, _V2_FAMILY_UNIX = 1, 2, 3
_V2_ADDRESS_LENGTH = {_V2_FAMILY_INET: 12, _V2_FAMILY_INET6: 36, _V2_FAMILY_UNIX: 216}
_V2_HEADER = struct.Struct("!12sBBH")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: An endpoint: (IP address text, port).
Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header said.

    ``source`` and ``destination`` are None when the sender gave no usable address
    (v1 ``UNKNOWN``, v2 ``LOCAL`` health checks, an unspecified or unix family): the
    connection's own endpoints stand then.  ``tlvs`` are v2's extensions, as sent.
    """

    version: int
    source: Endpoint | None
    destination: Endpoint | None
    tlvs: tuple[tuple[int, bytes], ...] = ()


# ---------------------------------------------------------------------------
# Encoding

def encode_v1(source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """A v1 line; ``PROXY UNKNOWN`` when either end has no IP address (a unix client)."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _same_family(_ip(source[0]), _ip(destination[0]))
    protocol = "TCP4" if src.version == 4 else "TCP6"
    return (f"PROXY {protocol} {src} {dst} {_port(source[1])} {_port(destination[1])}\r\n"
            .encode("ascii"))


def encode_v2(source: Endpoint | None, destination: Endpoint | None,
              tlvs: Iterable[tuple[int, bytes]] = ()) -> bytes:
    """A v2 header with the PROXY command; family UNSPEC when an end has no IP address."""
    extensions = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    if source is None or destination is None:
        body, family = b"", _V2_UNSPEC
    else:
        src, dst = _same_family(_ip(source[0]), _ip(destination[0]))
        family = _V2_TCP4 if src.version == 4 else _V2_TCP6
        body = src.packed + dst.packed + struct.pack("!HH", _port(source[1]),
                                                      _port(destination[1]))
    body += extensions
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 extensions too long")
    return _V2_HEADER.pack(V2_SIGNATURE, _V2_PROXY, family, len(body)) + body


def encode(version: int, source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """The header of ``version`` (1 or 2), as ``--send-proxy-header`` names it."""
    if version == 1:
        return encode_v1(source, destination)
    if version == 2:
        return encode_v2(source, destination)
    raise ValueError(f"PROXY protocol version {version}: use 1 or 2")


def _ip(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    return _unmapped(address)


def _unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:1.2.3.4`` (an IPv4 client on a dual-stack socket) is 1.2.3.4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _same_family(src: IPAddress, dst: IPAddress) -> tuple[IPAddress, IPAddress]:
    """Both ends in one family, as the header requires: IPv4 goes IPv4-mapped if needed."""
    if src.version == dst.version:
        return src, dst
    mapped = [ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst)]
    return mapped[0], mapped[1]


def _port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"invalid port {port}")
    return port


# ---------------------------------------------------------------------------
# Parsing

def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of ``data`` and its length, or None if more bytes are
    needed; ProxyHeaderError if ``data`` does not start with a valid header."""
    if data.startswith(V2_SIGNATURE[:len(data)]) and len(data) < len(V2_SIGNATURE):
        return None
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX[:len(data)]) and len(data) < len(V1_PREFIX):
        return None
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        return None
    fields = data[len(V1_PREFIX):end].split(b" ")
    if fields[0] == b"UNKNOWN":  # the rest of the line, if any, is to be ignored
        return ProxyHeader(1, None, None), end + 2
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    version = 4 if fields[0] == b"TCP4" else 6
    try:
        src, dst = (ipaddress.ip_address(f.decode("ascii")) for f in fields[1:3])
    except ValueError:
        raise ProxyHeaderError("malformed address in PROXY v1 line") from None
    if src.version != version or dst.version != version:
        raise ProxyHeaderError(f"PROXY v1 line says TCP{version} for other addresses")
    ports = [_v1_port(f) for f in fields[3:5]]
    return ProxyHeader(1, (str(src), ports[0]), (str(dst), ports[1])), end + 2


def _v1_port(text: bytes) -> int:
    # Decimal, 0-65535, without leading zeros (the spec's rule: one spelling per port).
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 0xFFFF:
        raise ProxyHeaderError("malformed port in PROXY v1 line")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < _V2_HEADER.size:
        return None
    _, version_command, family_transport, length = _V2_HEADER.unpack_from(data)
    total = _V2_HEADER.size + length
    if version_command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header with version/command 0x{version_command:02x}")
    if len(data) < total:
        return None
    body = data[_V2_HEADER.size:total]
    family = family_transport >> 4
    address_length = _V2_ADDRESS_LENGTH.get(family, 0)
    if len(body) < address_length:
        raise ProxyHeaderError("PROXY v2 header too short for its addresses")
    tlvs = _parse_tlvs(body[address_length:])
    if version_command == _V2_LOCAL or family not in (_V2_FAMILY_INET, _V2_FAMILY_INET6):
        return ProxyHeader(2, None, None, tlvs), total
    size = 4 if family == _V2_FAMILY_INET else 16
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size:2 * size])
    src_port, dst_port = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(2, (str(src), src_port), (str(dst), dst_port), tlvs), total


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            raise ProxyHeaderError("truncated PROXY v2 extension")
        kind, length = struct.unpack_from("!BH", data, offset)
        value = data[offset + 3:offset + 3 + length]
        if len(value) != length:
            raise ProxyHeaderError("truncated PROXY v2 extension")
        tlvs.append((kind, value))
        offset += 3 + length
    return tuple(tlvs)


# ---------------------------------------------------------------------------
# Trusted front ends and X-Forwarded-For

UNIX_PEERS = "unix"


class TrustedProxies:
    """The front ends named by ``--trusted-proxy``: addresses, networks, or ``unix``
    (every peer of a unix-socket listener, which has no address)."""

    def __init__(self, specs: Iterable[str]) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.unix = False
        for spec in specs:
            if spec == UNIX_PEERS:
                self.unix = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(spec.strip(), strict=False))
            except ValueError:
                raise ValueError(f"--trusted-proxy {spec!r}: expected an address, "
                                 "a network such as 10.0.0.0/8, or 'unix'") from None

    def trusts(self, peer: str | None) -> bool:
        """Whether the connection's peer is a trusted front end: ``peer`` is its IP
        address, or None for the peer of a unix socket."""
        if peer is None:
            return self.unix
        address = _parse_ip(peer)
        return address is not None and self._trusts_ip(address)

    def _trusts_ip(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: ``peer`` itself (normalised; None for a unix peer)
        unless it is trusted and sent ``X-Forwarded-For`` (all such headers joined by
        commas); then the rightmost entry that is not trusted, or the leftmost if all
        are.  An entry that is no address ends the walk at the proxy that wrote it."""
        hop = None if peer is None else str(_parse_ip(peer) or peer)
        if not forwarded_for or not self.trusts(peer):
            return hop
        for entry in reversed(forwarded_for.split(",")):
            address = _parse_hop(entry)
            if address is None:
                return hop
            if not self._trusts_ip(address):
                return str(address)
            hop = str(address)
        return hop


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return _unmapped(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def _parse_hop(entry: str) -> IPAddress | None:
    """One X-Forwarded-For entry: ``1.2.3.4``, ``1.2.3.4:5678``, ``::1``,
    ``[::1]`` or ``[::1]:5678``; None for anything else (``unknown``, garbage)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return _parse_ip(host)
    if entry.count(":") == 1:  # IPv4 with a port
        host, _, port = entry.partition(":")
        return _parse_ip(host) if port.isdigit() else None
    return _parse_ip(entry)
