#!/bin/sh
# The real-BlueZ rig's PID 1, after the image's /sbin/rig-init mounted the test's share on /share: brings
# up the Bluetooth stack (hci_vhci, two or three btvirt controllers, dbus, bluetoothd) and the network to
# the host, runs /share/scenario.sh, and ends the VM with its exit code through qemu's isa-debug-exit
# port. Logs go to /share/out for the test's failure messages.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
out=/share/out
mkdir -p $out

# Ends the VM: qemu exits with (CODE << 1) | 1.
finish() {
  echo "$1" > $out/exit-code
  sync
  printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  sleep 10
}

stage() {
  echo "$(cut -d' ' -f1 /proc/uptime) $*" >> $out/stages
}

# Waits up to $1 seconds (of the guest's clock) for the command that follows to succeed.
wait_for() {
  deadline=$(($(date +%s) + $1))
  shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge $deadline ] && return 1
    sleep 0.1
  done
}

stage init
mountpoint -q /dev/pts || { mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; }
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw / 2>/dev/null

for module in hci_vhci virtio_net; do
  modprobe "$module" || { echo "modprobe $module failed" >> $out/rig.log; finish 120; }
done

# qemu's user-mode network: the host's loopback is 10.0.2.2.
ip link set lo up
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$nic" up && ip addr add 10.0.2.15/24 dev "$nic" && ip route add default via 10.0.2.2 \
  || { ip addr >> $out/rig.log 2>&1; finish 121; }

mkdir -p /run/dbus
dbus-daemon --system --fork || finish 122

# The controllers are ready when the kernel lists them to management clients: it does so once their
# setup (HCI Reset and the rest) succeeded. hci1 must be btvirt's second controller, the device's, and
# each hciN has the address 00:AA:01:0N:00:0N. A scenario with two devices asks for more controllers
# (hci2, hci3) in /share/controllers.
controllers=$(cat /share/controllers 2>/dev/null || echo 2)
extra_controllers=$(seq 1 $((controllers - 1)))
controllers_ready() {
  timeout 5 btmgmt info > /tmp/controllers 2>&1 && grep -q '^hci0:' /tmp/controllers || return 1
  for n in $extra_controllers; do
    grep -A1 "^hci$n:" /tmp/controllers | grep -q "addr 00:AA:01:0$n:00:0$n" || return 1
  done
}
no_controllers() {
  [ -z "$(ls /sys/class/bluetooth)" ]
}
# On a busy machine btvirt can answer the kernel's first HCI Reset later than the kernel's 2 s timeout,
# and that controller is never set up; a new btvirt starts again with fresh controllers, once the old
# ones are gone (else the new ones take other numbers).
for attempt in 1 2 3; do
  btvirt -L -l"$controllers" >> $out/btvirt.log 2>&1 &
  btvirt_pid=$!
  wait_for 15 controllers_ready && break
  echo "attempt $attempt: btvirt's controllers did not come up: $(cat /tmp/controllers)" >> $out/rig.log
  kill "$btvirt_pid"
  wait "$btvirt_pid"
  wait_for 10 no_controllers
  [ $attempt = 3 ] && finish 123
done
stage controllers

# bluetoothd runs as on a hub, where one that died is started again (D-Bus activation through systemd,
# as soon as vitalsd calls it). BlueZ 5.66 crashed in the rig re-creating a device the daemon had just
# removed while a link to it came up; without this the scenario would end there, as a hub never does.
: > $out/bluetoothd.log
(
  while :; do
    /usr/libexec/bluetooth/bluetoothd -n -d >> $out/bluetoothd.log 2>&1
    code=$?
    echo "--- bluetoothd exited with status $code; started again" >> $out/bluetoothd.log
    [ "$code" = 0 ] || echo "bluetoothd exited with status $code; started again" >> $out/rig.log
    sleep 1
  done
) &
adapters_on_bus() {
  dbus-send --system --print-reply --dest=org.bluez / org.freedesktop.DBus.ObjectManager.GetManagedObjects \
    > /tmp/objects 2>/dev/null || return 1
  for n in 0 $extra_controllers; do
    grep -q "\"/org/bluez/hci$n\"" /tmp/objects || return 1
  done
}
wait_for 20 adapters_on_bus || { echo "bluetoothd did not show every adapter" >> $out/rig.log; finish 124; }
# What bluetoothd signals (a value that reached the bus or not), kept with a failed scenario's share.
dbus-monitor --system "type='signal',sender='org.bluez'" > $out/bluez-signals.log 2>&1 &
# bluetoothd powers the adapters on by itself (AutoEnable); the scenario starts once all are on.
powered() {
  dbus-send --system --print-reply --dest=org.bluez /org/bluez/$1 org.freedesktop.DBus.Properties.Get \
    string:org.bluez.Adapter1 string:Powered 2>/dev/null | grep -q 'boolean true'
}
for n in 0 $extra_controllers; do
  wait_for 20 powered hci$n || { echo "the adapters were not powered on" >> $out/rig.log; finish 124; }
done
stage bluetooth

cd /share || finish 125
sh /share/scenario.sh > $out/scenario.log 2>&1
code=$?
stage "scenario exit $code"
finish $code
