// Package faultproxy is a TCP proxy for fault-injection tests.
//
// A Proxy listens on 127.0.0.1 and forwards every accepted connection to a
// target address. While the test runs it can be told to misbehave the way
// real networks do:
//
//   - Cut resets every open connection (a pulled cable, a NAT table flush);
//   - Stall/Unstall hold traffic without closing anything (a black-holed
//     route), then deliver everything that was held, in order;
//   - SetDelay turns each direction into a delay line (one-way latency);
//   - Refuse makes the port look closed to new connections;
//   - CutAfter resets everything once a given number of bytes has gone
//     through, for "cut in the middle of a transfer" tests.
//
// Every control is safe to call from any goroutine at any time and applies to
// connections already open as well as to new ones. Memory is bounded: each
// direction of each connection holds at most MaxBuffered bytes.
//
// The package is for tests only; nothing shipped imports it.
package faultproxy
