#!/usr/bin/python3
"""Known-answer vectors for the ZMTP CURVE mechanism (RFC 25/26).

An independent implementation of the CurveZMQ handshake built only on
PyNaCl (libsodium) and the RFC text, used to check the Go implementation in
internal/curve. Run it with Debian's python3 (apt-get install python3-nacl):

    /usr/bin/python3 internal/curve/testdata/gen_vectors.py > internal/curve/testdata/vectors.json

The output is checked in; the Go tests do not need Python.

Randomness is replaced by fixed byte streams that the Go side feeds through
Client.Rand / Server.Rand. The order in which each side consumes them is part
of the Go implementation's contract with this file:

  client: C' secret (32), vouch long nonce (16)
  server: S' secret (32), cookie key K (32), cookie long nonce (16),
          welcome long nonce (16)

Command bodies are given without the command name (as zmtp.CommandRW carries
them); MESSAGE bodies include "\\x07MESSAGE" (as zmtp.Cipher produces them).
"""

import hashlib
import json
import struct
import sys

from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox


def stream(label, n):
    """n deterministic bytes: SHA-256 in counter mode over label."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(label + struct.pack(">I", i)).digest()
        i += 1
    return out[:n]


def box(plain, nonce, sender_secret, recipient_public):
    """Box[plain](sender->recipient): MAC (16) + ciphertext, no nonce."""
    b = Box(PrivateKey(sender_secret), PublicKey(recipient_public))
    return b.encrypt(plain, nonce).ciphertext


def unbox(ct, nonce, recipient_secret, sender_public):
    b = Box(PrivateKey(recipient_secret), PublicKey(sender_public))
    return b.decrypt(ct, nonce)


def secretbox(plain, nonce, key):
    return SecretBox(key).encrypt(plain, nonce).ciphertext


def short(n):
    return struct.pack(">Q", n)


def metadata(props):
    """RFC 23 metadata: name-len(1) name value-len(4, network order) value."""
    out = b""
    for name, value in props:
        out += bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return out


def pub(secret):
    return bytes(PrivateKey(secret).public_key)


def main():
    # Long-term keys.
    c_sec = stream(b"zp curve test client long-term secret", 32)
    s_sec = stream(b"zp curve test server long-term secret", 32)
    C = pub(c_sec)
    S = pub(s_sec)

    client_rand = stream(b"zp curve test client rand", 48)
    server_rand = stream(b"zp curve test server rand", 96)

    cn_sec = client_rand[0:32]        # c'
    vouch_long = client_rand[32:48]
    sn_sec = server_rand[0:32]        # s'
    cookie_key = server_rand[32:64]   # K
    cookie_long = server_rand[64:80]
    welcome_long = server_rand[80:96]
    Cn = pub(cn_sec)                  # C'
    Sn = pub(sn_sec)                  # S'

    client_meta = metadata([(b"Socket-Type", b"DEALER"), (b"Identity", b"")])
    server_meta = metadata([(b"Socket-Type", b"ROUTER"),
                            (b"X-Zp-Test", b"server metadata \x00\xff")])

    # HELLO (client nonce 1): version 1.0, 72 zero octets, C', nonce,
    # Box[64 * %x0](C'->S).
    hello_box = box(bytes(64), b"CurveZMQHELLO---" + short(1), cn_sec, S)
    hello = b"\x01\x00" + bytes(72) + Cn + short(1) + hello_box
    assert len(hello) + 6 == 200

    # WELCOME: long nonce, Box[S' + cookie](S->C'), cookie = long nonce +
    # SecretBox[C' + s'](K).
    cookie = cookie_long + secretbox(Cn + sn_sec, b"COOKIE--" + cookie_long,
                                     cookie_key)
    assert len(cookie) == 96
    welcome = welcome_long + box(Sn + cookie, b"WELCOME-" + welcome_long,
                                 s_sec, Cn)
    assert len(welcome) + 8 == 168

    # INITIATE (client nonce 2): cookie, nonce, Box[C + vouch + metadata](C'->S'),
    # vouch = long nonce + Box[C' + S](C->S').
    vouch = vouch_long + box(Cn + S, b"VOUCH---" + vouch_long, c_sec, Sn)
    assert len(vouch) == 96
    initiate = cookie + short(2) + box(C + vouch + client_meta,
                                       b"CurveZMQINITIATE" + short(2),
                                       cn_sec, Sn)
    assert len(initiate) + 9 >= 257

    # READY (server nonce 1): nonce, Box[metadata](S'->C').
    ready = short(1) + box(server_meta, b"CurveZMQREADY---" + short(1),
                           sn_sec, Cn)

    # Sanity: the server side of this file can open what the client sent.
    assert unbox(initiate[104:], b"CurveZMQINITIATE" + short(2), sn_sec, Cn)[:32] == C

    def message(prefix, nonce, flags, frame, sender_secret, recipient_public):
        body = box(bytes([flags]) + frame, prefix + short(nonce),
                   sender_secret, recipient_public)
        return b"\x07MESSAGE" + short(nonce) + body

    messages = [
        # Client -> server continues the client's counter: 3, 4, ...
        dict(dir="client", nonce=3, flags=1, frame=b"first frame, MORE"),
        dict(dir="client", nonce=4, flags=0, frame=b""),
        # Server -> client continues after READY: 2, 3, ...
        dict(dir="server", nonce=2, flags=0, frame=b"reply \x00\x01\x02"),
        dict(dir="server", nonce=3, flags=2, frame=b"\x04PING\x00\x00"),
    ]
    for m in messages:
        if m["dir"] == "client":
            body = message(b"CurveZMQMESSAGEC", m["nonce"], m["flags"],
                           m["frame"], cn_sec, Sn)
        else:
            body = message(b"CurveZMQMESSAGES", m["nonce"], m["flags"],
                           m["frame"], sn_sec, Cn)
        m["frame"] = m["frame"].hex()
        m["body"] = body.hex()

    out = {
        "generator": "internal/curve/testdata/gen_vectors.py (PyNaCl, libsodium)",
        "client_secret": c_sec.hex(),
        "client_public": C.hex(),
        "server_secret": s_sec.hex(),
        "server_public": S.hex(),
        "client_rand": client_rand.hex(),
        "server_rand": server_rand.hex(),
        "client_transient_public": Cn.hex(),
        "server_transient_public": Sn.hex(),
        "client_metadata": client_meta.hex(),
        "server_metadata": server_meta.hex(),
        "hello": hello.hex(),
        "welcome": welcome.hex(),
        "initiate": initiate.hex(),
        "ready": ready.hex(),
        "error_400": (bytes([3]) + b"400").hex(),
        "messages": messages,
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
