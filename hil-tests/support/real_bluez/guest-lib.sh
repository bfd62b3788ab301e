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

# Starts the simulated device with /share/device.json; its events go to out/device.jsonl.
start_device() {
  /share/bin/ble-peripheral /share/device.json > $out/device.log 2>&1 &
  device_pid=$!
}

# Starts `vitalsd run`, logging to out/daemon.log.
start_daemon() {
  vitalsd run 2>> $out/daemon.log &
  daemon_pid=$!
}

# Stops the daemon with SIGTERM, as systemd does; its exit status goes to out/daemon.exit.
stop_daemon() {
  kill -TERM "$daemon_pid" 2>/dev/null
  wait "$daemon_pid"
  echo $? > $out/daemon.exit
}

# Whether the device reported an event named $1.
device_said() {
  grep -q "\"event\":\"$1\"" $out/device.jsonl 2>/dev/null
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
