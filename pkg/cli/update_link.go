package cli

import (
	"context"
	"strings"

	"github.com/spf13/cobra"
)

// How the bundle reached the device, in the --json document's "delivery".
const (
	deliveryDownload = "download"
	deliveryPush     = "push"
)

// bundleArg accepts at most one positional argument: the bundle of
// `otactl update fw.zip` (mos habit: the bundle named alone).
func bundleArg(cmd *cobra.Command, args []string) error {
	if len(args) > 1 {
		return usageErrorf("%s takes one bundle file, got %d arguments (%s)", cmd.Name(), len(args), strings.Join(args, " "))
	}
	return nil
}

// positionalBundle makes `update FW.ZIP` mean `update --file FW.ZIP`. Named
// together with --file or --url it is a usage error: which one was meant
// cannot be told.
func (o *UpdateOptions) positionalBundle(args []string) error {
	if len(args) == 0 {
		return nil
	}
	switch {
	case o.File != "":
		return usageErrorf("the bundle is named twice (%s and --file %s): give one", args[0], o.File)
	case o.URL != "":
		return usageErrorf("update takes a bundle file (%s) or --url %s, not both", args[0], o.URL)
	}
	o.File = args[0]
	return nil
}

// pushesOverLink reports whether `update --file` should push the bundle
// over the RPC link instead of serving it: the device sits on a serial
// port and --serve-addr does not say where it could download it from (a
// device on a serial cable usually has no route to this machine).
func (o *UpdateOptions) pushesOverLink() bool {
	return o.File != "" && o.ServeAddr == "" && o.bundle == nil && o.F.scheme() == "serial"
}

// runUpdateAsPush is `update --file` over a serial port: the push flow of
// `otactl push`, with its verdicts and exit codes, announced in one line
// (and in --json by "delivery": "push").
func (o *UpdateOptions) runUpdateAsPush(ctx context.Context) error {
	f := o.F
	f.updateDoc().Delivery = deliveryPush
	f.progressNote("%s is a serial port: pushing %s over the link, as 'otactl push' does (--serve-addr HOST:PORT has the device download it over its network instead)", f.G.Port, o.File)
	return runPush(ctx, o)
}
