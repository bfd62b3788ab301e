#!/bin/sh
# The systemd image's first process, after /sbin/rig-init mounted the test's share on /share: installs the
# rig's units and hands over to systemd as PID 1. systemd then starts btvirt's controllers, dbus and
# bluetoothd as a hub's system would, and, once the system is up, the test's /share/scenario.sh as the unit
# rig-scenario, which ends the VM with the scenario's exit code through qemu's isa-debug-exit port.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /share/out
mount -o remount,rw / 2>/dev/null

units=/etc/systemd/system
mkdir -p $units/multi-user.target.wants $units/bluetooth.service.wants

# Two virtual LE controllers: hci0 the hub's, hci1 the device's (00:AA:01:01:00:01).
cat > $units/rig-btvirt.service <<'UNIT'
[Unit]
Description=btvirt's virtual Bluetooth controllers
Before=bluetooth.service
[Service]
ExecStartPre=/sbin/modprobe hci_vhci
ExecStart=/usr/bin/btvirt -L -l2
UNIT
ln -sf $units/rig-btvirt.service $units/bluetooth.service.wants/rig-btvirt.service

cat > /usr/local/sbin/rig-scenario <<'SCRIPT'
#!/bin/sh
out=/share/out
sh /share/scenario.sh > $out/scenario.log 2>&1
code=$?
journalctl -b --no-pager > $out/journal.log 2>&1
echo "$code" > $out/exit-code
sync
printf "\\$(printf %o "$code")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
SCRIPT
chmod 755 /usr/local/sbin/rig-scenario

cat > $units/rig-scenario.service <<'UNIT'
[Unit]
Description=the test's scenario
Wants=bluetooth.service
After=multi-user.target bluetooth.service
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/local/sbin/rig-scenario
UNIT
ln -sf $units/rig-scenario.service $units/multi-user.target.wants/rig-scenario.service

exec /lib/systemd/systemd
