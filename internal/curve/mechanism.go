package curve

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/zpipes/zp/internal/zmtp"
)

// Name is the mechanism name in the ZMTP greeting.
const Name = "CURVE"

// Short nonces, as libzmq numbers them: each side counts from 1 and every
// command it boxes with the session keys takes the next value. The client
// sends HELLO with 1 and INITIATE with 2, so its first MESSAGE has 3; the
// server sends READY with 1, so its first MESSAGE has 2.
const (
	clientHelloNonce    = 1
	clientInitiateNonce = 2
	clientFirstMessage  = 3
	serverReadyNonce    = 1
	serverFirstMessage  = 2
)

// Client is the CURVE mechanism of the side that connects (the ZMTP "client",
// as-server 0). It authenticates the server by its pinned long-term key and
// proves its own long-term key to it.
type Client struct {
	// Key is the client's long-term key pair.
	Key KeyPair
	// ServerKey is the server's long-term public key, known in advance.
	ServerKey PublicKey
	// Rand is the source of transient keys and nonces; nil means
	// crypto/rand. The client reads a 32-octet transient secret key, then a
	// 16-octet vouch nonce.
	Rand io.Reader
}

// Server is the CURVE mechanism of the side that accepts (as-server 1).
type Server struct {
	// Key is the server's long-term key pair.
	Key KeyPair
	// Authorize decides whether the client with long-term key C may connect;
	// a non-nil error refuses it: the server sends ERROR "400" (as libzmq does
	// when its ZAP handler refuses) and the handshake fails with
	// zmtp.ReasonUnauthorised. A nil Authorize refuses every client, so that a
	// forgotten setting fails closed; see AllowKeys, or pass a function that
	// returns nil to accept any client.
	Authorize func(PublicKey) error
	// Rand is the source of transient keys and nonces; nil means
	// crypto/rand. Each handshake reads a 32-octet transient secret key, a
	// 32-octet cookie key, then the 16-octet cookie and welcome nonces.
	Rand io.Reader
}

var (
	_ zmtp.Mechanism = (*Client)(nil)
	_ zmtp.Mechanism = (*Server)(nil)
)

// Name returns "CURVE".
func (*Client) Name() string { return Name }

// Name returns "CURVE".
func (*Server) Name() string { return Name }

func randReader(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

// ioErr classifies a failure of the connection during a handshake step.
func ioErr(ctx context.Context, step string, err error) error {
	var he *zmtp.HandshakeError
	if errors.As(err, &he) {
		return err
	}
	err = fmt.Errorf("curve: %s: %w", step, err)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return zmtp.Fail(zmtp.ReasonTimeout, err)
	}
	return zmtp.Fail(zmtp.ReasonIO, err)
}

// checkCtx fails the handshake if ctx is done.
func checkCtx(ctx context.Context, step string) error {
	if err := ctx.Err(); err != nil {
		return ioErr(ctx, step, err)
	}
	return nil
}

func randErr(err error) error {
	return zmtp.Fail(zmtp.ReasonIO, fmt.Errorf("curve: read random: %w", err))
}

func configErr(format string, args ...any) error {
	return zmtp.Fail(zmtp.ReasonMechanism, fmt.Errorf("curve: "+format, args...))
}

// unexpected is the error for a command out of place, or an ERROR from the
// server (ReasonRejected, wrapping a *zmtp.PeerError).
func unexpected(name string, body []byte, want string) error {
	if name == cmdError {
		pe, err := parseError(body)
		if err != nil {
			return err
		}
		return zmtp.Fail(zmtp.ReasonRejected, fmt.Errorf("curve: server sent ERROR instead of %s: %w", want, pe))
	}
	return protoErr("expected %s, got %q", want, name)
}

// Handshake runs the client side of the CURVE handshake.
func (c *Client) Handshake(ctx context.Context, rw zmtp.CommandRW, asServer bool, local zmtp.Metadata) (*zmtp.Peer, error) {
	if asServer {
		return nil, configErr("client mechanism used on the server side of a connection")
	}
	if c.ServerKey.IsZero() {
		return nil, zmtp.Fail(zmtp.ReasonServerKey, errors.New("curve: no server key configured"))
	}
	if c.Key.Secret == (SecretKey{}) {
		return nil, configErr("no client key pair configured")
	}
	r := randReader(c.Rand)

	// HELLO: a fresh transient key C' and Box[64 zeros](C'->S).
	cnSecret, cnPublic, err := transientKey(r)
	if err != nil {
		return nil, randErr(err)
	}
	defer clear(cnSecret[:])
	helloKey, err := precompute((*[32]byte)(&c.ServerKey), &cnSecret)
	if err != nil {
		return nil, zmtp.Fail(zmtp.ReasonServerKey, fmt.Errorf("curve: server key: %w", err))
	}
	if err := checkCtx(ctx, "send HELLO"); err != nil {
		return nil, err
	}
	if err := rw.WriteCommand(cmdHello, makeHello(make([]byte, 0, helloBodyLen), &cnPublic, &helloKey, clientHelloNonce)); err != nil {
		return nil, ioErr(ctx, "send HELLO", err)
	}

	// WELCOME: S' and the cookie, boxed by S: this authenticates the server.
	if err := checkCtx(ctx, "read WELCOME"); err != nil {
		return nil, err
	}
	name, body, err := rw.ReadCommand()
	if err != nil {
		return nil, ioErr(ctx, "read WELCOME", err)
	}
	if name != cmdWelcome {
		return nil, unexpected(name, body, cmdWelcome)
	}
	snServer, cookie, err := openWelcome(body, &helloKey)
	if err != nil {
		return nil, err
	}

	// INITIATE: the cookie back, C and the vouch Box[C' + S](C->S').
	sessionKey, err := precompute(&snServer, &cnSecret)
	if err != nil {
		return nil, zmtp.Fail(zmtp.ReasonCrypto, err)
	}
	vouchKey, err := precompute(&snServer, (*[32]byte)(&c.Key.Secret))
	if err != nil {
		return nil, zmtp.Fail(zmtp.ReasonCrypto, err)
	}
	var vouchLong [16]byte
	if _, err := io.ReadFull(r, vouchLong[:]); err != nil {
		return nil, randErr(err)
	}
	initiate := makeInitiate(nil, &initiateParams{
		cookie:     &cookie,
		nonce:      clientInitiateNonce,
		sessionKey: &sessionKey,
		vouchKey:   &vouchKey,
		vouchLong:  &vouchLong,
		client:     &c.Key.Public,
		cnClient:   &cnPublic,
		server:     &c.ServerKey,
		metadata:   local.AppendEncode(nil),
	})
	clear(vouchKey[:])
	if err := checkCtx(ctx, "send INITIATE"); err != nil {
		return nil, err
	}
	if err := rw.WriteCommand(cmdInitiate, initiate); err != nil {
		return nil, ioErr(ctx, "send INITIATE", err)
	}

	// READY (or ERROR if the server does not accept our key).
	if err := checkCtx(ctx, "read READY"); err != nil {
		return nil, err
	}
	name, body, err = rw.ReadCommand()
	if err != nil {
		return nil, ioErr(ctx, "read READY", err)
	}
	if name != cmdReady {
		return nil, unexpected(name, body, cmdReady)
	}
	readyNonce, meta, err := openReady(body, &sessionKey)
	if err != nil {
		return nil, err
	}
	key := c.ServerKey
	return &zmtp.Peer{
		Meta:   meta,
		Key:    key[:],
		Cipher: newCipher(&sessionKey, false, clientFirstMessage, readyNonce),
	}, nil
}

// Handshake runs the server side of the CURVE handshake.
func (s *Server) Handshake(ctx context.Context, rw zmtp.CommandRW, asServer bool, local zmtp.Metadata) (*zmtp.Peer, error) {
	if !asServer {
		return nil, configErr("server mechanism used on the client side of a connection")
	}
	if s.Key.Secret == (SecretKey{}) || s.Key.Public.IsZero() {
		return nil, configErr("no server key pair configured")
	}
	r := randReader(s.Rand)

	// HELLO.
	if err := checkCtx(ctx, "read HELLO"); err != nil {
		return nil, err
	}
	name, body, err := rw.ReadCommand()
	if err != nil {
		return nil, ioErr(ctx, "read HELLO", err)
	}
	if name != cmdHello {
		return nil, protoErr("expected %s, got %q", cmdHello, name)
	}
	cnClient, helloKey, err := openHello(body, &s.Key.Secret)
	if err != nil {
		return nil, err
	}

	// WELCOME: a transient key S' whose secret goes into the cookie, sealed
	// with a cookie key K that only this handshake knows. From here until
	// INITIATE the server holds K and nothing else about the client.
	var welcome []byte
	var cookieKey [32]byte
	{
		snSecret, snPublic, err := transientKey(r)
		if err != nil {
			return nil, randErr(err)
		}
		var cookieLong, welcomeLong [16]byte
		for _, b := range [][]byte{cookieKey[:], cookieLong[:], welcomeLong[:]} {
			if _, err := io.ReadFull(r, b); err != nil {
				return nil, randErr(err)
			}
		}
		cookie := makeCookie(&cookieKey, &cookieLong, &cnClient, &snSecret)
		welcome = makeWelcome(make([]byte, 0, welcomeBodyLen), &helloKey, &welcomeLong, &snPublic, &cookie)
		clear(snSecret[:])
		clear(helloKey[:])
		clear(cnClient[:])
	}
	defer clear(cookieKey[:])
	if err := checkCtx(ctx, "send WELCOME"); err != nil {
		return nil, err
	}
	if err := rw.WriteCommand(cmdWelcome, welcome); err != nil {
		return nil, ioErr(ctx, "send WELCOME", err)
	}

	// INITIATE: recover C' and s' from the cookie, then C from the vouch.
	if err := checkCtx(ctx, "read INITIATE"); err != nil {
		return nil, err
	}
	name, body, err = rw.ReadCommand()
	if err != nil {
		return nil, ioErr(ctx, "read INITIATE", err)
	}
	if name != cmdInitiate {
		return nil, protoErr("expected %s, got %q", cmdInitiate, name)
	}
	in, err := openInitiate(body, &cookieKey, &s.Key.Public)
	if err != nil {
		return nil, err
	}
	clear(cookieKey[:]) // a cookie is good for one INITIATE

	authErr := errors.New("curve: no Authorize function configured")
	if s.Authorize != nil {
		authErr = s.Authorize(in.client)
	}
	if authErr != nil {
		// Tell the client, as libzmq does, then fail. The write error, if
		// any, does not matter: the handshake has failed either way.
		if err := checkCtx(ctx, "send ERROR"); err == nil {
			_ = rw.WriteCommand(cmdError, makeError(statusNotAuthorised))
		}
		return nil, zmtp.Fail(zmtp.ReasonUnauthorised,
			fmt.Errorf("curve: client %s refused: %w", in.client.Fingerprint(), authErr))
	}

	// READY.
	if err := checkCtx(ctx, "send READY"); err != nil {
		return nil, err
	}
	if err := rw.WriteCommand(cmdReady, makeReady(nil, serverReadyNonce, &in.sessionKey, local.AppendEncode(nil))); err != nil {
		return nil, ioErr(ctx, "send READY", err)
	}
	key := in.client
	return &zmtp.Peer{
		Meta:   in.meta,
		Key:    key[:],
		Cipher: newCipher(&in.sessionKey, true, serverFirstMessage, in.nonce),
	}, nil
}
