"""The testbed starts daemons that run its own code, whatever folder it is started in."""

import subprocess
import sys

from peer.config import load_config
from peer.testbed.processes import PACKAGE_ROOT, same_code_env
from peer.testbed.runner import Testbed


def test_a_daemon_imports_the_testbeds_package_not_a_peer_folder_where_it_starts(tmp_path):
    impostor = tmp_path / "peer"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("")
    command = Testbed(load_config(overrides={"peers": 1}), tmp_path / "bed", {}).command(0)
    assert command[:4] == [sys.executable, "-P", "-m", "peer.cli"]
    probe = [sys.executable, "-P", "-c", "import peer; print(peer.__file__)"]
    imported = subprocess.run(probe, cwd=tmp_path, env=same_code_env(), capture_output=True, text=True, check=True)
    assert imported.stdout.strip().startswith(str(PACKAGE_ROOT / "peer"))
