"""The RFC 6455 opening handshake: exact response bytes and every refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from websockify.errors import HandshakeError
from websockify.protocol import handshake, rfc6455
from websockify.protocol.codec import Violation
from websockify.protocol.handshake import HandshakeOptions, Upgrade, UpgradeRequest
from websockify.protocol.hybi import HybiCodec

#: The sample nonce of RFC 6455 section 1.3 and its answer.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def request(**overrides: str | None) -> UpgradeRequest:
    headers = {
        "host": "example.com",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": RFC_KEY,
        "sec-websocket-version": "13",
        "sec-websocket-protocol": "binary",
    }
    for name, value in overrides.items():
        header = name.replace("_", "-")
        if value is None:
            headers.pop(header, None)
        else:
            headers[header] = value
    return UpgradeRequest(method="GET", path="/", headers=headers)


def accept(**overrides: str | None) -> Upgrade:
    return rfc6455.accept(request(**overrides), HandshakeOptions(max_message_size=1234))


def refused(**overrides: str | None) -> HandshakeError:
    with pytest.raises(HandshakeError) as caught:
        accept(**overrides)
    assert caught.value.status == 400
    return caught.value


def test_accept_key_of_the_rfc_sample() -> None:
    assert rfc6455.accept_key(RFC_KEY) == RFC_ACCEPT


def test_response_bytes_with_a_subprotocol() -> None:
    upgrade = accept()
    assert upgrade.response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: binary\r\n"
        b"\r\n"
    )
    assert upgrade.version == "13"
    assert isinstance(upgrade.codec, HybiCodec)
    assert upgrade.codec.subprotocol == "binary"


def test_response_bytes_without_a_subprotocol() -> None:
    upgrade = accept(sec_websocket_protocol=None)
    assert upgrade.response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    assert upgrade.codec.subprotocol is None


def test_base64_subprotocol_and_message_limit_reach_the_codec() -> None:
    upgrade = accept(sec_websocket_protocol="base64")
    assert upgrade.response.endswith(b"Sec-WebSocket-Protocol: base64\r\n\r\n")
    assert upgrade.codec.subprotocol == "base64"
    # The limit from the options: 1234 bytes pass, 1235 are refused with 1009.
    assert upgrade.codec.receive(b"\x82\xfe\x04\xd2" + bytes(4)) == []
    (violation,) = accept().codec.receive(b"\x82\xfe\x04\xd3" + bytes(4))
    assert isinstance(violation, Violation) and violation.close_code == 1009


@pytest.mark.parametrize("version", ["13", "8", "7", " 13 "])
def test_supported_versions(version: str) -> None:
    assert accept(sec_websocket_version=version).version == version.strip()


@pytest.mark.parametrize("version", ["12", "6", "14", "", "13, 8", None])
def test_other_versions_are_refused_with_the_supported_list(version: str | None) -> None:
    error = refused(sec_websocket_version=version)
    assert error.headers == (("Sec-WebSocket-Version", "13, 8, 7"),)
    assert rfc6455.SUPPORTED_VERSIONS_HEADER == "13, 8, 7"


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [
        ("WebSocket", "upgrade"),
        ("websocket, h2c", "keep-alive, Upgrade"),
        ("WEBSOCKET", "Keep-Alive,UPGRADE"),
    ],
)
def test_upgrade_and_connection_are_case_insensitive_token_lists(
    upgrade: str, connection: str
) -> None:
    assert accept(upgrade=upgrade, connection=connection).version == "13"


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [
        (None, "Upgrade"),
        ("h2c", "Upgrade"),
        ("websocketx", "Upgrade"),
        ("websocket", None),
        ("websocket", "keep-alive"),
        ("websocket", "upgraded"),
    ],
)
def test_missing_upgrade_tokens_are_refused(upgrade: str | None, connection: str | None) -> None:
    refused(upgrade=upgrade, connection=connection)


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "dGhlIHNhbXBsZSBub25jZQ",  # unpadded
        "dGhlIHNhbXBsZSBub25j",  # 15 bytes
        "dGhlIHNhbXBsZSBub25jZXg=",  # 17 bytes
        "dGhlIHNhbXBsZSBub25jZQ==dGhl",
        "dGhl*HNhbXBsZSBub25jZQ==",
        "dGhlIHNhbXBsZSBub25jZQ==é",
    ],
)
def test_bad_keys_are_refused(key: str | None) -> None:
    refused(sec_websocket_key=key)


def test_key_surrounding_white_space_is_tolerated() -> None:
    assert (
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        in accept(sec_websocket_key=f" {RFC_KEY} ").response
    )


def test_extensions_are_ignored() -> None:
    upgrade = accept(sec_websocket_extensions="permessage-deflate; client_max_window_bits")
    assert b"Extensions" not in upgrade.response


def test_unsupported_subprotocol_is_refused() -> None:
    assert "chat" in refused(sec_websocket_protocol="chat").reason


# ------------------------------------------------- request line, Host and body


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/0.9", "", "HTTP/1", "SPDY/3.1"])
def test_requests_older_than_http_1_1_are_refused(version: str) -> None:
    """RFC 6455 4.1: the opening handshake is an HTTP/1.1 request (or later)."""
    with pytest.raises(HandshakeError) as caught:
        handshake.accept(UpgradeRequest("GET", "/", request().headers, http_version=version),
                         b"", HandshakeOptions())
    assert caught.value.status == 400
    assert caught.value.reason == (
        f"a WebSocket upgrade needs HTTP/1.1 or later, not {version!r}")


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.2"])
def test_http_1_1_and_later_are_accepted(version: str) -> None:
    upgrade = handshake.accept(
        UpgradeRequest("GET", "/", request().headers, http_version=version), b"",
        HandshakeOptions())
    assert upgrade.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


@pytest.mark.parametrize("host", [None, "", "  "])
def test_request_without_a_host_is_refused(host: str | None) -> None:
    with pytest.raises(HandshakeError) as caught:
        handshake.accept(request(host=host), b"", HandshakeOptions())
    assert caught.value.status == 400
    assert caught.value.reason == "a WebSocket upgrade needs a Host header"


def test_refusal_response_is_byte_exact() -> None:
    """What a client without Host reads: status, the reason as text, then close."""
    with pytest.raises(HandshakeError) as caught:
        handshake.accept(request(host=None), b"", HandshakeOptions())
    assert handshake.error_response(caught.value) == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 40\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"a WebSocket upgrade needs a Host header\n"
    )


@pytest.mark.parametrize("length", [None, "0", " 0 "])
def test_upgrade_without_a_body_reads_nothing_more(length: str | None) -> None:
    assert handshake.body_length(request(content_length=length)) == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"content_length": "5"}, "(Content-Length '5')"),
        ({"content_length": "8"}, "(Content-Length '8')"),
        ({"content_length": "x" * 40}, "(Content-Length '" + "x" * 20 + "')"),
        ({"transfer_encoding": "chunked"}, "(Transfer-Encoding is not allowed)"),
        ({"transfer_encoding": "gzip, chunked", "content_length": "0"},
         "(Transfer-Encoding is not allowed)"),
    ],
)
def test_upgrade_announcing_a_body_is_refused_before_reading_it(
    change: dict[str, str], reason: str
) -> None:
    with pytest.raises(HandshakeError) as caught:
        handshake.body_length(request(**change))
    assert caught.value.status == 400
    assert caught.value.reason == f"a WebSocket upgrade request carries no body {reason}"


def test_handshake_modules_import_no_circle() -> None:
    """The drafts' modules need only the leaf types, not the module that picks a draft."""
    code = ("import sys, websockify.protocol.hixie, websockify.protocol.rfc6455; "
            "assert 'websockify.protocol.handshake' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
