"""The Lua mod's own checks, run from the Python suite so one command runs everything.

busted specs (WebSocket framing, handshake, protocol, actions against a fake
`core`), luacheck, and a smoke run of the mod in a real headless
minetestserver against a local fake gateway.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

MOD_ROOT = Path(__file__).resolve().parents[2] / "luanti_mod"


def run(cmd, timeout):
    return subprocess.run(cmd, cwd=MOD_ROOT, capture_output=True, text=True, timeout=timeout)


def require(tool):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: `bin/voyager setup` installs the Debian packages the suite needs")


def test_the_busted_specs_pass():
    require("busted")
    result = run(["busted", "--output=TAP"], timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "not ok" not in result.stdout


def test_luacheck_is_clean():
    require("luacheck")
    result = run(["luacheck", "--no-color", "voyager", "spec", "tests/voyager_test"], timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 warnings / 0 errors" in result.stdout


@pytest.mark.e2e
def test_the_mod_runs_in_a_real_luanti_server():
    if not Path("/usr/games/minetestserver").exists():
        pytest.fail("minetest-server is not installed: `bin/voyager setup` installs it")
    result = run(["sh", "tests/smoke.sh"], timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "smoke: PASS (refused-token run)" in result.stdout
