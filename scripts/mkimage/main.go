// Command mkimage builds a Go main package into a static binary and writes a
// scratch image holding it as /app (its entrypoint) as a docker-archive
// tarball, ready for `flick load -i`:
//
//	go run ./scripts/mkimage -o bin/demo.tar -tag flick/demo:latest ./examples/hello
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flick-vm/flick/internal/testenv"
)

func main() {
	out := flag.String("o", "", "write the docker-archive tarball to `file` (required)")
	tag := flag.String("tag", "", "tag the image as `repo:tag`, e.g. flick/demo:latest")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: mkimage -o FILE [-tag REPO:TAG] PACKAGE\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(context.Background(), flag.Arg(0), *out, *tag); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, pkg, out, tag string) error {
	tmp, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "app")
	if err := testenv.BuildStatic(ctx, ".", pkg, bin); err != nil {
		return err
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	img, err := testenv.ScratchImage(b)
	if err != nil {
		return fmt.Errorf("image of %s: %w", pkg, err)
	}
	if dir := filepath.Dir(out); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := testenv.WriteDockerArchiveFile(img, tag, out); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s (%s)\n", out, tag, d)
	return nil
}
