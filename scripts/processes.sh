# Shell functions shared by start-loadbalancer.sh and stop-loadbalancer.sh:
# telling whether a pid file's process is a live twistd of ours, and killing
# one with its process group.  Sourced, not run.
# shellcheck shell=bash

# Whether process $1 is alive (a zombie is not).
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

# SIGKILL process $1 and the rest of its process group (a daemonized twistd
# leads its own group, which holds the load balancer's worker processes).
kill_hard() {
  local group
  group=$(ps -o pgid= -p "$1" 2>/dev/null | tr -d ' ' || true)
  if [ -n "$group" ] && [ "$group" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]; then
    kill -KILL -- "-$group" 2>/dev/null || true
  else
    kill -KILL "$1" 2>/dev/null || true
  fi
}

# Whether process $1 is a live twistd started with pid file $2.
ours() {
  local command
  alive "$1" || return 1
  if [ -r "/proc/$1/cmdline" ]; then
    command=$(tr '\0' ' ' <"/proc/$1/cmdline")
  else
    command=$(ps -ww -o args= -p "$1" 2>/dev/null) || return 1
  fi
  case "$command" in
    *twistd*"$2"*) return 0 ;;
    *) return 1 ;;
  esac
}
