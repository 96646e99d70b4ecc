# A libzmq peer for interoperability tests (Debian python3-zmq).
# usage: peer.py MODE ENDPOINT [server_public client_public client_secret | server_secret]
#   dealer-echo: connect a DEALER, send 3 multi-frame messages, expect them echoed back, print OK
#   router-echo: bind a ROUTER on ENDPOINT (prints the bound endpoint), echo every message back
#   sub: connect a SUB, subscribe to "topic", print the first 3 messages received
import sys, zmq
mode, ep = sys.argv[1], sys.argv[2]
keys = sys.argv[3:]
ctx = zmq.Context()
def secure(s, server):
    if not keys: return
    if server:
        s.curve_server = True
        s.curve_secretkey = keys[0].encode()
    else:
        s.curve_serverkey = keys[0].encode()
        s.curve_publickey = keys[1].encode()
        s.curve_secretkey = keys[2].encode()
if mode == "dealer-echo":
    s = ctx.socket(zmq.DEALER); s.linger = 0; s.rcvtimeo = 5000; secure(s, False)
    s.connect(ep)
    sent = []
    for i in range(3):
        m = [b"frame-%d" % i, bytes(range(256)) * (i * 100), b""]
        s.send_multipart(m); sent.append(m)
    for m in sent:
        got = s.recv_multipart()
        if got != m: print("MISMATCH", len(got)); sys.exit(1)
    print("OK", flush=True)
elif mode == "router-echo":
    s = ctx.socket(zmq.ROUTER); s.linger = 0; secure(s, True)
    s.bind(ep)
    print(s.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
    s.rcvtimeo = 10000
    while True:
        try: m = s.recv_multipart()
        except zmq.Again: break
        s.send_multipart(m)
elif mode == "sub":
    s = ctx.socket(zmq.SUB); s.linger = 0; s.rcvtimeo = 5000; secure(s, False)
    s.setsockopt(zmq.SUBSCRIBE, b"topic")
    s.connect(ep)
    for i in range(3):
        print(s.recv_multipart(), flush=True)
