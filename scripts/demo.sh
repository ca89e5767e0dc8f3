#!/bin/sh
# `make demo`: a TigerVNC desktop (an xterm) in the browser, through websockify's
# launcher.  vncserver daemonizes and keeps its own port 590N; rebind.so moves that
# one listener to a loopback port and websockify follows it.  Ctrl-C stops everything.
set -eu

port=${DEMO_PORT:-6080}
# The desktop has no VNC password: serve it on loopback unless told otherwise
# (DEMO_LISTEN=0.0.0.0 make demo, on a machine you trust the network of).
listen=${DEMO_LISTEN:-127.0.0.1}
novnc=${NOVNC_DIR:-/usr/share/novnc}
python=${PYTHON:-.venv/bin/python}

if [ ! -f "$novnc/vnc.html" ]; then
    echo "demo: noVNC not found in $novnc (apt-get install novnc, or set NOVNC_DIR)" >&2
    exit 1
fi

# The first X display nobody uses, so the demo never touches a running desktop.
display=1
while [ -e "/tmp/.X$display-lock" ] || [ -e "/tmp/.X11-unix/X$display" ]; do
    display=$((display + 1))
done

echo
echo "  Open http://localhost:$port/vnc.html?autoconnect=1&resize=remote"
echo "  (VNC display :$display, no password; Ctrl-C here stops it all)"
echo "  A server started in the desktop's xterm listens on the port it asks for."
echo
exec "$python" -m websockify --web "$novnc" "$listen:$port" -- \
    vncserver ":$display" -SecurityTypes None --I-KNOW-THIS-IS-INSECURE \
    -localhost yes -geometry 1280x800 -xstartup /usr/bin/xterm
