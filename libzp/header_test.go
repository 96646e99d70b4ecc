package main

import (
	"os"
	"regexp"
	"strconv"
	"testing"
)

// include/zp.h is hand-written: its numbers must be the ones this code
// uses.
func TestHeaderAgrees(t *testing.T) {
	b, err := os.ReadFile("../include/zp.h")
	if err != nil {
		t.Fatal(err)
	}
	defs := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^#define (ZP_\w+)\s+(\d+)`).FindAllStringSubmatch(string(b), -1) {
		defs[m[1]], _ = strconv.Atoi(m[2])
	}
	want := map[string]int{
		"ZP_ABI": abi, "ZP_EINVAL": eInval, "ZP_EABI": eABI, "ZP_ECONNECT": eConnect,
		"ZP_EHANDSHAKE": eHandshake, "ZP_EUNKNOWNHOST": eUnknownHost, "ZP_EHOSTKEY": eHostKey,
		"ZP_ENOIDENTITY": eNoIdentity, "ZP_ETIMEOUT": eTimeout, "ZP_ECLOSED": eClosed,
		"ZP_EPROTOCOL": eProtocol, "ZP_ELOCAL": eLocal, "ZP_EPARTIAL": ePartial,
		"ZP_EINTERNAL": eInternal, "ZP_EFAILED": eFailed,
		"ZP_EXITED": 0, "ZP_SIGNALED": 1, "ZP_FAILED_TO_START": 2, "ZP_LOST": 3,
	}
	for name, v := range want {
		if got, ok := defs[name]; !ok || got != v {
			t.Errorf("%s: zp.h says %d (defined: %v), libzp uses %d", name, got, ok, v)
		}
	}
}

// A panic inside an export becomes -1 with ZP_EINTERNAL, not a crash of
// the C program.
func TestPanicRecovered(t *testing.T) {
	if got := panicking(); got != -1 {
		t.Fatalf("returned %d", got)
	}
	mu.Lock()
	e := lastErr[0]
	mu.Unlock()
	if e.code != eInternal || !regexp.MustCompile(`^bug in libzp: panic: boom`).MatchString(e.msg) {
		t.Fatalf("%+v", e)
	}
}
