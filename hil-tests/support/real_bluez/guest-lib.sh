# Shell functions for the scenarios the tests write into the share (`. /share/lib.sh`): the daemon, the
# simulated device, and waiting on what they report.
export TZ=UTC
export RUST_LOG=vitalsd=debug,info
out=/share/out

# vitalsd with the scenario's configuration.
vitalsd() {
  cmd=$1
  shift
  /share/bin/vitalsd "$cmd" --config /share/vitalsd.toml "$@"
}

# Starts the simulated device with /share/device.json, or /share/$1.json; its events go where that
# file says (out/device.jsonl for the first).
start_device() {
  name=${1:-device}
  /share/bin/ble-peripheral /share/$name.json > $out/$name.log 2>&1 &
  eval "${name}_pid=\$!"
}

# Starts `vitalsd run`, logging to out/daemon.log. The binary is started itself, not through the
# `vitalsd` function: a function in the background runs in a subshell, and $! would be the subshell's,
# which a SIGTERM ends while the daemon runs on.
start_daemon() {
  /share/bin/vitalsd run --config /share/vitalsd.toml 2>> $out/daemon.log &
  daemon_pid=$!
}

# Stops the daemon with SIGTERM, as systemd does; its exit status goes to out/daemon.exit.
stop_daemon() {
  kill -TERM "$daemon_pid" 2>/dev/null
  wait "$daemon_pid"
  echo $? > $out/daemon.exit
}

# Whether the device reported an event named $1 (in out/$2.jsonl, out/device.jsonl without $2).
device_said() {
  grep -q "\"event\":\"$1\"" $out/${2:-device}.jsonl 2>/dev/null
}

# Whether the broker acknowledged at least $1 readings; the status is kept in out/status.json.
delivered_at_least() {
  vitalsd status --json > $out/status.json 2>/dev/null || return 1
  count=$(grep -o '"delivered_total": *[0-9]*' $out/status.json | grep -o '[0-9]*$')
  [ "${count:-0}" -ge "$1" ]
}

# Waits up to $1 seconds (of the guest's clock) for the command that follows; says what it waited for
# when it gives up.
wait_for() {
  limit=$1
  deadline=$(($(date +%s) + limit))
  shift
  while ! "$@"; do
    if [ "$(date +%s)" -ge $deadline ]; then
      echo "waited ${limit} s in vain for: $*"
      return 1
    fi
    sleep 0.25
  done
}

stage() {
  echo "$(cut -d' ' -f1 /proc/uptime) $*" >> $out/stages
}

# Whether the adapter $1 (hci0, hci1) is powered, as bluetoothd reports it.
adapter_powered() {
  dbus-send --system --print-reply --dest=org.bluez /org/bluez/$1 org.freedesktop.DBus.Properties.Get \
    string:org.bluez.Adapter1 string:Powered 2>/dev/null | grep -q 'boolean true'
}

adapter_unpowered() {
  dbus-send --system --print-reply --dest=org.bluez /org/bluez/$1 org.freedesktop.DBus.Properties.Get \
    string:org.bluez.Adapter1 string:Powered 2>/dev/null | grep -q 'boolean false'
}

# Whether a bluetoothd other than process $1 runs.
bluetoothd_replaced() {
  pid=$(pidof bluetoothd) && [ "$pid" != "$1" ]
}

# Stops bluetoothd as systemd would (SIGTERM); the rig's supervisor (guest-init.sh) starts it again, as
# after a package upgrade or a crash. Waits until both adapters are powered on the new one.
restart_bluetoothd() {
  old=$(pidof bluetoothd) || return 1
  kill -TERM "$old" || return 1
  wait_for 30 bluetoothd_replaced "$old" || return 1
  wait_for 30 adapter_powered hci0 && wait_for 30 adapter_powered hci1
}

# Whether the hub's controller has no LE link up.
no_hub_links() {
  ! btmgmt --index 0 con 2>/dev/null | grep -q 'type LE'
}

# Drops the hub's link to the device at address $1, as a hub that is done with it does.
drop_hub_link() {
  dbus-send --system --print-reply --dest=org.bluez "/org/bluez/hci0/dev_$(echo "$1" | tr : _)" \
    org.bluez.Device1.Disconnect > /dev/null 2>&1
}

# btvirt (BlueZ 5.66's emulator) numbers each controller's links on its own, from 0x002a up, and tells
# the peripheral the central's number; a packet the peripheral sends on a number its controller does not
# know is dropped. So a hub's second link works only if the device's controller already holds one link:
# this gives controller $1 a link of its own, as central, to hci3 (which advertises for it); the link
# lasts until the device drops its links at the end of its session. Its handle is 0x002a, so the hub's
# second link is 0x002b at both ends.
hold_a_link_from() {
  btmgmt --index 3 add-adv -c 1 >> $out/rig.log 2>&1
  hcitool -i "$1" lecc 00:AA:01:03:00:03 >> $out/rig.log 2>&1
  wait_for 10 has_link "$1" 00:AA:01:03:00:03
}

# Whether controller $1 (hciN) has an established LE link to address $2 (`hcitool con` also lists
# connections still being made).
has_link() {
  btmgmt --index "${1#hci}" con 2>/dev/null | grep -q "$2 type LE"
}

# `vitalsd pair ADDRESS ...` as a technician runs it. Now and then a scan in the rig hears none of a
# device's adverts (btvirt delivered none in two discovery cycles), and `pair` says the device was not
# found nearby; the technician then presses the device's pairing button (SIGUSR1: it advertises afresh)
# and runs `pair` again, once. What `pair` printed last goes to this function's stdout and stderr.
pair_device() {
  case "$1" in
    00:AA:01:02:00:02) button_of=${device2_pairing_pid:-$device2_pid} ;;
    *) button_of=$device_pid ;;
  esac
  for attempt in 1 2; do
    /share/bin/vitalsd pair --config /share/vitalsd.toml "$@" > /tmp/pair.stdout 2> /tmp/pair.stderr
    status=$?
    # With --json the error is a JSON line on standard output, else a line on standard error.
    if [ $attempt = 1 ] && grep -q 'was not found nearby' /tmp/pair.stderr /tmp/pair.stdout; then
      echo "pair $1: not found nearby; pressing the device's pairing button and trying again" >> $out/rig.log
      kill -USR1 "$button_of"
      sleep 1
      continue
    fi
    break
  done
  cat /tmp/pair.stdout
  cat /tmp/pair.stderr >&2
  return $status
}
