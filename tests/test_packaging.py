"""
The installed package, as twistd finds it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import REPO, twistdCommand


def test_twistdListsWslbFromTheInstalledPackage(tmp_path: Path) -> None:
    """
    With the project installed (not merely on the path of this checkout),
    C{twistd --help} lists the wslb plugins.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [*twistdCommand(), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    commands = {
        line.split()[0] for line in result.stdout.splitlines() if line[:4] == "    "
    }
    assert "wslb" in commands


def test_noTwistedPackageInitShipped() -> None:
    """
    The project ships no C{twisted/__init__.py} or
    C{twisted/plugins/__init__.py}, which would hide Twisted's own package.
    """
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


def test_readmeCommandsAreWhatCIRuns() -> None:
    """
    CI runs the test command the README gives, read from the README itself.
    """
    script = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "readme_command test-command" in script
    assert "<!-- test-command -->" in readme
    assert "<!-- demo-command -->" in readme
