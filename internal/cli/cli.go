// Package cli implements the flick command line. It reaches flickd only
// through the api client.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/api"
)

// Version is flick's version, set at link time with
// -ldflags "-X github.com/flick-vm/flick/internal/cli.Version=...".
var Version = "dev"

// ExitFailure is the exit code of flick's own failures (as docker run).
const ExitFailure = 125

// exitCode is an error that makes Run exit with code without printing
// anything more.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// app holds what every command shares.
type app struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	host   string
	c      *api.Client
}

// client returns the api client for --host, made on first use.
func (a *app) client() (*api.Client, error) {
	if a.c == nil {
		c, err := api.NewClient(a.host)
		if err != nil {
			return nil, err
		}
		a.c = c
	}
	return a.c, nil
}

// Run runs flick with args (without the program name) and returns the exit
// code: 0, the app's exit code for run, or ExitFailure with "Error: ..."
// printed to stderr.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{ctx: ctx, stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var code exitCode
	if errors.As(err, &code) {
		return int(code)
	}
	fmt.Fprintf(stderr, "Error: %s\n", err)
	return ExitFailure
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "flick",
		Short:         "Run OCI images as microVMs",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	root.SetVersionTemplate("flick version {{.Version}}\n")
	defHost := os.Getenv("FLICK_HOST")
	if defHost == "" {
		defHost = api.DefaultHost
	}
	root.PersistentFlags().StringVarP(&a.host, "host", "H", defHost, "daemon address: unix:///path or http://host:port (env FLICK_HOST)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w\nSee '%s --help'", err, c.CommandPath())
	})
	root.AddCommand(
		a.pullCommand(), a.loadCommand(), a.imagesCommand(), a.rmiCommand(),
		a.createCommand(), a.runCommand(), a.startCommand(), a.stopCommand(),
		a.killCommand(), a.restartCommand(), a.rmCommand(), a.waitCommand(),
		a.psCommand(), a.logsCommand(), a.consoleCommand(), a.inspectCommand(),
		a.execCommand(), a.cpCommand(), a.standbyCommand(), a.resumeCommand(), a.forkCommand(),
		a.networkCommand(), a.benchCommand(), a.versionCommand(),
	)
	for _, c := range root.Commands() {
		c.DisableFlagsInUseLine = true
	}
	return root
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// forEach runs fn for every name, printing the name on success (if print)
// and "Error: ..." for each failure; it fails if any did.
func (a *app) forEach(names []string, print bool, fn func(c *api.Client, name string) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	failed := false
	for _, n := range names {
		if err := fn(c, n); err != nil {
			fmt.Fprintf(a.stderr, "Error: %s\n", err)
			failed = true
			continue
		}
		if print {
			fmt.Fprintln(a.stdout, n)
		}
	}
	if failed {
		return exitCode(ExitFailure)
	}
	return nil
}

func (a *app) versionCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the flick and flickd versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client := map[string]string{
				"version": Version, "go_version": runtime.Version(),
				"os": runtime.GOOS, "arch": runtime.GOARCH,
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			srv, srvErr := c.Version(a.ctx)
			if asJSON {
				out := map[string]any{"client": client}
				if srvErr == nil {
					out["server"] = srv
				}
				if err := printJSON(a.stdout, out); err != nil {
					return err
				}
				return srvErr
			}
			fmt.Fprintf(a.stdout, "Client:\n Version:     %s\n Go version:  %s\n OS/Arch:     %s/%s\n",
				Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			if srvErr != nil {
				return srvErr
			}
			fmt.Fprintf(a.stdout, "\nServer:\n Version:     %s\n API version: %s\n Go version:  %s\n OS/Arch:     %s/%s\n",
				srv.Version, srv.APIVersion, srv.GoVersion, srv.OS, srv.Arch)
			if srv.Accel != "" {
				fmt.Fprintf(a.stdout, " Accel:       %s\n", srv.Accel)
			}
			if srv.QEMU != "" {
				fmt.Fprintf(a.stdout, " QEMU:        %s\n", srv.QEMU)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
