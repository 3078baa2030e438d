// Command otactl updates Mongoose OS devices over the air. See docs/.
package main

import (
	"os"

	"github.com/otactl/otactl/pkg/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.SystemIO(), os.Getenv))
}
