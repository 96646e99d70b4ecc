package curve

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/nacl/box"

	"github.com/zpipes/zp/internal/z85"
)

func TestKeyPair(t *testing.T) {
	kp := mustKeyPair(t)
	again, err := NewKeyPair(kp.Secret)
	if err != nil || again != kp {
		t.Fatalf("NewKeyPair(secret) = %v, %v", again, err)
	}
	s := kp.Public.String()
	if len(s) != 40 {
		t.Fatalf("String() = %q, want 40 characters", s)
	}
	back, err := ParsePublicKey(s)
	if err != nil || back != kp.Public {
		t.Fatalf("ParsePublicKey(%q) = %v, %v", s, back, err)
	}
	sk, err := ParseSecretKey(kp.Secret.z85())
	if err != nil || sk != kp.Secret {
		t.Fatalf("ParseSecretKey: %v", err)
	}
	if _, err := NewKeyPair(SecretKey{}); err == nil {
		t.Error("zero secret key accepted")
	}
	other := mustKeyPair(t)
	if other == kp {
		t.Error("GenerateKeyPair repeats itself")
	}
}

// TestKnownKeys: key derivation and Z85 printing against libzmq's
// documented test keys (the "Ironhouse" example of zmq_curve(7)).
func TestKnownKeys(t *testing.T) {
	for _, tc := range []struct{ public, secret string }{
		{"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"},
		{"Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID", "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"},
	} {
		sk, err := ParseSecretKey(tc.secret)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := NewKeyPair(sk)
		if err != nil {
			t.Fatal(err)
		}
		if kp.Public.String() != tc.public {
			t.Errorf("public key of %s... = %s, want %s", tc.secret[:4], kp.Public, tc.public)
		}
	}
}

func TestParsePublicKeyErrors(t *testing.T) {
	for _, s := range []string{"", "short", strings.Repeat("0", 39), strings.Repeat("0", 41), strings.Repeat("0", 35) + "~0000", strings.Repeat("#", 40)} {
		if _, err := ParsePublicKey(s); err == nil || !strings.HasPrefix(err.Error(), "curve: ") {
			t.Errorf("ParsePublicKey(%q): err = %v", s, err)
		}
	}
	if _, err := ParseSecretKey(strings.Repeat("~", 40)); err == nil || strings.Contains(err.Error(), "~") {
		t.Errorf("ParseSecretKey error echoes its input: %v", err)
	}
}

func TestFingerprint(t *testing.T) {
	kp := mustKeyPair(t)
	sum := sha256.Sum256(kp.Public[:])
	want := "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
	if got := kp.Public.Fingerprint(); got != want {
		t.Fatalf("Fingerprint = %q, want %q", got, want)
	}
	if strings.HasSuffix(want, "=") || len(want) != 7+43 {
		t.Fatalf("fingerprint %q is not unpadded base64 of 32 octets", want)
	}
}

func TestSecretKeyRedacted(t *testing.T) {
	kp := mustKeyPair(t)
	secretZ85 := kp.Secret.z85()
	secretHex := fmt.Sprintf("%x", [32]byte(kp.Secret))
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q"} {
		for _, v := range []any{kp, kp.Secret, &kp} {
			out := fmt.Sprintf(format, v)
			if strings.Contains(out, secretZ85) || strings.Contains(strings.ToLower(out), secretHex) {
				t.Errorf("Sprintf(%q, %T) leaks the secret key: %s", format, v, out)
			}
		}
	}
}

// TestPrecompute: our precomputed keys are box.Precompute's, and a
// low-order peer key is refused as libsodium's crypto_box_beforenm does.
func TestPrecompute(t *testing.T) {
	a, b := mustKeyPair(t), mustKeyPair(t)
	k1, err := precompute((*[32]byte)(&b.Public), (*[32]byte)(&a.Secret))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := precompute((*[32]byte)(&a.Public), (*[32]byte)(&b.Secret))
	if err != nil {
		t.Fatal(err)
	}
	var want [32]byte
	box.Precompute(&want, (*[32]byte)(&b.Public), (*[32]byte)(&a.Secret))
	if k1 != sharedKey(want) || k1 != k2 {
		t.Fatal("precomputed keys differ")
	}
	// Low-order points of Curve25519 (and non-canonical encodings).
	lowOrder := []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	}
	for _, h := range lowOrder {
		var p [32]byte
		fmt.Sscanf(h, "%x", &p)
		if _, err := precompute(&p, (*[32]byte)(&a.Secret)); !errors.Is(err, errLowOrder) {
			t.Errorf("low-order point %s…: err = %v", h[:8], err)
		}
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "id.key_secret"), filepath.Join(dir, "id.key")
	kp := mustKeyPair(t)
	if err := WriteKeyFiles(sec, pub, kp, false); err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]fs.FileMode{sec: 0o600, pub: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		// The umask may only remove bits.
		if fi.Mode().Perm()&^mode != 0 || (path == sec && fi.Mode().Perm() != 0o600) {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	got, err := LoadKeyPair(sec)
	if err != nil || got != kp {
		t.Fatalf("LoadKeyPair = %v, %v", got, err)
	}
	gotPub, err := LoadPublicKey(pub)
	if err != nil || gotPub != kp.Public {
		t.Fatalf("LoadPublicKey = %v, %v", gotPub, err)
	}
	if gotPub, err = LoadPublicKey(sec); err != nil || gotPub != kp.Public {
		t.Fatalf("LoadPublicKey(secret file) = %v, %v", gotPub, err)
	}
	pubText, _ := os.ReadFile(pub)
	if bytes.Contains(pubText, []byte("secret-key")) {
		t.Fatal("public key file holds a secret key")
	}
	if _, err := LoadKeyPair(pub); err == nil {
		t.Fatal("LoadKeyPair accepted a public key file")
	}

	// No overwriting without force, and nothing half-written.
	kp2 := mustKeyPair(t)
	for _, paths := range [][2]string{{sec, pub}, {sec, filepath.Join(dir, "new.key")}, {filepath.Join(dir, "new.key_secret"), pub}} {
		err := WriteKeyFiles(paths[0], paths[1], kp2, false)
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("overwrite %v: err = %v, want fs.ErrExist", paths, err)
		}
	}
	for _, p := range []string{"new.key", "new.key_secret"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("refused write left %s behind", p)
		}
	}
	if got, _ := LoadKeyPair(sec); got != kp {
		t.Fatal("refused write changed the key")
	}
	// With force, replaced; a loose secret file comes back as 0600.
	os.Chmod(sec, 0o644)
	if err := WriteKeyFiles(sec, pub, kp2, true); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadKeyPair(sec); err != nil || got != kp2 {
		t.Fatalf("after force: %v, %v", got, err)
	}
	if got, _ := LoadPublicKey(pub); got != kp2.Public {
		t.Fatal("public file not replaced")
	}

	if err := WriteKeyFiles(sec, sec, kp2, true); err == nil {
		t.Error("same path for both files accepted")
	}
	bad := kp2
	bad.Public = kp.Public
	if err := WriteKeyFiles(filepath.Join(dir, "x"), filepath.Join(dir, "y"), bad, false); err == nil {
		t.Error("mismatched key pair written")
	}
}

func TestLoadKeyPairUnprotected(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "k_secret"), filepath.Join(dir, "k")
	if err := WriteKeyFiles(sec, pub, mustKeyPair(t), false); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []fs.FileMode{0o640, 0o604, 0o620, 0o644, 0o666} {
		os.Chmod(sec, mode)
		_, err := LoadKeyPair(sec)
		if !errors.Is(err, ErrUnprotectedKeyFile) {
			t.Fatalf("mode %04o: err = %v, want ErrUnprotectedKeyFile", mode, err)
		}
		if !strings.Contains(err.Error(), "chmod 600") || !strings.Contains(err.Error(), sec) {
			t.Errorf("unhelpful error: %v", err)
		}
	}
	os.Chmod(sec, 0o400)
	if _, err := LoadKeyPair(sec); err != nil {
		t.Fatalf("mode 0400: %v", err)
	}
}

// TestLoadForeignCerts reads certificates as pyzmq's create_certificates
// and czmq's zcert_save_secret write them.
func TestLoadForeignCerts(t *testing.T) {
	const pyzmqSecret = `#   ****  Generated on 2024-05-01 12:00:00.000000 by pyzmq  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

metadata
    name = "test"
curve
    public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
`
	const czmqPublic = "#   ****  Generated on 2024-05-01 12:00:00 by CZMQ  ****\r\n" +
		"#   ZeroMQ CURVE Public Certificate\r\n" +
		"\r\n" +
		"metadata\r\n" +
		"    email = \"a@b.c\"\r\n" +
		"curve\r\n" +
		"    public-key = \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"\r\n"
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "s"), filepath.Join(dir, "p")
	os.WriteFile(sec, []byte(pyzmqSecret), 0o600)
	os.WriteFile(pub, []byte(czmqPublic), 0o644)
	kp, err := LoadKeyPair(sec)
	if err != nil {
		t.Fatal(err)
	}
	if kp.Public.String() != "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7" {
		t.Fatalf("public %s", kp.Public)
	}
	if p, err := LoadPublicKey(pub); err != nil || p != kp.Public {
		t.Fatalf("LoadPublicKey = %v, %v", p, err)
	}

	bad := map[string]string{
		"mismatch":   strings.Replace(pyzmqSecret, "rq:rM", "rq:rN", 1),
		"no secret":  strings.Replace(pyzmqSecret, "secret-key", "secret-kee", 1),
		"duplicate":  pyzmqSecret + "    public-key = \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"\n",
		"bad quotes": strings.Replace(pyzmqSecret, "{Lh6\"", "{Lh6", 1),
		"bad z85":    strings.Replace(pyzmqSecret, "JTKVS", "JTKV~", 1),
		"outside":    strings.Replace(pyzmqSecret, "curve\n", "other\n", 1),
	}
	for name, text := range bad {
		os.WriteFile(sec, []byte(text), 0o600)
		if _, err := LoadKeyPair(sec); err == nil {
			t.Errorf("%s: LoadKeyPair succeeded", name)
		} else if strings.Contains(err.Error(), "JTKV") {
			t.Errorf("%s: error leaks the secret key: %v", name, err)
		}
	}
	if _, err := LoadKeyPair(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestWrittenCertFormat pins the file layout pyzmq's load_certificate
// parses: a "curve" section with quoted public-key and secret-key lines.
func TestWrittenCertFormat(t *testing.T) {
	kp := mustKeyPair(t)
	text := string(certText(kp, true))
	for _, want := range []string{"\nmetadata\ncurve\n", "\n    public-key = \"" + kp.Public.String() + "\"\n", "\n    secret-key = \"" + kp.Secret.z85() + "\"\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("secret file lacks %q:\n%s", want, text)
		}
	}
	// Every Z85 character survives %q unescaped (no '"' or '\' in Z85).
	if _, err := z85.Decode(kp.Public.String()); err != nil {
		t.Fatal(err)
	}
}

func TestParseAuthorizedKeys(t *testing.T) {
	a, b := mustKeyPair(t).Public, mustKeyPair(t).Public
	text := "# zp authorized keys\n\n" +
		a.String() + "\n" +
		"   " + b.String() + "   alice@laptop  # and a comment\n" +
		"\t# indented comment\n" +
		b.String() + "\tduplicate is fine\r\n"
	keys, err := ParseAuthorizedKeys(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || keys[0] != a || keys[1] != b || keys[2] != b {
		t.Fatalf("keys = %v", keys)
	}
	if keys, err := ParseAuthorizedKeys(strings.NewReader("")); err != nil || len(keys) != 0 {
		t.Fatalf("empty: %v %v", keys, err)
	}
	for text, line := range map[string]int{
		a.String() + "\nnot-a-key\n":                                   2,
		"#c\n\n" + a.String()[:39] + "\n":                              3,
		a.String() + "x\n":                                             1,
		"\n\n\n" + strings.Replace(a.String(), a.String()[:1], "~", 1): 4,
	} {
		_, err := ParseAuthorizedKeys(strings.NewReader(text))
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("line %d:", line)) || !strings.HasPrefix(err.Error(), "curve: ") {
			t.Errorf("%q: err = %v, want line %d", text, err, line)
		}
	}
}

func TestAllowKeys(t *testing.T) {
	a, b := mustKeyPair(t).Public, mustKeyPair(t).Public
	auth := AllowKeys(a)
	if err := auth(a); err != nil {
		t.Fatal(err)
	}
	if err := auth(b); !errors.Is(err, ErrNotAuthorised) {
		t.Fatalf("err = %v", err)
	}
	if err := AllowKeys()(a); err == nil {
		t.Fatal("empty AllowKeys accepted a key")
	}
}

// canonical refuses the encodings of a u-coordinate at or above
// 2^255 - 19, and any with the top bit set.
func TestCanonical(t *testing.T) {
	p := [32]byte{0: 0xed, 31: 0x7f}
	for i := 1; i < 31; i++ {
		p[i] = 0xff
	}
	below := p
	below[0] = 0xec
	top := [32]byte{31: 0x80}
	pPlus := p
	pPlus[0] = 0xee
	for _, c := range []struct {
		name string
		k    [32]byte
		want bool
	}{{"zero", [32]byte{}, true}, {"p - 1", below, true}, {"p", p, false}, {"p + 1", pPlus, false}, {"top bit", top, false}} {
		if got := canonical(&c.k); got != c.want {
			t.Errorf("%s: canonical %v", c.name, got)
		}
	}
	// Every key made here is canonical.
	for range 100 {
		kp, err := GenerateKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		if !canonical((*[32]byte)(&kp.Public)) {
			t.Fatalf("a generated key is not canonical: %x", kp.Public)
		}
	}
}
