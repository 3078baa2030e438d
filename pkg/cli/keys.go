package cli

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/term"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// Keys for signed bundles on the command line (docs/security.md). A key
// flag is repeatable; the Nth value is key slot N (sigN, update.keyN)
// unless it reads "N:VALUE"; an empty value skips a slot, as mos's
// --sign-key= does.

// keyArg is one value of a repeatable key flag.
type keyArg struct {
	slot  int
	value string
}

// parseKeyArgs assigns slots to the values of a key flag.
func parseKeyArgs(flag string, vals []string) ([]keyArg, error) {
	var out []keyArg
	used := map[int]bool{}
	for i, v := range vals {
		slot, rest := i, v
		if len(v) >= 2 && v[1] == ':' && v[0] >= '0' && v[0] <= '9' {
			n, _ := strconv.Atoi(v[:1])
			slot, rest = n, v[2:]
		}
		if slot >= bundle.MaxKeys {
			return nil, usageErrorf("%s %q: key slot %d, but a device has slots 0 to %d", flag, v, slot, bundle.MaxKeys-1)
		}
		if rest == "" {
			continue
		}
		if used[slot] {
			return nil, usageErrorf("%s: two keys for slot %d (give N:FILE to place a key in slot N)", flag, slot)
		}
		used[slot] = true
		out = append(out, keyArg{slot, rest})
	}
	return out, nil
}

// loadPublicKeys reads the public keys given with flag: PEM files, or
// base64 DER (a device's update.keyN value). names says where each came
// from, for messages.
func loadPublicKeys(flag string, vals []string) (keys [bundle.MaxKeys]*ecdsa.PublicKey, names [bundle.MaxKeys]string, err error) {
	args, err := parseKeyArgs(flag, vals)
	if err != nil {
		return keys, names, err
	}
	for _, a := range args {
		k, name, err := readPublicKeyArg(a.value)
		if err != nil {
			return keys, names, usageErrorf("%s %s: %v", flag, name, err)
		}
		keys[a.slot], names[a.slot] = k, name
	}
	return keys, names, nil
}

// readPublicKeyArg reads a public key from a file, or from the value itself
// when no such file exists (base64 DER, as in update.keyN).
func readPublicKeyArg(v string) (*ecdsa.PublicKey, string, error) {
	data, err := os.ReadFile(v)
	switch {
	case err == nil:
		k, err := bundle.ParsePublicKey(data)
		return k, v, err
	case !errors.Is(err, fs.ErrNotExist):
		return nil, v, err
	}
	name := "(base64 key)"
	k, perr := bundle.ParsePublicKey([]byte(v))
	if perr != nil {
		return nil, v, fmt.Errorf("neither a readable file nor a base64 DER public key")
	}
	return k, name, nil
}

// loadSigners reads the private keys given with flag; the result's index
// is the slot (nil where none).
func loadSigners(flag string, vals []string, pass bundle.Passphrase) ([]crypto.Signer, error) {
	args, err := parseKeyArgs(flag, vals)
	if err != nil {
		return nil, err
	}
	var out []crypto.Signer
	for _, a := range args {
		data, err := os.ReadFile(a.value)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, usageErrorf("%s %s does not exist", flag, a.value)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		k, err := bundle.ParsePrivateKey(data, a.value, pass)
		if err != nil {
			var ue *UsageError
			if errors.As(err, &ue) {
				return nil, err
			}
			return nil, usageErrorf("%s: %v", flag, err)
		}
		for len(out) <= a.slot {
			out = append(out, nil)
		}
		out[a.slot] = k
	}
	return out, nil
}

// passphrase returns where the passphrase of an encrypted key comes from:
// the first line of passFile when given (flag names it in messages), else
// a prompt on the terminal otactl runs in.
func (f *Factory) passphrase(flag, passFile string) bundle.Passphrase {
	return func(name string) ([]byte, error) {
		if passFile != "" {
			return readPassFile(flag, passFile)
		}
		return f.readPassword(fmt.Sprintf("Passphrase for %s: ", name), flag)
	}
}

// readPassword asks on the terminal without echo.
func (f *Factory) readPassword(prompt, flag string) ([]byte, error) {
	fh, ok := f.IO.In.(*os.File)
	if !ok || !term.IsTerminal(int(fh.Fd())) {
		return nil, usageErrorf("the key is encrypted and there is no terminal to ask for its passphrase on: give %s FILE", flag)
	}
	fmt.Fprint(f.IO.ErrOut, prompt)
	pw, err := term.ReadPassword(int(fh.Fd()))
	fmt.Fprintln(f.IO.ErrOut)
	if err != nil {
		return nil, fmt.Errorf("reading the passphrase: %w", err)
	}
	return pw, nil
}

// readPassFile returns the first line of a passphrase file (like openssl's
// -passin file:).
func readPassFile(flag, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErrorf("%s: %v", flag, err)
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, usageErrorf("%s %s: the first line is empty", flag, path)
	}
	return line, nil
}

// parseMask reads a signature mask: decimal, 0x hex or 0b binary; -1 means
// signatures are ignored.
func parseMask(flag, s string) (int, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, 64)
	if err != nil || n < -1 || n > 1<<31-1 {
		return 0, usageErrorf("%s %q: want -1 (ignore signatures), 0 (refuse every update) or a bit mask such as 1, 0b11, 0x3", flag, s)
	}
	return int(n), nil
}

// maskWord describes a mask in words.
func maskWord(mask int) string {
	switch {
	case mask < 0:
		return "signatures ignored"
	case mask == 0:
		return "every update refused"
	}
	var need []string
	for i := 0; i < 31; i++ {
		if mask&(1<<i) != 0 {
			need = append(need, "sig"+strconv.Itoa(i))
		}
	}
	return "needs " + strings.Join(need, " and ")
}
