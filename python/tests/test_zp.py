"""The Python binding against a real zpd (see conftest.py)."""
import io
import os
import signal
import threading
import time

import pytest

import zp


def test_run_capture(host):
    r = host.run(["sh", "-c", "tr a-z A-Z; echo oops >&2; exit 3"], input=b"hello\n", capture_output=True)
    assert (r.returncode, r.stdout, r.stderr) == (3, b"HELLO\n", b"oops\n")
    assert r.args == ["sh", "-c", "tr a-z A-Z; echo oops >&2; exit 3"]


def test_run_text_env_cwd(host, tmp_path):
    r = host.run(["sh", "-c", 'echo "$GREETING"; pwd'], env={"GREETING": "hi"}, cwd=str(tmp_path),
                 capture_output=True, text=True)
    assert r.stdout == "hi\n%s\n" % tmp_path


def test_run_check_and_not_found(host):
    with pytest.raises(zp.CalledProcessError) as e:
        host.run(["false"], check=True)
    assert e.value.returncode == 1
    r = host.run(["/no/such/command"], capture_output=True)
    assert r.returncode == 127


def test_run_timeout(host):
    t0 = time.monotonic()
    with pytest.raises(zp.TimeoutExpired):
        host.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_run_stdout_to_file(host, tmp_path):
    path = tmp_path / "out"
    with open(path, "wb") as f:
        r = host.run(["echo", "to a file"], stdout=f)
    assert r.returncode == 0 and r.stdout is None
    assert path.read_bytes() == b"to a file\n"


def test_popen_streams_and_signal(host):
    with host.popen(["sh", "-c", "echo ready; exec sleep 60"], stdout=zp.PIPE) as p:
        assert p.stdout.readline() == b"ready\n"
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 128 + signal.SIGTERM
        assert p.exit_status[0] == 1  # ZP_SIGNALED


def test_popen_interactive(host):
    p = host.popen(["cat"], stdin=zp.PIPE, stdout=zp.PIPE, bufsize=0)
    p.stdin.write(b"line one\n")
    assert p.stdout.readline() == b"line one\n"
    p.stdin.close()
    assert p.stdout.read() == b""
    assert p.wait() == 0


def test_communicate_big(host):
    data = os.urandom(1 << 20) * 8  # 8 MiB both ways
    p = host.popen(["cat"], stdin=zp.PIPE, stdout=zp.PIPE)
    out, err = p.communicate(data)
    assert err is None and out == data and p.returncode == 0


def test_stderr_to_stdout(host):
    r = host.run(["sh", "-c", "echo a; echo b >&2"], stdout=zp.PIPE, stderr=zp.STDOUT)
    assert sorted(r.stdout.splitlines()) == [b"a", b"b"]


def test_threads_share_a_session(host):
    results = []

    def one(i):
        results.append(host.run(["sh", "-c", "exit %d" % i]).returncode)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(results) == list(range(8))


def test_jobs_and_follow(host, tmp_path):
    job = host.job_start(["sh", "-c", "echo job-out; echo job-err >&2; exit 4"])
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as o, open(err, "wb") as e:
        final = host.follow(job, stdout=o, stderr=e)
    assert (final.status, final.exit_code, final.returncode, final.done) == ("exited", 4, 4, True)
    assert out.read_bytes() == b"job-out\n" and err.read_bytes() == b"job-err\n"
    assert job in [j.id for j in host.jobs()]
    st = host.job_status(job)
    assert st.stdout_bytes == 8 and st.command_line.startswith("sh -c")
    host.job_remove(job)
    with pytest.raises(zp.ServerError) as e:
        host.job_status(job)
    assert e.value.code == zp.NOT_FOUND


def test_job_kill(host):
    job = host.job_start(["sleep", "60"])
    with pytest.raises(zp.ServerError) as e:
        host.job_remove(job)
    assert e.value.code == zp.CONFLICT
    host.job_kill(job, "KILL")
    final = host.follow(job, stdout=zp.DEVNULL, stderr=zp.DEVNULL)
    assert final.status == "killed" and final.exit_code == 137
    host.job_remove(job)


def test_copy_with_progress(host, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    seen = []
    st = host.copy(str(src), ":" + str(tmp_path / "up.bin"), progress=lambda n, d, s: seen.append(d))
    assert st.files == 1 and st.bytes == 3 << 20 and seen and seen[-1] == 3 << 20
    st = host.copy(":" + str(tmp_path / "up.bin"), tmp_path / "down.bin")
    assert (tmp_path / "down.bin").read_bytes() == src.read_bytes()
    with pytest.raises(zp.Error) as e:
        host.copy(":/no/such/file", tmp_path / "x")
    assert e.value.code == zp.PARTIAL and e.value.stats.failures == 1
    with pytest.raises(ValueError):
        host.copy("a", "b")


def test_errors(target, tmp_path):
    with pytest.raises(zp.UnknownHostError) as e:
        zp.connect(target, known_hosts=str(tmp_path / "empty"))
    assert e.value.code == zp.UNKNOWNHOST and "CURVE" in e.value.message
    with pytest.raises(zp.ConnectError):
        zp.connect("127.0.0.1:1", connect_timeout=2)
    with pytest.raises(zp.HandshakeError):
        zp.connect(target, server_key="rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", connect_timeout=3)
    with pytest.raises(zp.NoIdentityError):
        zp.connect(target, config_dir=str(tmp_path))
    s = zp.connect(target)
    s.close()
    with pytest.raises(zp.Error):
        s.run(["true"])
