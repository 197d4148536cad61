package signature

import (
	"crypto/ed25519"
	"errors"
	"os"
	"strings"
	"testing"

	"storekeeper/nix/nar"
)

func readKey(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// The path real `nix copy --to file://...?secret-key=test-cache-1.sec`
// signed, after `nix store sign --key-file other-key-2.sec` had signed it
// in the store (see testdata/README and ../narinfo/testdata).
const (
	fpPath    = "/nix/store/0c6kzph7l0dcbgmjiwchyfrwsqsq4iy4-withrefs"
	fpNarHash = "sha256:084kbcp7aic8fc8kbbpfsiy45gbaqgvvl42dy3rf7v75j890cmzi"
	fpNarSize = 656
	sigCache  = "test-cache-1:dzwriMeDcJRAIgC/CDRT02a3oGj0d9SpZcHksTR7Sn8HonVlhBAyRrgE1sJnU/SP3JWTX0ANUIOkDh5uLNL6DA=="
	sigStore  = "other-key-2:myDOIsSe9xGHG+5XdPkQb4xSAsgixpO0qI/1G7s0WVmA6Cz5vuWpf3LuOHuu7GHcZklaJK67TGCEPPdEWqCJDQ=="
)

var fpRefs = []string{
	"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", // unsorted on purpose
	"/nix/store/0c6kzph7l0dcbgmjiwchyfrwsqsq4iy4-withrefs",
	"/nix/store/dic12prshyzh2cfw4zpavajc5bnr6ppk-tree",
}

func realFingerprint(t *testing.T) string {
	t.Helper()
	h, err := nar.ParseHash(fpNarHash)
	if err != nil {
		t.Fatal(err)
	}
	return Fingerprint(fpPath, h, fpNarSize, fpRefs)
}

func TestFingerprint(t *testing.T) {
	want := "1;" + fpPath + ";" + fpNarHash + ";656;/nix/store/0c6kzph7l0dcbgmjiwchyfrwsqsq4iy4-withrefs," +
		"/nix/store/dic12prshyzh2cfw4zpavajc5bnr6ppk-tree,/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
	if got := realFingerprint(t); got != want {
		t.Errorf("Fingerprint = %q\nwant %q", got, want)
	}
	if fpRefs[0] != "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt" {
		t.Errorf("Fingerprint sorted the caller's slice")
	}
	var h nar.Hash
	if got := Fingerprint("/nix/store/x", h, 0, nil); got != "1;/nix/store/x;sha256:"+strings.Repeat("0", 52)+";0;" {
		t.Errorf("no references: %q", got)
	}
}

// TestRealKeysAndSignatures: the keys nix-store --generate-binary-cache-key
// wrote parse, a secret key's public half is its .pub file, and Sign of
// the fingerprint gives exactly the signatures real Nix wrote (ed25519 is
// deterministic), which Verify accepts.
func TestRealKeysAndSignatures(t *testing.T) {
	fp := realFingerprint(t)
	var pubs []string
	for _, c := range []struct{ key, sig string }{{"test-cache-1", sigCache}, {"other-key-2", sigStore}} {
		sk, err := ParseSecretKey(readKey(t, c.key+".sec"))
		if err != nil {
			t.Fatal(err)
		}
		pubText := strings.TrimSpace(readKey(t, c.key+".pub"))
		pub, err := ParsePublicKey(pubText)
		if err != nil {
			t.Fatal(err)
		}
		if sk.Name != c.key || sk.Public().String() != pubText || pub.String() != pubText {
			t.Errorf("%s: public %s, file %s", c.key, sk.Public(), pubText)
		}
		if sk.String() != strings.TrimSpace(readKey(t, c.key+".sec")) {
			t.Errorf("%s: String() is not the file", c.key)
		}
		if got := sk.Sign(fp); got != c.sig {
			t.Errorf("%s: Sign = %s, Nix wrote %s", c.key, got, c.sig)
		}
		s, err := ParseSig(c.sig)
		if err != nil || s.Name != c.key || len(s.Sig) != ed25519.SignatureSize {
			t.Errorf("ParseSig(%s) = %+v, %v", c.sig, s, err)
		}
		pubs = append(pubs, pubText)
	}
	keys, err := ParsePublicKeys(pubs)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{sigCache, sigStore} {
		if !keys.Verify(fp, s) {
			t.Errorf("Verify(%s) = false", s)
		}
	}
	if n := CountValidSigs(keys, fp, sigCache+" "+sigStore+" "+sigCache); n != 2 {
		t.Errorf("CountValidSigs = %d, want 2 (a repeated signature counts once)", n)
	}
	only1, _ := ParsePublicKeys(pubs[:1])
	if n := CountValidSigs(only1, fp, sigCache+" "+sigStore); n != 1 {
		t.Errorf("CountValidSigs with one trusted key = %d", n)
	}
}

func TestVerifyRejects(t *testing.T) {
	fp := realFingerprint(t)
	keys, err := ParsePublicKeys([]string{strings.TrimSpace(readKey(t, "test-cache-1.pub"))})
	if err != nil {
		t.Fatal(err)
	}
	// Another key under the trusted key's name.
	other, _ := ParseSecretKey(readKey(t, "other-key-2.sec"))
	impostor := SecretKey{Name: "test-cache-1", Key: other.Key}
	b64 := sigCache[len("test-cache-1:"):]
	for name, c := range map[string]struct{ fp, sig string }{
		"other fingerprint": {fp + ",x", sigCache},
		"other size":        {strings.Replace(fp, ";656;", ";657;", 1), sigCache},
		"untrusted key":     {fp, sigStore},
		"impostor":          {fp, impostor.Sign(fp)},
		"no name":           {fp, b64},
		"empty name":        {fp, ":" + b64},
		"truncated":         {fp, sigCache[:len(sigCache)-4]},
		"not base64":        {fp, "test-cache-1:" + strings.Repeat("!", 88)},
		"too long":          {fp, sigCache + "AAAA"},
		"empty":             {fp, ""},
		"flipped bit":       {fp, "test-cache-1:" + string(b64[0]^1) + b64[1:]},
	} {
		if keys.Verify(c.fp, c.sig) {
			t.Errorf("%s: Verify accepted %q", name, c.sig)
		}
	}
}

func TestParseKeyErrors(t *testing.T) {
	secret := strings.TrimSpace(readKey(t, "test-cache-1.sec"))
	for _, k := range []string{"", "name", "name:", ":" + secret[len("test-cache-1:"):], "k:!!!", "k:AAAA",
		strings.TrimSpace(readKey(t, "test-cache-1.pub")) + "AAAA"} {
		if _, err := ParsePublicKey(k); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParsePublicKey(%q): %v", k, err)
		}
		if _, err := ParsePublicKeys([]string{k}); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParsePublicKeys(%q): %v", k, err)
		}
	}
	// A public key is not a secret key and the other way round.
	if _, err := ParseSecretKey(readKey(t, "test-cache-1.pub")); !errors.Is(err, ErrBadKey) {
		t.Errorf("ParseSecretKey(public key): %v", err)
	}
	if _, err := ParsePublicKey(secret); !errors.Is(err, ErrBadKey) {
		t.Errorf("ParsePublicKey(secret key): %v", err)
	}
	// A secret key whose public half is not its seed's; the error never
	// shows the secret.
	sk, _ := ParseSecretKey(secret)
	other, _ := ParseSecretKey(readKey(t, "other-key-2.sec"))
	mixed := SecretKey{Name: "mixed", Key: append(append(ed25519.PrivateKey{}, sk.Key.Seed()...), other.Public().Key...)}
	_, err := ParseSecretKey(mixed.String())
	if !errors.Is(err, ErrBadKey) || strings.Contains(err.Error(), mixed.String()[6:20]) {
		t.Errorf("mixed secret key: %v", err)
	}
	if _, err := ParseSecretKey(secret[:len(secret)-4]); err == nil || strings.Contains(err.Error(), secret[14:40]) {
		t.Errorf("truncated secret key: %v", err)
	}
	for _, s := range []string{"", "x", "k:", "k:AAAA", sigCache[:len(sigCache)-4]} {
		if _, err := ParseSig(s); !errors.Is(err, ErrBadSig) {
			t.Errorf("ParseSig(%q): %v", s, err)
		}
	}
}

// TestParsePublicKeysFirstWins: of two trusted keys with one name, the
// first is the one trusted, as in Nix's getDefaultPublicKeys (emplace
// into a map keeps the first): a key appended later under a trusted
// name (extra-trusted-public-keys, --option) does not replace it.
func TestParsePublicKeysFirstWins(t *testing.T) {
	fp := realFingerprint(t)
	real := strings.TrimSpace(readKey(t, "test-cache-1.pub"))
	other, err := ParseSecretKey(readKey(t, "other-key-2.sec"))
	if err != nil {
		t.Fatal(err)
	}
	impostor := SecretKey{Name: "test-cache-1", Key: other.Key}
	keys, err := ParsePublicKeys([]string{real, impostor.Public().String()})
	if err != nil {
		t.Fatal(err)
	}
	if keys.Verify(fp, impostor.Sign(fp)) {
		t.Errorf("a signature by the second key named test-cache-1 verified")
	}
	if !keys.Verify(fp, sigCache) {
		t.Errorf("a signature by the first key named test-cache-1 did not verify")
	}
}
