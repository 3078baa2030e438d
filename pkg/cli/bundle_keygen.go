package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// BundleKeygenOptions are the inputs of `otactl bundle keygen`.
type BundleKeygenOptions struct {
	F        *Factory
	Output   string
	PubOut   string
	Slot     int
	Encrypt  bool
	PassFile string
	Force    bool
}

func newCmdBundleKeygen(f *Factory) *cobra.Command {
	o := &BundleKeygenOptions{F: f}
	cmd := &cobra.Command{
		Use:   "keygen -o KEY.pem [--slot N] [--pub-out PUB.pem] [--encrypt]",
		Short: "Make an ECDSA P-256 key pair for signing bundles",
		Long: `Make a new ECDSA P-256 signing key, write it to -o (mode 0600, PEM "EC PRIVATE
KEY" as openssl and mos write it; with --encrypt, "ENCRYPTED PRIVATE KEY"
protected by a passphrase), write its public key to --pub-out (default:
KEY.pub.pem), and print the value to put in the device's update.keyN
(base64 DER, N = --slot). The private key is never printed.`,
		Example: `  otactl bundle keygen -o k0.pem
  otactl bundle keygen -o k1.pem --slot 1 --encrypt --pass-file k1.pass`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBundleKeygen(o)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&o.Output, "output", "o", "", "private key file to write (required; mode 0600)")
	fl.StringVar(&o.PubOut, "pub-out", "", "public key file to write (default: KEY.pub.pem next to -o)")
	fl.IntVar(&o.Slot, "slot", 0, "key slot 0-7 the device will hold it in (update.keyN), for the printed config")
	fl.BoolVar(&o.Encrypt, "encrypt", false, "protect the private key with a passphrase (asked twice on the terminal, or --pass-file)")
	fl.StringVar(&o.PassFile, "pass-file", "", "with --encrypt: file whose first line is the passphrase")
	fl.BoolVar(&o.Force, "force", false, "overwrite existing key files")
	return cmd
}

func runBundleKeygen(o *BundleKeygenOptions) error {
	f := o.F
	if o.Output == "" {
		return usageErrorf("bundle keygen needs -o KEY.pem")
	}
	if o.Slot < 0 || o.Slot >= bundle.MaxKeys {
		return usageErrorf("--slot %d: a device has key slots 0 to %d", o.Slot, bundle.MaxKeys-1)
	}
	if o.PassFile != "" && !o.Encrypt {
		return usageErrorf("--pass-file goes with --encrypt")
	}
	pub := o.PubOut
	if pub == "" {
		pub = strings.TrimSuffix(o.Output, filepath.Ext(o.Output)) + ".pub.pem"
	}
	if !o.Force {
		for _, p := range []string{o.Output, pub} {
			if _, err := os.Stat(p); err == nil {
				return usageErrorf("%s exists: pick another name, or --force to overwrite it", p)
			}
		}
	}
	var pass []byte
	if o.Encrypt {
		var err error
		if o.PassFile != "" {
			pass, err = readPassFile("--pass-file", o.PassFile)
		} else {
			pass, err = f.readPassword("New passphrase: ", "--pass-file")
			if err == nil {
				var again []byte
				again, err = f.readPassword("Same passphrase again: ", "--pass-file")
				if err == nil && string(again) != string(pass) {
					err = usageErrorf("the passphrases differ; nothing was written")
				}
			}
			if err == nil && len(pass) == 0 {
				err = usageErrorf("empty passphrase; nothing was written")
			}
		}
		if err != nil {
			return err
		}
	}
	key, err := bundle.GenerateKey()
	if err != nil {
		return err
	}
	privPEM, err := bundle.PrivateKeyPEM(key, pass)
	if err != nil {
		return err
	}
	pubPEM, err := bundle.PublicKeyPEM(&key.PublicKey)
	if err != nil {
		return err
	}
	b64, err := bundle.PublicKeyBase64(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writeKeyFile(o.Output, privPEM, 0o600, o.Force); err != nil {
		return err
	}
	if err := writeKeyFile(pub, pubPEM, 0o644, o.Force); err != nil {
		return err
	}
	cfgKey := fmt.Sprintf("update.key%d", o.Slot)
	if f.G.JSON {
		return writeJSON(f.IO.Out, map[string]any{"private_key_file": o.Output, "public_key_file": pub, "encrypted": o.Encrypt,
			"slot": o.Slot, "config_key": cfgKey, "public_key": b64, "public_key_pem": string(pubPEM)})
	}
	out := f.IO.Out
	fmt.Fprintf(out, "wrote %s: ECDSA P-256 private key (mode 0600%s): keep it secret, sign with it\n", o.Output, map[bool]string{true: ", encrypted", false: ""}[o.Encrypt])
	fmt.Fprintf(out, "wrote %s: its public key (for --pubkey and the emulator's --update-key)\n", pub)
	fmt.Fprintf(out, "device config: %s=%s\n", cfgKey, b64)
	fmt.Fprintf(out, "  e.g. mos config-set %s=%s update.sig_req_mask=%d\n", cfgKey, b64, 1<<o.Slot)
	return nil
}

// writeKeyFile writes a key file with mode perm; without force it never
// replaces an existing file.
func writeKeyFile(path string, data []byte, perm os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	fh, err := os.OpenFile(path, flags, perm)
	if errors.Is(err, fs.ErrExist) {
		return usageErrorf("%s exists: pick another name, or --force to overwrite it", path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	// An existing file keeps its mode on O_TRUNC: set it.
	if err := fh.Chmod(perm); err != nil {
		fh.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return fh.Close()
}
