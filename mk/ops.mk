# Operations' part of the build: the Debian packages its tests need.
# systemd: systemd-socket-activate (a real socket-activation launcher) and
# systemd-analyze (checks contrib/systemd's units); nothing is started.
# nodejs: a JavaScript engine reads --record's files back as noVNC's page does.
OPS_APT_PACKAGES := systemd nodejs
