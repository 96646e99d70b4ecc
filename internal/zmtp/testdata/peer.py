# A libzmq peer for interoperability tests (Debian python3-zmq).
# usage: peer.py MODE ENDPOINT [KEYS...]
#   dealer-echo EP [SERVER_PUB CLIENT_PUB CLIENT_SECRET]
#       connect a DEALER, send 3 multi-frame messages, expect them echoed, print OK
#   dealer-event EP SERVER_PUB CLIENT_PUB CLIENT_SECRET
#       connect a CURVE DEALER and print the first handshake event seen by libzmq:
#       SUCCEEDED, FAILED_AUTH <status>, FAILED_PROTOCOL <code>, FAILED_NO_DETAIL, or NONE
#   router-echo EP [SERVER_SECRET [ALLOWED_CLIENT_PUB]]
#       bind a ROUTER (prints the bound endpoint), echo every message back; with
#       ALLOWED_CLIENT_PUB a ZAP handler admits only that key; handshake failures
#       are printed on stderr as "EVENT <name> <value>"
#   sub EP [SERVER_PUB CLIENT_PUB CLIENT_SECRET]
#       connect a SUB, subscribe to "topic", print READY after connecting and then
#       the first 3 messages received (frames joined by "|")
import sys, threading, zmq, zmq.utils.z85
from zmq.utils.monitor import recv_monitor_message
mode, ep = sys.argv[1], sys.argv[2]
keys = sys.argv[3:]
ctx = zmq.Context()

def client_keys(s):
    if keys:
        s.curve_serverkey = keys[0].encode()
        s.curve_publickey = keys[1].encode()
        s.curve_secretkey = keys[2].encode()

EVENTS = {zmq.EVENT_HANDSHAKE_SUCCEEDED: "SUCCEEDED",
          zmq.EVENT_HANDSHAKE_FAILED_AUTH: "FAILED_AUTH",
          zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "FAILED_PROTOCOL",
          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "FAILED_NO_DETAIL"}

if mode == "dealer-echo":
    s = ctx.socket(zmq.DEALER); s.linger = 0; s.rcvtimeo = 5000; client_keys(s)
    s.connect(ep)
    sent = []
    for i in range(3):
        m = [b"frame-%d" % i, bytes(range(256)) * (i * 100), b""]
        s.send_multipart(m); sent.append(m)
    for m in sent:
        try: got = s.recv_multipart()
        except zmq.Again: print("TIMEOUT", flush=True); sys.exit(2)
        if got != m: print("MISMATCH", len(got)); sys.exit(1)
    print("OK", flush=True)
elif mode == "dealer-event":
    s = ctx.socket(zmq.DEALER); s.linger = 0; client_keys(s)
    mon = s.get_monitor_socket(zmq.EVENT_ALL)
    mon.rcvtimeo = 5000
    s.connect(ep)
    while True:
        try: ev = recv_monitor_message(mon)
        except zmq.Again: print("NONE", flush=True); break
        name = EVENTS.get(ev["event"])
        if name:
            print(name if name in ("SUCCEEDED", "FAILED_NO_DETAIL") else "%s %s" % (name, ev["value"]), flush=True)
            break
elif mode == "router-echo":
    s = ctx.socket(zmq.ROUTER); s.linger = 0
    if keys:
        s.curve_server = True
        s.curve_secretkey = keys[0].encode()
    if len(keys) > 1:
        allowed = keys[1].encode()
        zap = ctx.socket(zmq.REP); zap.bind("inproc://zeromq.zap.01")
        def handler():
            while True:
                msg = zap.recv_multipart()
                version, reqid, domain, addr, ident, mech = msg[:6]
                ok = mech == b"CURVE" and zmq.utils.z85.encode(msg[6]) == allowed
                zap.send_multipart([version, reqid, b"200" if ok else b"400", b"OK" if ok else b"denied", b"", b""])
        threading.Thread(target=handler, daemon=True).start()
    mon = s.get_monitor_socket(zmq.EVENT_ALL)
    def watch():
        while True:
            try: ev = recv_monitor_message(mon)
            except zmq.ZMQError: return
            name = EVENTS.get(ev["event"])
            if name: print("EVENT %s %s" % (name, ev["value"]), file=sys.stderr, flush=True)
    threading.Thread(target=watch, daemon=True).start()
    s.bind(ep)
    print(s.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
    s.rcvtimeo = 15000
    while True:
        try: m = s.recv_multipart()
        except zmq.Again: break
        s.send_multipart(m)
elif mode == "sub":
    s = ctx.socket(zmq.SUB); s.linger = 0; s.rcvtimeo = 5000; client_keys(s)
    s.setsockopt(zmq.SUBSCRIBE, b"topic")
    s.connect(ep)
    print("READY", flush=True)
    for i in range(3):
        try: print("|".join(f.decode() for f in s.recv_multipart()), flush=True)
        except zmq.Again: print("TIMEOUT", flush=True); sys.exit(2)
