import subprocess
import sys

import pytest


def test_checked_in_grpc_code_matches_the_proto():
    pytest.importorskip("grpc_tools")
    result = subprocess.run([sys.executable, "-m", "peer.tools.gen_proto", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
