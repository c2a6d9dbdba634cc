package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/tarx"
)

func (a *app) cpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DEST",
		Short: "Copy files between an instance and the local filesystem",
		Long: `Copy files and directories between a running instance and the local
filesystem, as docker cp does. One of SRC and DEST is INSTANCE:PATH; PATH is
inside the instance, relative to its root. Modes, owners, mtimes and symlinks
are kept. When DEST is an existing directory SRC is copied into it; otherwise
SRC is copied to DEST, whose parent must exist. A local SRC or DEST of "-" is
a tar stream on stdin or stdout.`,
		Example: `  flick cp ./site web:/srv/
  flick cp web:/var/log/app.log ./
  flick cp web:/etc - | tar -t`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcName, srcPath, srcIn := splitInstancePath(args[0])
			dstName, dstPath, dstIn := splitInstancePath(args[1])
			switch {
			case srcIn && dstIn:
				return errors.New("copying between two instances is not supported: copy to the local filesystem first")
			case !srcIn && !dstIn:
				return errors.New("one of SRC and DEST must be INSTANCE:PATH")
			case dstIn:
				return a.copyIn(args[0], dstName, dstPath)
			default:
				return a.copyOut(srcName, srcPath, args[1])
			}
		},
	}
}

// splitInstancePath splits NAME:PATH. A local path with a colon can be
// given as ./a:b, as with docker cp.
func splitInstancePath(arg string) (name, p string, ok bool) {
	if strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") {
		return "", arg, false
	}
	name, p, ok = strings.Cut(arg, ":")
	if !ok || name == "" {
		return "", arg, false
	}
	return name, p, true
}

// copyIn copies the local src into the instance at dst.
func (a *app) copyIn(src, name, dst string) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	if dst == "" {
		dst = "/"
	}
	if src == "-" {
		// A tar stream: extracted into dst, which must be a directory.
		return c.ArchivePut(a.ctx, name, dst, os.Stdin)
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	// Where the copy lands: into dst when it is a directory, else at dst.
	dir, base := dst, filepath.Base(filepath.Clean(src))
	st, err := c.Stat(a.ctx, name, dst)
	switch {
	case api.IsNotFound(err):
		if strings.HasSuffix(dst, "/") {
			return fmt.Errorf("copy to %s:%s: no such directory in the instance", name, dst)
		}
		dir, base = path.Dir(dst), path.Base(dst)
	case err != nil:
		return err
	case !fs.FileMode(st.Mode).IsDir():
		if fi.IsDir() {
			return fmt.Errorf("cannot copy directory %s onto file %s:%s", src, name, dst)
		}
		dir, base = path.Dir(dst), path.Base(dst)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarx.Create(pw, src, base)) }()
	err = c.ArchivePut(a.ctx, name, dir, pr)
	pr.CloseWithError(err)
	return err
}

// copyOut copies name:src from the instance to the local dst.
func (a *app) copyOut(name, src, dst string) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	if src == "" {
		src = "/"
	}
	st, rc, err := c.ArchiveGet(a.ctx, name, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	if dst == "-" {
		_, err := io.Copy(a.stdout, rc)
		return err
	}
	top := st.Name
	if path.Clean("/"+src) == "/" {
		top = "."
	}
	var r io.Reader = rc
	dir := dst
	fi, err := os.Stat(dst)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if strings.HasSuffix(dst, "/") {
			return fmt.Errorf("copy to %s: no such directory", dst)
		}
		dir = filepath.Dir(dst)
		r = tarx.Rename(rc, top, filepath.Base(dst))
	case err != nil:
		return err
	case !fi.IsDir():
		if fs.FileMode(st.Mode).IsDir() {
			return fmt.Errorf("cannot copy directory %s:%s onto file %s", name, src, dst)
		}
		dir = filepath.Dir(dst)
		r = tarx.Rename(rc, top, filepath.Base(dst))
	}
	if err := tarx.Extract(dir, r); err != nil {
		return fmt.Errorf("copy %s:%s to %s: %w", name, src, dst, err)
	}
	return nil
}
