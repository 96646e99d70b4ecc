"""A real zpd for the tests, over CURVE on 127.0.0.1.

With ZP_TEST_TARGET set (e2e.TestPython does, with ZP_CONFIG and
ZP_LIBZP), the tests use that zpd; otherwise they start one from
$ZP_BIN (default ../bin: make build) with a fresh client key.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("ZP_LIBZP", os.path.join(ROOT, "lib", "libzp.so"))


@pytest.fixture(scope="session")
def target():
    if os.environ.get("ZP_TEST_TARGET"):
        yield os.environ["ZP_TEST_TARGET"]
        return
    bindir = os.environ.get("ZP_BIN", os.path.join(ROOT, "bin"))
    home = tempfile.mkdtemp(prefix="zp-pytest-")
    os.environ["ZP_CONFIG"] = os.path.join(home, "config")
    pub = subprocess.run([os.path.join(bindir, "zp"), "keygen"], capture_output=True, check=True).stdout
    ak = os.path.join(home, "authorized_keys")
    with open(ak, "wb") as f:
        f.write(pub)
    zpd = subprocess.Popen([os.path.join(bindir, "zpd"), "--listen", "127.0.0.1:0", "--state",
                            os.path.join(home, "state"), "--authorized-keys", ak],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    addr = None
    deadline = time.time() + 10
    while time.time() < deadline:
        line = zpd.stderr.readline().decode()
        m = re.search(r'msg="zpd listening".* addr=(\S+)', line)
        if m:
            addr = m.group(1)
            break
    if addr is None:
        zpd.kill()
        zpd.wait()
        pytest.fail("zpd did not start")
    # Keep draining its log so that it never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in zpd.stderr], daemon=True).start()
    yield addr
    zpd.terminate()
    zpd.wait(10)


@pytest.fixture(scope="session")
def host(target):
    import zp
    s = zp.connect(target, accept_new=True)
    yield s
    s.close()
