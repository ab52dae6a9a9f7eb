#!/usr/bin/env bash
# Stop what ./start-loadbalancer.sh started: the processes named by the pid
# files in run/ (or $WSLB_RUN_DIR), and nothing else.  The load balancer goes
# first (its clients get close 1001, going away, spread over DRAIN_SECONDS),
# then the backends.  Each gets SIGTERM, then SIGKILL if it has not exited
# within $WSLB_STOP_TIMEOUT seconds (default 20: the default drain of 10
# seconds and its 5-second deadline fit).  Running it when nothing runs is
# fine.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run_dir=${WSLB_RUN_DIR:-$here/run}
stop_timeout=${WSLB_STOP_TIMEOUT:-20}

case "$stop_timeout" in
  '' | *[!0-9]*)
    echo "stop-loadbalancer: WSLB_STOP_TIMEOUT='$stop_timeout' is not a number of seconds" >&2
    exit 1
    ;;
esac

if [ ! -d "$run_dir" ]; then
  echo "wslb is not running (no $run_dir)"
  exit 0
fi
run_dir=$(cd "$run_dir" && pwd)

# shellcheck source=scripts/processes.sh
. "$here/scripts/processes.sh"

stopped_any=0

# Stop the services named in the arguments, together.
stop_services() {
  local service pidfile pid pids=() names=() deadline i
  for service in "$@"; do
    pidfile=$run_dir/$service.pid
    [ -e "$pidfile" ] || continue
    pid=$(tr -d '[:space:]' <"$pidfile" 2>/dev/null || true)
    case "$pid" in
      '' | *[!0-9]*) pid= ;;
    esac
    if [ -n "$pid" ] && ours "$pid" "$pidfile"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$service")
    else
      rm -f "$pidfile"
      echo "$service was not running (removed stale pid file $pidfile)"
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  stopped_any=1

  deadline=$((SECONDS + stop_timeout))
  for i in "${!pids[@]}"; do
    while alive "${pids[$i]}" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if alive "${pids[$i]}"; then
      echo "${names[$i]} (pid ${pids[$i]}) did not exit within ${stop_timeout}s of SIGTERM; sending SIGKILL" >&2
      kill_hard "${pids[$i]}"
      deadline=$((SECONDS + 5))
      while alive "${pids[$i]}" && ((SECONDS < deadline)); do
        sleep 0.1
      done
    fi
    rm -f "$run_dir/${names[$i]}.pid"
    echo "${names[$i]} stopped (pid ${pids[$i]})"
  done
}

stop_services loadbalancer
stop_services backend-1 backend-2 backend-3

if [ "$stopped_any" = 0 ]; then
  echo "wslb is not running (no live pid files in $run_dir)"
fi
