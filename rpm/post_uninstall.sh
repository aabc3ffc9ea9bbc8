# brandgate %postun ($1: 0 on erase, 1 or more on upgrade). Configuration, secrets and state
# are kept on erase (a modified config is saved as .rpmsave).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 1 ]; then
        # Upgrade: restart on the new files only if it was running.
        systemctl try-restart brandgate.service || :
    fi
fi
exit 0
