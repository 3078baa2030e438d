package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// setupCompletion adds cobra's `completion` and `help` commands, with
// examples like every other command.
func setupCompletion(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			c.Example = "  otactl help update\n  otactl update --help"
		}
		if c.Name() == "completion" {
			c.Example = `  # bash, for this shell
  source <(otactl completion bash)
  # bash, for every shell (Debian/Ubuntu)
  otactl completion bash | sudo tee /etc/bash_completion.d/otactl >/dev/null
  # zsh
  otactl completion zsh > "${fpath[1]}/_otactl"
  # fish
  otactl completion fish > ~/.config/fish/completions/otactl.fish`
			var shells []string
			for _, sub := range c.Commands() {
				sub.Example = fmt.Sprintf("  otactl completion %s", sub.Name())
				shells = append(shells, sub.Name())
			}
			// Without this cobra prints the help and exits 0 for an
			// unknown shell, and a script redirecting it gets help text.
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					return usageErrorf("completion needs a shell: %s", strings.Join(shells, ", "))
				}
				return usageErrorf("completion: unknown shell %q (known: %s)", args[0], strings.Join(shells, ", "))
			}
		}
	}
}

// newCmdGenMan builds the hidden `gen-man` command behind `make man`.
func newCmdGenMan() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:     "gen-man --dir DIR",
		Short:   "Write man pages for every command",
		Example: "  otactl gen-man --dir man && man -l man/otactl-update.1",
		Hidden:  true,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			return genManTree(root, &doc.GenManHeader{Title: "OTACTL", Section: "1", Source: "otactl " + currentVersion().Version}, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "man", "directory to write the pages to")
	return cmd
}
