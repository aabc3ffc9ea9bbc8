# brandgate %post ($1: 1 on install, 2 or more on upgrade).
systemd-tmpfiles --create /usr/lib/tmpfiles.d/brandgate.conf || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
if [ "$1" -eq 1 ]; then
    # First install: enabled for the next boot, not started. The operator adds credentials
    # and runs `brandgate check-config` first.
    systemctl enable brandgate.service >/dev/null 2>&1 || :
fi
exit 0
