# brandgate %preun ($1: 0 on erase, 1 or more on upgrade).
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop brandgate.service || :
    fi
    systemctl disable brandgate.service >/dev/null 2>&1 || :
fi
exit 0
