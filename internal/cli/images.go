package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flick-vm/flick/api"
)

// progress renders the Progress stream of a pull or a load: a bar per
// layer redrawn in place on a terminal, a line per change of status
// otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	label string
	order []string
	lines map[string]string
	drawn int
}

func newProgress(w io.Writer, label string) *progress {
	return &progress{w: w, tty: isTerminal(w), label: label, lines: map[string]string{}}
}

func (p *progress) update(pr api.Progress) {
	if pr.Error != "" || (pr.Image != nil && pr.Status == "") {
		return
	}
	key := pr.Layer
	name := p.label
	if key != "" {
		name = shortDigest(key)
	}
	line := name + ": " + pr.Status
	if p.tty && pr.Total > 0 {
		line = fmt.Sprintf("%s: %-12s %s %s/%s", name, pr.Status, bar(pr.Current, pr.Total, 30), humanSize(pr.Current), humanSize(pr.Total))
	}
	old, seen := p.lines[key]
	if !seen {
		p.order = append(p.order, key)
	}
	if !p.tty {
		if seen && old == line {
			return
		}
		p.lines[key] = line
		if pr.Total > 0 {
			line += " " + humanSize(pr.Total)
		}
		fmt.Fprintln(p.w, line)
		return
	}
	p.lines[key] = line
	if p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA", p.drawn)
	}
	for _, k := range p.order {
		fmt.Fprintf(p.w, "\x1b[2K%s\n", p.lines[k])
	}
	p.drawn = len(p.order)
}

func bar(cur, total int64, width int) string {
	if total <= 0 {
		return ""
	}
	n := int(cur * int64(width) / total)
	n = min(max(n, 0), width)
	s := strings.Repeat("=", n)
	if n < width {
		s += ">" + strings.Repeat(" ", width-n-1)
	}
	return "[" + s + "]"
}

// pull pulls ref, showing progress on w.
func (a *app) pull(c *api.Client, ref string, w io.Writer) (api.Image, error) {
	p := newProgress(w, ref)
	img, err := c.ImagePull(a.ctx, ref, p.update)
	if err != nil {
		return img, err
	}
	fmt.Fprintf(w, "Digest: %s\n", img.Digest)
	return img, nil
}

func (a *app) pullCommand() *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an image from a registry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			w := a.stdout
			if quiet {
				w = io.Discard
			}
			img, err := a.pull(c, args[0], w)
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(a.stdout, img.Digest)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the digest")
	return cmd
}

func (a *app) loadCommand() *cobra.Command {
	var input, tag string
	cmd := &cobra.Command{
		Use:   "load -i FILE|DIR [--tag T]",
		Short: "Load an image from a tarball or an oci-layout directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if input == "" {
				return fmt.Errorf("flick load needs -i FILE|DIR (a docker-archive or OCI tarball, or an oci-layout directory)")
			}
			path, err := filepath.Abs(input)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			p := newProgress(a.stderr, filepath.Base(path))
			imgs, err := c.ImageLoad(a.ctx, api.LoadRequest{Path: path, Tag: tag}, p.update)
			if err != nil {
				return err
			}
			for _, img := range imgs {
				name := img.Digest
				if len(img.Names) > 0 {
					name = img.Names[0]
				}
				fmt.Fprintf(a.stdout, "Loaded image: %s (%s)\n", name, img.Digest)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&input, "input", "i", "", "tarball or oci-layout directory to load")
	cmd.Flags().StringVarP(&tag, "tag", "t", "", "reference to give the loaded image")
	return cmd
}

// splitRef splits repo:tag; the tag is after the last colon that follows
// the last slash.
func splitRef(ref string) (repo, tag string) {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:]
	}
	return ref, "<none>"
}

func (a *app) imagesCommand() *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			imgs, err := c.ImageList(a.ctx)
			if err != nil {
				return err
			}
			if imgs == nil {
				imgs = []api.Image{}
			}
			if asJSON {
				return printJSON(a.stdout, imgs)
			}
			if quiet {
				for _, img := range imgs {
					fmt.Fprintln(a.stdout, img.Digest)
				}
				return nil
			}
			now := time.Now()
			tw := tabwriter.NewWriter(a.stdout, 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "REPOSITORY\tTAG\tDIGEST\tCREATED\tSIZE\tSNAPSHOT")
			for _, img := range imgs {
				names := img.Names
				if len(names) == 0 {
					names = []string{"<none>:<none>"}
				}
				for _, n := range names {
					repo, tag := splitRef(n)
					snap := "-"
					if img.SnapshotSize > 0 {
						snap = humanSize(img.SnapshotSize)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", repo, tag, shortDigest(img.Digest), ago(now, img.Created), humanSize(img.Size), snap)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only digests")
	return cmd
}

func (a *app) rmiCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rmi [-f] IMAGE...",
		Short: "Remove images",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.forEach(args, false, func(c *api.Client, ref string) error {
				if err := c.ImageRemove(a.ctx, ref, force); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "Deleted: %s\n", ref)
				return nil
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove even if instances use it")
	return cmd
}
