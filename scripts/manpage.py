"""Write websockify(1), the man page, from the command line's own parser.

The options section is generated from ``websockify.cli.build_parser()``, the
parser behind ``websockify --help``, so the page lists exactly the options the
installed program accepts, with the same help text.  The Debian package runs
this at build time (``make man`` does too)::

    python3 scripts/manpage.py > websockify.1

The date is $SOURCE_DATE_EPOCH's (reproducible builds), else today's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockify import __version__
from websockify.cli import USAGE, build_parser

SECTIONS = {
    "WRAPPING A PROGRAM": """
With \\fB\\-\\- COMMAND ARGS...\\fR websockify starts COMMAND with the rebind.so shim
preloaded.  The shim moves the program's TCP listener to a free loopback port and
tells websockify which, so clients of websockify's port reach the program:
\\fBwebsockify 6080 \\-\\- vncserver :1\\fR.  \\fB\\-\\-wrap\\-mode\\fR says what happens
when the program ends.""",
    "DEPLOYING UNDER GUNICORN": """
\\fBwebsockify.wsgi:application\\fR is the same server as a WSGI application,
configured by the environment variable \\fBWEBSOCKIFY_ARGS\\fR (these options
without the listening address):
.PP
.nf
WEBSOCKIFY_ARGS="localhost:5900" gunicorn \\e
    \\-k websockify.gunicorn_worker.WebsockifyWorker \\-b 127.0.0.1:6080 \\e
    websockify.wsgi:application
.fi""",
    "SYSTEMD": """
The package installs the templates \\fBwebsockify@.socket\\fR and
\\fBwebsockify@.service\\fR, enabled by nobody.  The instance is the address to
listen on, and \\fI/etc/websockify/INSTANCE.conf\\fR sets \\fBWEBSOCKIFY_ARGS\\fR:
.PP
.nf
systemctl enable \\-\\-now websockify@6080.socket
.fi""",
    "ENVIRONMENT": """
.TP
.B WEBSOCKIFY_REBIND
the rebind.so to preload when \\fB\\-\\-rebind\\fR is not given.
.TP
.B WEBSOCKIFY_ARGS
the options of the WSGI application (websockify.wsgi).""",
    "EXIT STATUS": """
0 after a clean stop (SIGTERM or SIGINT, \\fB\\-\\-timeout\\fR, \\fB\\-\\-run\\-once\\fR),
2 for a wrong command line, 1 for any other failure; with a wrapped program and
\\fB\\-\\-wrap\\-mode exit\\fR, the program's own status.""",
    "FILES": """
.TP
.I /usr/lib/websockify/rebind.so
the shim preloaded into wrapped programs.
.TP
.I /etc/websockify/INSTANCE.conf
the arguments of the systemd instance INSTANCE.""",
    "SEE ALSO": """
\\fBrebind\\fR(1), \\fBgunicorn\\fR(1)""",
}


def escape(text: str) -> str:
    """Text made safe for roff: backslashes, hyphens, and leading dots or quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def option_synopsis(action: argparse.Action) -> str:
    """``\\fB\\-\\-wrap\\-mode\\fR \\fIMODE\\fR``: the option strings and their argument."""
    names = ", ".join(f"\\fB{escape(name)}\\fR" for name in action.option_strings)
    if action.nargs == 0:
        return names
    if action.metavar is not None:
        argument = str(action.metavar)
    elif action.choices is not None:
        argument = "{" + ",".join(str(choice) for choice in action.choices) + "}"
    else:
        argument = action.dest.upper()
    return f"{names} \\fI{escape(argument)}\\fR"


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": parser.prog}
    return escape(text)


def render(parser: argparse.ArgumentParser, date: datetime.date) -> str:
    lines = [
        f'.TH WEBSOCKIFY 1 "{date.isoformat()}" "websockify {__version__}" "User Commands"',
        ".SH NAME",
        "websockify \\- relay WebSocket clients to a TCP or unix\\-socket service",
        ".SH SYNOPSIS",
        ".nf",
        *(escape(line.strip()) for line in USAGE.strip().splitlines()),
        ".fi",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        "It speaks RFC 6455 (versions 13, 8, 7) and the Hixie\\-76/75 drafts, with the",
        "\\fBbinary\\fR and \\fBbase64\\fR subprotocols, and can serve static files (such as",
        "noVNC) on the same port.",
        ".SH OPTIONS",
    ]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        lines += [".TP", option_synopsis(action), option_help(parser, action)]
    for title, body in SECTIONS.items():
        lines += [f".SH {title}", body.strip()]
    return "\n".join(lines) + "\n"


def build_date() -> datetime.date:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).date()
    return datetime.date.today()


def main() -> None:
    sys.stdout.write(render(build_parser(), build_date()))


if __name__ == "__main__":
    main()
