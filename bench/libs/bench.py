"""The Python side of bench/libs.sh: prints elapsed seconds.
    bench.py TARGET noop-reuse N | noop-fresh N | pipe MIB | ssh-noop N (then SSH argv...)
"""
import subprocess
import sys
import threading
import time

import zp

target, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.monotonic()
if mode == "noop-reuse":
    with zp.connect(target) as host:
        t0 = time.monotonic()
        for _ in range(n):
            host.run(["true"], check=True)
elif mode == "noop-fresh":
    for _ in range(n):
        with zp.connect(target) as host:
            host.run(["true"], check=True)
elif mode == "ssh-noop":
    ssh = sys.argv[4:]
    for _ in range(n):
        subprocess.run(ssh + ["true"], check=True, stdin=subprocess.DEVNULL)
elif mode == "pipe":
    with zp.connect(target) as host:
        t0 = time.monotonic()
        p = host.popen(["cat"], stdin=zp.PIPE, stdout=zp.PIPE, bufsize=0)
        block = bytes(1 << 20)

        def feed():
            for _ in range(n):
                p.stdin.write(block)
            p.stdin.close()
        t = threading.Thread(target=feed)
        t.start()
        got = 0
        while True:
            b = p.stdout.read(1 << 20)
            if not b:
                break
            got += len(b)
        t.join()
        assert p.wait() == 0 and got == n << 20, got
print("%.6f" % (time.monotonic() - t0))
