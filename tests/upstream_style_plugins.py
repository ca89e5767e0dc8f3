"""Plugins written the way upstream websockify's users write them, loaded by dotted path.

They import only upstream's names (``websockify.token_plugins.BasePlugin``,
``websockify.auth_plugins.AuthenticationError``) and return what upstream's
plugins return, so they check that such code works unchanged here.
"""

from websockify.auth_plugins import AuthenticationError
from websockify.token_plugins import BasePlugin


class PrefixTokens(BasePlugin):
    """Tokens ``port-NNNN`` lead to 127.0.0.1:NNNN; the source is the allowed prefix."""

    def lookup(self, token):
        prefix = self.source or "port-"
        if token.startswith(prefix) and token[len(prefix):].isdigit():
            return ("127.0.0.1", token[len(prefix):])
        return None


class TeapotAuth:
    """Refuses with 418 and a header of its own unless X-Magic matches the source.

    Not a subclass of anything: upstream's auth plugins need only ``authenticate``.
    """

    def __init__(self, src=None):
        self.src = src

    def authenticate(self, headers, target_host, target_port):
        if headers.get("x-magic") != self.src:
            raise AuthenticationError(response_code=418, response_msg="I'm a teapot",
                                      response_headers={"X-Teapot": "short and stout"})
        if target_port is None:
            raise AuthenticationError(response_code=500, response_msg="no target given")
