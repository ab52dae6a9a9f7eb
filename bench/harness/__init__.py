"""
The benchmark harness behind C{bench/run.sh}: see C{bench/README.md}.

Standard library only, so any Python 3.9+ runs it; the load balancer under
test runs in its own virtualenv.
"""
