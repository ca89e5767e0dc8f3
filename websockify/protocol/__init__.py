"""The WebSocket protocol, sans I/O: handshakes and frame codecs work on bytes only.

Nothing in this package touches a socket, so every rule is tested byte for byte
and fuzzed.  The server feeds bytes in and writes the bytes that come out.
"""
