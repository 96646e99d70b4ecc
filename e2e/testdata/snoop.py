# A hostile subscriber: a libzmq SUB on zpd's XPUB with a valid CURVE key,
# subscribing to prefixes it was never granted.
# usage: snoop.py XPUB_EP SERVER_PUB CLIENT_CERT_SECRET_FILE SECONDS BIG TOPIC...
# Subscribes to each TOPIC and to BIG topics of 1,000 octets under "p/",
# then prints every message it receives ("topic|frame…") for SECONDS.
import sys, time, zmq, zmq.auth
xpub_ep, server_pub, cert, seconds, big = sys.argv[1:6]
topics = sys.argv[6:]
pub_key, sec_key = zmq.auth.load_certificate(cert)
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB); sub.linger = 0; sub.sndhwm = 0  # else libzmq drops subscriptions past 1,000
sub.curve_serverkey = server_pub.encode(); sub.curve_publickey = pub_key; sub.curve_secretkey = sec_key
for t in topics:
    sub.setsockopt(zmq.SUBSCRIBE, t.encode())
sub.connect(xpub_ep)
for i in range(int(big)):
    sub.setsockopt(zmq.SUBSCRIBE, b"p/" + (b"%08d" % i) * 124 + b"xx")
print("READY", flush=True)
deadline = time.time() + float(seconds)
while time.time() < deadline:
    if sub.poll(100):
        print("|".join(f.decode(errors="replace") for f in sub.recv_multipart()), flush=True)
