# wslb: the load balancer by default; the same image runs the demo backend
# (docker run IMAGE wslb-backend --port 3001 --interface 0.0.0.0) or any other
# twistd plugin.  See docker-compose.loadbalancer.yml.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY twisted ./twisted
COPY wslb_twisted ./wslb_twisted
# Install, then write Twisted's plugin cache while site-packages is still
# writable (the non-root user below cannot update it).
RUN pip install . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && rm -rf /src

RUN useradd --create-home --uid 10001 wslb
USER wslb
WORKDIR /home/wslb

# Clients, monitoring (/health, /status).
EXPOSE 3000 3004

# The load balancer's /health answers 200 while at least one backend is
# healthy.  Containers running wslb-backend override this (see the compose
# file).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3004/health', timeout=4)"]

# Foreground, logging to stdout.  --pidfile= writes no pid file: a stale
# twistd.pid naming PID 1 would stop a restarted container from starting.
ENTRYPOINT ["twistd", "-n", "--pidfile="]
CMD ["wslb"]
