"""The RFC 6455 opening handshake: exact response bytes and every refusal."""

from __future__ import annotations

import pytest

from websockify.errors import HandshakeError
from websockify.protocol import rfc6455
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
