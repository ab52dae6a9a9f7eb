#!/usr/bin/env bash
# Start three demo quote backends and the wslb load balancer as twistd
# daemons, with pid and log files under run/ (stop them with
# ./stop-loadbalancer.sh).
#
#   ./start-loadbalancer.sh            start what is not running, wait for /health
#   ./start-loadbalancer.sh --status   show what runs and what /health says
#
# Ports (WSLB_BASE_PORT shifts them all, default 3000):
#   load balancer  BASE        (WebSocket clients)
#   monitoring     BASE+4      (/health, /status)
#   backend N      BASE+N      (N = 1, 2, 3), its health port BASE+1000+N
#
# Environment:
#   WSLB_BASE_PORT      see above (default 3000)
#   WSLB_RUN_DIR        pid and log files (default: run/ beside this script)
#   TWISTD              the twistd to run (default: $VIRTUAL_ENV/bin/twistd,
#                       .venv/bin/twistd beside this script, the twistd beside
#                       python3 on PATH, or twistd on PATH)
#   WSLB_START_TIMEOUT  seconds to wait for /health to answer 200 with every
#                       backend healthy (default 15)
#
# The load balancer runs in this script's directory, so it reads the .env
# there (see .env.example) for every setting except its ports and backends,
# which this script gives on the command line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run_dir=${WSLB_RUN_DIR:-$here/run}
base=${WSLB_BASE_PORT:-3000}
start_timeout=${WSLB_START_TIMEOUT:-15}
# twistd waits for its daemon to report a successful start; a daemon that
# dies without reporting would leave it waiting forever.
launch_timeout=30

services=(backend-1 backend-2 backend-3 loadbalancer)

die() {
  echo "start-loadbalancer: $*" >&2
  exit 1
}

case "$base" in
  '' | *[!0-9]*) die "WSLB_BASE_PORT='$base' is not a port number" ;;
esac
if ((10#$base < 1 || 10#$base + 1003 > 65535)); then
  die "WSLB_BASE_PORT=$base is out of range: the ports used go up to WSLB_BASE_PORT+1003, at most 65535"
fi
base=$((10#$base))
case "$start_timeout" in
  '' | *[!0-9]*) die "WSLB_START_TIMEOUT='$start_timeout' is not a number of seconds" ;;
esac

[ "${1:-}" = --status ] || mkdir -p "$run_dir"
[ ! -d "$run_dir" ] || run_dir=$(cd "$run_dir" && pwd)
monitor_url="http://127.0.0.1:$((base + 4))/health"

# The backend number of a service (backend-2 -> 2).
backend_number() {
  echo "${1#backend-}"
}

# The ports a service listens on, with what each is for.
service_ports() {
  local n
  if [ "$1" = loadbalancer ]; then
    echo "$base:load balancer client port"
    echo "$((base + 4)):load balancer monitoring port"
  else
    n=$(backend_number "$1")
    echo "$((base + n)):$1 WebSocket port"
    echo "$((base + 1000 + n)):$1 health port"
  fi
}

# shellcheck source=scripts/processes.sh
. "$here/scripts/processes.sh"

# The pid of service $1 if it is running; a stale pid file is removed.
running_pid() {
  local pidfile=$run_dir/$1.pid pid
  [ -e "$pidfile" ] || return 1
  pid=$(tr -d '[:space:]' <"$pidfile" 2>/dev/null || true)
  case "$pid" in
    '' | *[!0-9]*) ;;
    *)
      if ours "$pid" "$pidfile"; then
        echo "$pid"
        return 0
      fi
      ;;
  esac
  rm -f "$pidfile"
  echo "start-loadbalancer: removed stale pid file $pidfile${pid:+ (pid $pid is not running)}" >&2
  return 1
}

# Who listens on TCP port $1 ("" if nobody, "another process" if unknown).
port_user() {
  local listeners user
  if command -v ss >/dev/null 2>&1; then
    listeners=$(ss -ltnpH "sport = :$1" 2>/dev/null || true)
    if [ -n "$listeners" ]; then
      # users:(("python3",pid=1234,fd=3)) -> python3 (pid 1234)
      user=$(echo "$listeners" | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n 1)
      echo "${user:-another process}"
      return 0
    fi
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "another process"
  fi
}

find_twistd() {
  local candidate python
  if [ -n "${TWISTD:-}" ]; then
    [ -x "$TWISTD" ] || command -v "$TWISTD" >/dev/null 2>&1 ||
      die "TWISTD='$TWISTD' is not an executable"
    echo "$TWISTD"
    return
  fi
  for candidate in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/twistd}" "$here/.venv/bin/twistd"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
  if python=$(command -v python3 2>/dev/null) && [ -x "$(dirname "$python")/twistd" ]; then
    echo "$(dirname "$python")/twistd"
    return
  fi
  command -v twistd 2>/dev/null ||
    die "no twistd found: install wslb (python3 -m venv .venv && .venv/bin/pip install .) or set TWISTD"
}

# The HTTP status of GET $1 (000 when nothing answers); the body goes to $2.
http_get() {
  if command -v curl >/dev/null 2>&1; then
    curl -s -o "$2" -w '%{http_code}' --max-time 2 "$1" || true
  else
    python3 - "$1" "$2" <<'EOF' || echo 000
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as answer:
        code, body = answer.status, answer.read()
except urllib.error.HTTPError as error:
    code, body = error.code, error.read()
except OSError:
    code, body = 0, b""
open(sys.argv[2], "wb").write(body)
print(f"{code:03d}")
EOF
  fi
}

# One line summing up a /health answer in file $1.
health_summary() {
  local status healthy count
  status=$(grep -o '"status": *"[a-z]*"' "$1" | head -n 1 | grep -o '"[a-z]*"$' | tr -d '"')
  healthy=$(grep -o '"healthyBackends": *[0-9]*' "$1" | grep -o '[0-9]*$')
  count=$(grep -o '"backendCount": *[0-9]*' "$1" | grep -o '[0-9]*$')
  echo "${status:-?}, ${healthy:-?} of ${count:-?} backends healthy"
}

show_status() {
  local service pid code body missing=0
  for service in "${services[@]}"; do
    if pid=$(running_pid "$service" 2>/dev/null); then
      printf '  %-13s running (pid %s)\n' "$service" "$pid"
    else
      printf '  %-13s not running\n' "$service"
      missing=1
    fi
  done
  body=$(mktemp)
  code=$(http_get "$monitor_url" "$body")
  if [ "$code" = 000 ]; then
    echo "  $monitor_url: no answer"
  else
    echo "  $monitor_url: $code, $(health_summary "$body")"
  fi
  rm -f "$body"
  [ "$missing" = 0 ] && [ "$code" = 200 ]
}

if [ "${1:-}" = --status ]; then
  echo "wslb (pid and log files in $run_dir):"
  show_status || exit 3
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--status]" >&2
  exit 2
fi

# What is already running stays; what is not is started, if its ports are free.
to_start=()
for service in "${services[@]}"; do
  if pid=$(running_pid "$service"); then
    echo "$service already running (pid $pid)"
  else
    to_start+=("$service")
  fi
done

taken=0
for service in ${to_start[@]+"${to_start[@]}"}; do
  while IFS=: read -r port what; do
    user=$(port_user "$port")
    if [ -n "$user" ]; then
      echo "start-loadbalancer: port $port ($what) is already in use by $user" >&2
      taken=1
    fi
  done < <(service_ports "$service")
done
if [ "$taken" = 1 ]; then
  echo "start-loadbalancer: nothing started; free the port(s) or set WSLB_BASE_PORT" >&2
  exit 1
fi

started=()

# Stop what this run started (and service $1, if given, which failed to
# start), after a failure; what ran before this run is left alone.
roll_back() {
  local service pid pids=() deadline=$((SECONDS + 10)) stopping=(${started[@]+"${started[@]}"})
  [ -z "${1:-}" ] || stopping+=("$1")
  for service in ${stopping[@]+"${stopping[@]}"}; do
    if pid=$(running_pid "$service" 2>/dev/null); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    while alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if alive "$pid"; then
      kill_hard "$pid"
    fi
  done
  for service in ${stopping[@]+"${stopping[@]}"}; do
    rm -f "$run_dir/$service.pid"
  done
  if [ "${#started[@]}" -gt 0 ]; then
    echo "start-loadbalancer: stopped what this run started (${started[*]}); logs stay in $run_dir" >&2
  fi
}

# The last lines of service $1's log, of those from byte $2 on.
show_log_tail() {
  local log=$run_dir/$1.log
  echo "--- last lines of $log ---" >&2
  if [ -s "$log" ] && [ "$(wc -c <"$log")" -gt "$2" ]; then
    tail -c +$(($2 + 1)) "$log" | tail -n 20 >&2
  else
    echo "(nothing logged)" >&2
  fi
}

# The size of file $1 in bytes, 0 if there is none.
size_of() {
  if [ -e "$1" ]; then wc -c <"$1" | tr -d ' '; else echo 0; fi
}

[ "${#to_start[@]}" -eq 0 ] || twistd=$(find_twistd)
cd "$here"
lb_log_start=0
timeout_command=()
if command -v timeout >/dev/null 2>&1; then
  timeout_command=(timeout "$launch_timeout")
fi
for service in ${to_start[@]+"${to_start[@]}"}; do
  if [ "$service" = loadbalancer ]; then
    arguments=(wslb --port "$base" --monitor-port "$((base + 4))")
    for n in 1 2 3; do
      arguments+=(--backend "localhost:$((base + n))")
    done
  else
    n=$(backend_number "$service")
    arguments=(wslb-backend --port "$((base + n))" --name "$service")
  fi
  log_start=$(size_of "$run_dir/$service.log")
  [ "$service" != loadbalancer ] || lb_log_start=$log_start
  if ! ${timeout_command[@]+"${timeout_command[@]}"} "$twistd" --pidfile "$run_dir/$service.pid" \
    --logfile "$run_dir/$service.log" "${arguments[@]}"; then
    echo "start-loadbalancer: $service did not start" >&2
    show_log_tail "$service" "$log_start"
    roll_back "$service"
    exit 1
  fi
  started+=("$service")
  echo "$service started (pid $(cat "$run_dir/$service.pid" 2>/dev/null || echo '?'))"
done

# The load balancer checks its backends once at startup: /health answers 200
# once one of them passed, and says "healthy" once all of them did.
body=$(mktemp)
trap 'rm -f "$body"' EXIT
deadline=$((SECONDS + start_timeout))
code=000
while :; do
  code=$(http_get "$monitor_url" "$body")
  if [ "$code" = 200 ] && grep -q '"status": *"healthy"' "$body"; then
    break
  fi
  if ((SECONDS >= deadline)) && [ "$code" = 200 ]; then
    echo "start-loadbalancer: warning: not every backend is healthy after ${start_timeout}s" >&2
    break
  fi
  if ((SECONDS >= deadline)); then
    case "$code" in
      000) answer="no answer" ;;
      503) answer="503: no backend is healthy" ;;
      *) answer=$code ;;
    esac
    echo "start-loadbalancer: $monitor_url did not answer 200 within ${start_timeout}s (last answer: $answer)" >&2
    show_log_tail loadbalancer "$lb_log_start"
    roll_back
    exit 1
  fi
  sleep 0.2
done

cat <<EOF
wslb is up: $(health_summary "$body")
  clients      ws://localhost:$base
  monitoring   http://localhost:$((base + 4))/health and /status
  backends     ws://localhost:$((base + 1))-$((base + 3)), health on http://localhost:$((base + 1001))-$((base + 1003))/health
  pids, logs   $run_dir
  status       $0 --status
  stop         $here/stop-loadbalancer.sh
EOF
