# Publishes through zpd's XSUB and subscribes at its XPUB, both with CURVE (libzmq).
# usage: xsub.py XSUB_EP XPUB_EP SERVER_PUB CLIENT_CERT_SECRET_FILE
# Prints every message the SUB subscribed to "p/" receives ("topic|payload"),
# stops after 3 or 5 s; a second SUB subscribed to "" (everything) must get
# nothing: "p/" is public to authenticated keys, not less than it.
import sys, time, zmq, zmq.auth
xsub_ep, xpub_ep, server_pub, cert = sys.argv[1:5]
pub_key, sec_key = zmq.auth.load_certificate(cert)
ctx = zmq.Context()
def secure(s):
    s.curve_serverkey = server_pub.encode(); s.curve_publickey = pub_key; s.curve_secretkey = sec_key
sub = ctx.socket(zmq.SUB); sub.linger = 0; secure(sub)
sub.setsockopt(zmq.SUBSCRIBE, b"p/")
sub.connect(xpub_ep)
greedy = ctx.socket(zmq.SUB); greedy.linger = 0; secure(greedy)
greedy.setsockopt(zmq.SUBSCRIBE, b"")
greedy.connect(xpub_ep)
pub = ctx.socket(zmq.PUB); pub.linger = 0; secure(pub)
pub.connect(xsub_ep)
got = 0
deadline = time.time() + 5
n = 0
while got < 3 and time.time() < deadline:
    n += 1
    pub.send_multipart([b"p/weather", b"report %d" % n])
    pub.send_multipart([b"j/forged-job-topic1", b"must not pass"])
    if sub.poll(100):
        print("|".join(f.decode() for f in sub.recv_multipart()), flush=True)
        got += 1
if greedy.poll(200):
    print("GREEDY|" + "|".join(f.decode() for f in greedy.recv_multipart()), flush=True)
