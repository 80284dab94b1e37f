# Sourced by start-cluster.sh and stop-cluster.sh: daemons by pid file (no systemd).
# shellcheck shell=bash

# running PIDFILE COMM : true if the pid in PIDFILE is alive and is COMM
running() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
stop_pid() {   # stop_pid PIDFILE COMM
  local pid i
  running "$1" "$2" || { echo "$2: not running"; return 0; }
  pid=$(cat "$1")
  echo "stopping $2 (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
    sleep 0.5
  done
  echo "$2 still alive after 30 s, SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
