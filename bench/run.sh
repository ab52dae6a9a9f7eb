#!/bin/sh
# wslb's benchmark in one command: direct, wslb and HAProxy on four scenarios.
#   bench/run.sh [--quick] [--scenarios S1,S2,S3,S4] [--targets direct,wslb,haproxy] [--help]
# See bench/README.md.  The harness (run.py) needs only Python 3.9+'s standard
# library; it installs the Node load generator's packages on first use.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# Every connection is a file descriptor: 2000 clients through a load balancer
# need 4000+ of them in the LB and the generator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
python=${BENCH_PYTHON:-$(command -v python3 || true)}
if [ -z "$python" ]; then
    echo "bench/run.sh: python3 is needed to run the harness" >&2
    exit 1
fi
# run.py stops everything it started on exit, on errors and on
# SIGINT/SIGTERM/SIGHUP, and its children die with it even if it is killed.
WSLB_BENCH_PROG=${WSLB_BENCH_PROG:-$0} exec "$python" "$here/run.py" "$@"
