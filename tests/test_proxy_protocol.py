"""PROXY protocol v1/v2 byte for byte, trusted front ends, X-Forwarded-For.

The v1 lines are the examples and worst cases of HAProxy's proxy-protocol.txt; the
v2 header is one HAProxy itself wrote (a capture of a TCP4 connection from
172.19.0.1:42578 to 172.19.0.3:80), so the encoder is checked against the
reference implementation, not against our own parser.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from websockify.errors import ProxyHeaderError
from websockify.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    TrustedProxies,
    encode,
    encode_v1,
    encode_v2,
    parse,
)

FFFF6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
HAPROXY_V2_TCP4 = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")

V1_EXAMPLES = [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
     ProxyHeader(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",  # 56 bytes, worst TCP4
     ProxyHeader(1, ("255.255.255.255", 65535), ("255.255.255.255", 65535))),
    (f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),          # 104 bytes, worst TCP6
     ProxyHeader(1, (FFFF6, 65535), (FFFF6, 65535))),
]


@pytest.mark.parametrize("line, header", V1_EXAMPLES)
def test_v1_examples_both_ways(line: bytes, header: ProxyHeader) -> None:
    assert encode_v1(header.source, header.destination) == line
    assert parse(line + b"GET / HTTP/1.1\r\n") == (header, len(line))


def test_v1_worst_case_lengths_are_the_specs() -> None:
    assert [len(line) for line, _ in V1_EXAMPLES[1:]] == [56, 104]
    unknown = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(unknown) == 107
    assert parse(unknown) == (ProxyHeader(1, None, None), 107)


def test_v1_unknown_for_a_client_without_an_ip_address() -> None:
    assert encode_v1(None, ("127.0.0.1", 6080)) == b"PROXY UNKNOWN\r\n"
    assert parse(b"PROXY UNKNOWN\r\nrest") == (ProxyHeader(1, None, None), 15)


def test_v2_matches_haproxys_own_header() -> None:
    assert encode_v2(("172.19.0.1", 42578), ("172.19.0.3", 80)) == HAPROXY_V2_TCP4
    assert parse(HAPROXY_V2_TCP4 + b"GET / HTTP/1.1\r\n") == (
        ProxyHeader(2, ("172.19.0.1", 42578), ("172.19.0.3", 80)), 28)


def test_v2_tcp6_layout() -> None:
    header = encode_v2(("2001:db8::1", 1), ("2001:db8::2", 443))
    assert header[:16] == V2_SIGNATURE + b"\x21\x21\x00\x24"  # PROXY, TCP6, 36 bytes
    assert header[16:] == (bytes.fromhex("20010db8000000000000000000000001")
                           + bytes.fromhex("20010db8000000000000000000000002")
                           + b"\x00\x01\x01\xbb")
    assert parse(header) == (ProxyHeader(2, ("2001:db8::1", 1), ("2001:db8::2", 443)), 52)


def test_v2_extensions_round_trip_and_unspec_for_unix_clients() -> None:
    header = encode_v2(None, None, tlvs=[(0x04, b"\x00\x00"), (0x02, b"example.org")])
    assert header == (V2_SIGNATURE + b"\x21\x00\x00\x13" + b"\x04\x00\x02\x00\x00"
                      + b"\x02\x00\x0bexample.org")
    assert parse(header) == (ProxyHeader(2, None, None,
                                         ((0x04, b"\x00\x00"), (0x02, b"example.org"))), 35)


def test_v2_local_command_and_unix_family_give_no_address() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local) == (ProxyHeader(2, None, None), 16)
    unix = V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"/run/a".ljust(108, b"\0") + b"\0" * 108
    assert parse(unix) == (ProxyHeader(2, None, None), 16 + 216)


def test_mixed_and_mapped_families() -> None:
    # An IPv4 client of a dual-stack listener is ::ffff:a.b.c.d: it goes out as TCP4.
    assert encode_v1(("::ffff:10.0.0.1", 5000), ("::ffff:10.0.0.2", 6080)) == (
        b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 6080\r\n")
    # Mixed: both ends as IPv6 (IPv4-mapped), since the header holds one family.
    assert encode_v1(("10.0.0.1", 5000), ("::1", 6080)) == (
        b"PROXY TCP6 ::ffff:a00:1 ::1 5000 6080\r\n")
    assert encode(2, ("10.0.0.1", 5000), ("::1", 6080))[12:16] == b"\x21\x21\x00\x24"


@pytest.mark.parametrize("header", [V1_EXAMPLES[0][0], HAPROXY_V2_TCP4])
def test_every_prefix_asks_for_more(header: bytes) -> None:
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, f"prefix of {cut} bytes"


@pytest.mark.parametrize("data, reason", [
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"PROXY TCP4 " + b"1" * 100, "longer than 107"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "TCP4 for other addresses"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 080 443\r\n", "malformed port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 80 65536\r\n", "malformed port"),
    (b"PROXY TCP4 1.2.3.4  1.2.3.5 80 443\r\n", "malformed PROXY v1 line"),
    (b"PROXY TCP4 01.2.3.4 1.2.3.5 80 443\r\n", "malformed address"),
    (b"PROXY UDP4 1.2.3.4 1.2.3.5 80 443\r\n", "malformed PROXY v1 line"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c", "version/command 0x11"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c", "version/command 0x22"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4, "too short for its addresses"),
    (V2_SIGNATURE + b"\x21\x00\x00\x04" + b"\x04\x00\x05\x00", "truncated"),
])
def test_malformed_headers_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


def test_encode_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError):
        encode(3, None, None)
    with pytest.raises(ValueError):
        encode_v1(("1.2.3.4", 70000), ("1.2.3.5", 80))
    with pytest.raises(ValueError):
        encode_v2(("not-an-ip", 1), ("1.2.3.5", 80))


# ---------------------------------------------------------------------------
# Trusted front ends and X-Forwarded-For

TRUSTED = TrustedProxies(["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"])


@pytest.mark.parametrize("peer, trusted", [
    ("10.1.2.3", True), ("127.0.0.1", True), ("127.0.0.2", False),
    ("::ffff:10.1.2.3", True),  # an IPv4 front end seen on a dual-stack listener
    ("2001:db8::7", True), ("2001:db9::7", False),
    ("fe80::1%eth0", False), ("not an address", False), (None, False),
])
def test_trusts(peer: str | None, trusted: bool) -> None:
    assert TRUSTED.trusts(peer) is trusted


def test_unix_peers_are_trusted_only_when_named() -> None:
    assert TrustedProxies(["unix"]).trusts(None)
    assert not TrustedProxies(["unix"]).trusts("127.0.0.1")


@pytest.mark.parametrize("peer, forwarded_for, client", [
    # From an untrusted peer the header is ignored, whatever it says.
    ("192.0.2.9", "10.0.0.1", "192.0.2.9"),
    ("192.0.2.9", None, "192.0.2.9"),
    # Trusted peer: the rightmost entry that is not one of ours.
    ("10.0.0.1", "198.51.100.7", "198.51.100.7"),
    ("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.5", "198.51.100.7"),  # 6.6.6.6: forged
    ("10.0.0.1", "198.51.100.7:5123", "198.51.100.7"),
    ("10.0.0.1", "[2001:db9::1]:443", "2001:db9::1"),
    ("10.0.0.1", "2001:db9::1", "2001:db9::1"),
    ("10.0.0.1", "198.51.100.7,  10.9.9.9", "198.51.100.7"),
    # Every entry trusted: the leftmost.
    ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
    # Garbage ends the walk at the trusted proxy that wrote it.
    ("10.0.0.1", "198.51.100.7, unknown", "10.0.0.1"),
    ("10.0.0.1", "198.51.100.7, garbage, 10.0.0.2", "10.0.0.2"),
    ("10.0.0.1", "[::1", "10.0.0.1"),
    ("::ffff:10.0.0.1", "198.51.100.7", "198.51.100.7"),
    ("::ffff:192.0.2.9", None, "192.0.2.9"),
])
def test_client_address(peer: str, forwarded_for: str | None, client: str) -> None:
    assert TRUSTED.client_address(peer, forwarded_for) == client


def test_a_bad_trusted_proxy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=re.escape("--trusted-proxy 'example.org'")):
        TrustedProxies(["example.org"])


# ---------------------------------------------------------------------------
# Properties: any bytes, any addresses

ENDPOINTS = st.one_of(
    st.none(),
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_a_header_more_please_or_proxy_header_error(data: bytes) -> None:
    for start in (b"", b"PROXY ", V2_SIGNATURE):
        try:
            result = parse(start + data)
        except ProxyHeaderError:
            continue
        if result is not None:
            _, length = result
            assert 0 < length <= len(start + data)


@given(st.sampled_from([1, 2]), ENDPOINTS, ENDPOINTS, st.binary(max_size=20))
@settings(max_examples=300, deadline=None)
def test_encode_then_parse_gives_the_addresses_back(
        version: int, source: tuple[str, int] | None, destination: tuple[str, int] | None,
        rest: bytes) -> None:
    header = encode(version, source, destination)
    result = parse(header + rest)
    assert result is not None
    parsed_header, length = result
    assert length == len(header) and parsed_header.version == version
    if source is None or destination is None:
        assert parsed_header.source is None and parsed_header.destination is None
        return
    assert parsed_header.source is not None and parsed_header.destination is not None
    for sent, got in ((source, parsed_header.source), (destination, parsed_header.destination)):
        assert got[1] == sent[1]
        # The same address, perhaps IPv4-mapped when the two ends' families differ.
        got_ip = ipaddress.ip_address(got[0])
        sent_ip = ipaddress.ip_address(sent[0])
        assert got_ip == sent_ip or getattr(got_ip, "ipv4_mapped", None) == sent_ip or \
            getattr(sent_ip, "ipv4_mapped", None) == got_ip
