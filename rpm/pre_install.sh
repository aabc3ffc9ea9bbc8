# brandgate %pre: the service user exists before files owned by its group are installed.
if command -v systemd-sysusers >/dev/null 2>&1; then
    echo 'u brandgate - "brandgate daemon" /var/lib/brandgate /usr/sbin/nologin' | \
        systemd-sysusers --replace=/usr/lib/sysusers.d/brandgate.conf -
elif ! getent passwd brandgate >/dev/null; then
    getent group brandgate >/dev/null || groupadd -r brandgate
    useradd -r -g brandgate -d /var/lib/brandgate -s /usr/sbin/nologin -c "brandgate daemon" brandgate
fi
exit 0
