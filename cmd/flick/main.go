// Command flick is the command-line client of flickd.
package main

import (
	"context"
	"os"

	"github.com/flick-vm/flick/internal/cli"
)

func main() {
	os.Exit(cli.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
