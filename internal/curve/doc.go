// Package curve implements the ZMTP CURVE security mechanism (ZeroMQ RFC 25,
// with the CurveZMQ handshake of RFC 26) exactly as libzmq 4.3 speaks it on
// the wire, so that zp interoperates with any libzmq peer (pyzmq, czmq, ...).
//
// # Keys
//
// Every peer has a long-term Curve25519 key pair. Keys print as 40-character
// Z85 strings (RFC 32) and are stored in the czmq "zcert" text format that
// pyzmq's zmq.auth.load_certificate reads: WriteKeyFiles, LoadKeyPair and
// LoadPublicKey. A server's list of allowed client keys is read with
// ParseAuthorizedKeys.
//
// # Handshake
//
// Client and Server implement zmtp.Mechanism. The client must know the
// server's long-term public key in advance. The handshake is
//
//	C: HELLO     C', Box[64 zeros](C'->S)
//	S: WELCOME   Box[S' + cookie](S->C'), cookie = SecretBox[C' + s'](K)
//	C: INITIATE  cookie, Box[C + vouch + metadata](C'->S'),
//	             vouch = Box[C' + S](C->S')
//	S: READY     Box[metadata](S'->C')   or ERROR "400" if not authorised
//
// where C/S are the long-term keys, C'/S' per-connection transient keys and K
// a per-handshake cookie key. Between WELCOME and INITIATE the server keeps
// nothing but K: its transient secret travels in the cookie. The server only
// learns the client's long-term key C from INITIATE, and authorises it with
// Server.Authorize.
//
// # Traffic
//
// After the handshake each frame travels as a MESSAGE command whose box holds
// a flags octet (zmtp.FlagMore, zmtp.FlagCommand) and the frame, sealed with
// a key precomputed once per connection and an 8-octet big-endian short nonce
// that continues the sender's handshake counter (client from 3, server from
// 2, as libzmq does). The receiver rejects a nonce that does not strictly
// increase. See the Cipher returned in zmtp.Peer.
package curve
