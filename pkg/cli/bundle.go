package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/internal/human"
)

// NewCmdBundle builds `otactl bundle` and its subcommands.
func NewCmdBundle(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Create, inspect and verify firmware bundles (fw.zip)",
		Long: `Work with firmware bundles: the fw.zip a Mongoose OS device takes for an
update (manifest.json first, then one stored entry per part, with sizes and
SHA-1/SHA-256 checksums). Bundles made by 'mos build' / 'mos create-fw-bundle'
are read too, signed ones included. Signed bundles carry ECDSA P-256
signatures of their manifest exactly where mos puts them (docs/security.md).`,
		Example: `  otactl bundle create -o fw.zip --platform esp32 --version 1.2.0 app:src=build/app.bin,addr=0x10000,type=app
  otactl bundle inspect fw.zip
  otactl bundle verify fw.zip && echo good

  # signing: a key pair, a signed bundle, and the check a device makes
  otactl bundle keygen -o k0.pem
  otactl bundle sign fw.zip --key k0.pem -o fw-signed.zip
  otactl bundle verify fw-signed.zip --pubkey k0.pub.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErrorf("bundle needs a subcommand: create, inspect, verify, sign or keygen")
		},
	}
	cmd.AddCommand(newCmdBundleCreate(f), newCmdBundleInspect(f, false), newCmdBundleInspect(f, true),
		newCmdBundleSign(f), newCmdBundleKeygen(f))
	return cmd
}

// writeJSON writes v as one indented JSON document, with <, > and & as
// they are (messages quote URLs and placeholders like <device_id>).
func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// humanBytes prints 512 bytes, 2.0 KiB, 1.5 MiB (internal/human).
func humanBytes(n int64) string { return human.Bytes(n) }

// openBundle opens a bundle named on the command line: a path that does not
// exist is a usage error (exit 2), any other failure to read it exit 1.
func openBundle(path string) (*os.File, error) {
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, usageErrorf("bundle %s does not exist", path)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read bundle: %w", err)
	}
	return fh, nil
}
