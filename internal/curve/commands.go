package curve

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/zpipes/zp/internal/zmtp"
)

// Command names and body sizes (the body follows the name; sizes are RFC 26's
// command sizes minus the name and its length octet).
const (
	cmdHello    = "HELLO"
	cmdWelcome  = "WELCOME"
	cmdInitiate = "INITIATE"
	cmdReady    = "READY"
	cmdError    = "ERROR"

	helloBodyLen        = 200 - 6 // version 2, padding 72, C' 32, nonce 8, box 80
	helloPaddingLen     = 72
	welcomeBodyLen      = 168 - 8 // long nonce 16, box 144
	cookieLen           = 16 + 32 + 32 + boxOverhead
	vouchLen            = 16 + 32 + 32 + boxOverhead
	initiatePlainMin    = 32 + vouchLen                                  // C + vouch, then metadata
	initiateBodyMin     = cookieLen + 8 + initiatePlainMin + boxOverhead // 257 - 9
	readyBodyMin        = 8 + boxOverhead                                // 30 - 6
	maxErrorReasonLen   = 255
	statusNotAuthorised = "400" // what libzmq sends when ZAP refuses (zap status code)
)

// Errors for a malformed command, classified by reason for zmtp.Fail.
func protoErr(format string, args ...any) error {
	return zmtp.Fail(zmtp.ReasonProtocol, fmt.Errorf("curve: "+format, args...))
}

func cryptoErr(format string, args ...any) error {
	return zmtp.Fail(zmtp.ReasonCrypto, fmt.Errorf("curve: "+format, args...))
}

// ---- HELLO ----------------------------------------------------------------

// makeHello appends a HELLO body: version 1.0, 72 zero octets of
// anti-amplification padding, C', the short nonce and Box[64 * %x0](C'->S).
func makeHello(dst []byte, cnPublic *[32]byte, helloKey *sharedKey, nonce uint64) []byte {
	dst = append(dst, 1, 0)
	dst = append(dst, make([]byte, helloPaddingLen)...)
	dst = append(dst, cnPublic[:]...)
	dst = binary.BigEndian.AppendUint64(dst, nonce)
	var zeros [64]byte
	return seal(dst, zeros[:], shortNonce(prefixHello, nonce), helloKey)
}

// openHello validates a HELLO body and returns the client's transient key C'
// and the Box key between C' and the server's long-term key.
func openHello(body []byte, serverSecret *SecretKey) (cnClient [32]byte, helloKey sharedKey, err error) {
	if len(body) != helloBodyLen {
		return cnClient, helloKey, protoErr("HELLO is %d octets, want %d", len(body)+6, helloBodyLen+6)
	}
	if body[0] != 1 || body[1] != 0 {
		return cnClient, helloKey, protoErr("HELLO has unknown version %d.%d", body[0], body[1])
	}
	for _, b := range body[2 : 2+helloPaddingLen] {
		if b != 0 {
			return cnClient, helloKey, protoErr("HELLO padding is not zero")
		}
	}
	rest := body[2+helloPaddingLen:]
	copy(cnClient[:], rest[:32])
	nonce := shortNonce(prefixHello, binary.BigEndian.Uint64(rest[32:40]))
	helloKey, err = precompute(&cnClient, (*[32]byte)(serverSecret))
	if err != nil {
		return cnClient, helloKey, zmtp.Fail(zmtp.ReasonCrypto, err)
	}
	plain, ok := open(rest[40:], nonce, &helloKey)
	if !ok {
		return cnClient, sharedKey{}, cryptoErr("cannot open HELLO box (does the client have the right server key?)")
	}
	var zeros [64]byte
	if subtle.ConstantTimeCompare(plain, zeros[:]) != 1 {
		return cnClient, sharedKey{}, cryptoErr("HELLO signature is not 64 zero octets")
	}
	return cnClient, helloKey, nil
}

// ---- WELCOME and the cookie -------------------------------------------------

// makeCookie returns the cookie: a long nonce and SecretBox[C' + s'](K).
func makeCookie(cookieKey *[32]byte, long *[16]byte, cnClient, snSecret *[32]byte) (cookie [cookieLen]byte) {
	var plain [64]byte
	copy(plain[:32], cnClient[:])
	copy(plain[32:], snSecret[:])
	out := append(cookie[:0], long[:]...)
	seal(out, plain[:], longNonce(prefixCookie, long[:]), (*sharedKey)(cookieKey))
	clear(plain[:])
	return cookie
}

// openCookie returns C' and s' from a cookie made with cookieKey.
func openCookie(cookie []byte, cookieKey *[32]byte) (cnClient, snSecret [32]byte, err error) {
	plain, ok := open(cookie[16:], longNonce(prefixCookie, cookie[:16]), (*sharedKey)(cookieKey))
	if !ok || len(plain) != 64 {
		return cnClient, snSecret, cryptoErr("INITIATE cookie is not valid")
	}
	copy(cnClient[:], plain[:32])
	copy(snSecret[:], plain[32:])
	clear(plain)
	return cnClient, snSecret, nil
}

// makeWelcome appends a WELCOME body: a long nonce and Box[S' + cookie](S->C').
func makeWelcome(dst []byte, helloKey *sharedKey, long *[16]byte, snPublic *[32]byte, cookie *[cookieLen]byte) []byte {
	var plain [32 + cookieLen]byte
	copy(plain[:32], snPublic[:])
	copy(plain[32:], cookie[:])
	dst = append(dst, long[:]...)
	return seal(dst, plain[:], longNonce(prefixWelcome, long[:]), helloKey)
}

// openWelcome validates a WELCOME body and returns S' and the cookie.
func openWelcome(body []byte, helloKey *sharedKey) (snServer [32]byte, cookie [cookieLen]byte, err error) {
	if len(body) != welcomeBodyLen {
		return snServer, cookie, protoErr("WELCOME is %d octets, want %d", len(body)+8, welcomeBodyLen+8)
	}
	plain, ok := open(body[16:], longNonce(prefixWelcome, body[:16]), helloKey)
	if !ok {
		return snServer, cookie, cryptoErr("cannot open WELCOME box: the server does not have the expected key")
	}
	copy(snServer[:], plain[:32])
	copy(cookie[:], plain[32:])
	return snServer, cookie, nil
}

// ---- INITIATE ---------------------------------------------------------------

// initiateParams is what the client puts in INITIATE.
type initiateParams struct {
	cookie     *[cookieLen]byte
	nonce      uint64
	sessionKey *sharedKey // C' <-> S'
	vouchKey   *sharedKey // C <-> S'
	vouchLong  *[16]byte
	client     *PublicKey // C
	cnClient   *[32]byte  // C'
	server     *PublicKey // S
	metadata   []byte     // encoded
}

// makeInitiate appends an INITIATE body: the cookie, the short nonce and
// Box[C + vouch + metadata](C'->S') where vouch = long nonce +
// Box[C' + S](C->S').
func makeInitiate(dst []byte, p *initiateParams) []byte {
	var vouchPlain [64]byte
	copy(vouchPlain[:32], p.cnClient[:])
	copy(vouchPlain[32:], p.server[:])

	plain := make([]byte, 0, initiatePlainMin+len(p.metadata))
	plain = append(plain, p.client[:]...)
	plain = append(plain, p.vouchLong[:]...)
	plain = seal(plain, vouchPlain[:], longNonce(prefixVouch, p.vouchLong[:]), p.vouchKey)
	plain = append(plain, p.metadata...)

	dst = append(dst, p.cookie[:]...)
	dst = binary.BigEndian.AppendUint64(dst, p.nonce)
	return seal(dst, plain, shortNonce(prefixInitiate, p.nonce), p.sessionKey)
}

// initiated is what the server learns from a valid INITIATE.
type initiated struct {
	client     PublicKey // C, authenticated by the vouch
	sessionKey sharedKey // C' <-> S'
	nonce      uint64    // the client's short nonce
	meta       zmtp.Metadata
}

// openInitiate validates an INITIATE body against the cookie key and the
// server's long-term public key S.
func openInitiate(body []byte, cookieKey *[32]byte, server *PublicKey) (*initiated, error) {
	if len(body) < initiateBodyMin {
		return nil, protoErr("INITIATE is %d octets, want at least %d", len(body)+9, initiateBodyMin+9)
	}
	cnClient, snSecret, err := openCookie(body[:cookieLen], cookieKey)
	if err != nil {
		return nil, err
	}
	defer clear(snSecret[:])
	res := &initiated{nonce: binary.BigEndian.Uint64(body[cookieLen : cookieLen+8])}
	res.sessionKey, err = precompute(&cnClient, &snSecret)
	if err != nil {
		return nil, zmtp.Fail(zmtp.ReasonCrypto, err)
	}
	plain, ok := open(body[cookieLen+8:], shortNonce(prefixInitiate, res.nonce), &res.sessionKey)
	if !ok {
		return nil, cryptoErr("cannot open INITIATE box")
	}
	copy(res.client[:], plain[:32])
	vouch := plain[32 : 32+vouchLen]
	vouchKey, err := precompute((*[32]byte)(&res.client), &snSecret)
	if err != nil {
		return nil, zmtp.Fail(zmtp.ReasonCrypto, err)
	}
	vouchPlain, ok := open(vouch[16:], longNonce(prefixVouch, vouch[:16]), &vouchKey)
	if !ok {
		return nil, cryptoErr("cannot open INITIATE vouch")
	}
	if subtle.ConstantTimeCompare(vouchPlain[:32], cnClient[:]) != 1 {
		return nil, cryptoErr("INITIATE vouch is for another transient key")
	}
	if subtle.ConstantTimeCompare(vouchPlain[32:], server[:]) != 1 {
		return nil, cryptoErr("INITIATE vouch is for another server")
	}
	res.meta, err = zmtp.DecodeMetadata(plain[initiatePlainMin:])
	if err != nil {
		return nil, protoErr("INITIATE: %v", err)
	}
	return res, nil
}

// ---- READY ------------------------------------------------------------------

// makeReady appends a READY body: the short nonce and Box[metadata](S'->C').
func makeReady(dst []byte, nonce uint64, sessionKey *sharedKey, metadata []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, nonce)
	return seal(dst, metadata, shortNonce(prefixReady, nonce), sessionKey)
}

// openReady validates a READY body and returns the server's short nonce and
// metadata.
func openReady(body []byte, sessionKey *sharedKey) (uint64, zmtp.Metadata, error) {
	if len(body) < readyBodyMin {
		return 0, nil, protoErr("READY is %d octets, want at least %d", len(body)+6, readyBodyMin+6)
	}
	nonce := binary.BigEndian.Uint64(body[:8])
	plain, ok := open(body[8:], shortNonce(prefixReady, nonce), sessionKey)
	if !ok {
		return 0, nil, cryptoErr("cannot open READY box")
	}
	meta, err := zmtp.DecodeMetadata(plain)
	if err != nil {
		return 0, nil, protoErr("READY: %v", err)
	}
	return nonce, meta, nil
}

// ---- ERROR ------------------------------------------------------------------

// makeError returns an ERROR body: a length octet and the reason.
func makeError(reason string) []byte {
	if len(reason) > maxErrorReasonLen {
		reason = reason[:maxErrorReasonLen]
	}
	return append([]byte{byte(len(reason))}, reason...)
}

var errMalformedError = errors.New("curve: malformed ERROR command")

// parseError decodes an ERROR body into the peer's reason, with anything but
// printable ASCII replaced so that it is safe to log.
func parseError(body []byte) (*zmtp.PeerError, error) {
	if len(body) < 1 || int(body[0]) != len(body)-1 {
		return nil, zmtp.Fail(zmtp.ReasonProtocol, errMalformedError)
	}
	reason := strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, string(body[1:]))
	return &zmtp.PeerError{Reason: reason}, nil
}
