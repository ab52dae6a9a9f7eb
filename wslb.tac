# Run wslb with `twistd -ny wslb.tac`, configured from the environment and
# ./.env only.  `twistd -n wslb --help` lists the same settings as options.
#
# twistd prints a traceback for any Exception raised while loading a tac, but
# lets SystemExit through: Python prints its message on stderr and exits 1.
import os

from twisted.application import service

from wslb_twisted.config import ConfigError, loadSettings

try:
    settings = loadSettings({}, os.environ)
except ConfigError as error:
    raise SystemExit(str(error)) from None

# Imported once the settings are known good, so a bad setting is reported
# first, before anything else can go wrong.
from wslb_twisted.service import makeService  # noqa: E402

cwd = os.getcwd()


def reloadSettings():
    """On SIGHUP: the environment and .env again, and the --config-file."""
    return loadSettings({}, os.environ, cwd)


application = service.Application("wslb")
makeService(
    settings, reloadSettings=reloadSettings, handleSignals=True
).setServiceParent(application)
