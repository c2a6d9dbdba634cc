package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/network/portspec"
)

// createFlags are the flags of create, run and bench.
type createFlags struct {
	name        string
	env         []string
	envFiles    []string
	entrypoint  string
	workdir     string
	user        string
	cpus        int
	memory      string
	accel       string
	kernel      string
	stopSignal  string
	stopTimeout int
	layer       string
	noAgent     bool
	ready       string
	readyTime   int
	cold        bool
	publish     []string
	network     string
	idleStandby time.Duration
	fs          *pflag.FlagSet
}

func (f *createFlags) register(fs *pflag.FlagSet, withName bool) {
	f.fs = fs
	if withName {
		fs.StringVar(&f.name, "name", "", "name of the instance")
	}
	fs.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable, K=V (K alone takes flick's own value)")
	fs.StringArrayVar(&f.envFiles, "env-file", nil, "read environment variables from a file of K=V lines")
	fs.StringVar(&f.entrypoint, "entrypoint", "", "override the image's entrypoint")
	fs.StringVarP(&f.workdir, "workdir", "w", "", "working directory of the app")
	fs.StringVarP(&f.user, "user", "u", "", "user of the app (name, uid or uid:gid)")
	fs.IntVar(&f.cpus, "cpus", 0, "number of vCPUs (default 1)")
	fs.StringVarP(&f.memory, "memory", "m", "", "guest memory, e.g. 256M or 1g (default 128M)")
	fs.StringVar(&f.accel, "accel", "", "accelerator: auto, kvm or tcg (default auto)")
	fs.StringVar(&f.kernel, "kernel", "", "guest kernel (a vmlinux path on the daemon's host; default the daemon's for the number of vCPUs)")
	fs.StringVar(&f.stopSignal, "stop-signal", "", "signal that stops the app (default the image's, else TERM)")
	fs.IntVar(&f.stopTimeout, "stop-timeout", 0, "seconds to wait after the stop signal before killing (default 10)")
	fs.StringVar(&f.layer, "layer", "", "where the app's writes go: disk (kept across stop/start) or memory (in guest RAM, faster to boot; the default with --rm)")
	fs.BoolVar(&f.noAgent, "no-agent", false, "run no guest agent: no exec or cp, and the instance is running once its app has started")
	fs.StringVar(&f.ready, "ready", "", "readiness check run in the guest: tcp:PORT or http://:PORT/PATH; the instance is running only once it passes (default the image's label flick.ready)")
	fs.IntVar(&f.readyTime, "ready-timeout", 0, "seconds the readiness check may take (default 60)")
	fs.BoolVar(&f.cold, "cold", false, "boot the kernel: neither restore nor take the image's boot snapshot")
	fs.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a guest port on the host: [IP:][HOSTPORT:]PORT[/udp], ranges as 8000-8001:80-81")
	fs.DurationVar(&f.idleStandby, "idle-standby", 0, "stand by after this long without connections to the published ports (e.g. 30s); the next connection wakes the instance")
	fs.StringVar(&f.network, "network", "", "network to join (see flick network ls), or none for loopback only (default \"default\")")
}

// request builds the create request for image and cmd.
func (f *createFlags) request(image string, cmd []string) (api.CreateRequest, error) {
	req := api.CreateRequest{Name: f.name, Image: image}
	cfg := &req.InstanceConfig
	if len(cmd) > 0 {
		cfg.Cmd = cmd
	}
	if f.fs.Changed("entrypoint") {
		cfg.Entrypoint = []string{f.entrypoint}
	}
	for _, name := range f.envFiles {
		file, err := os.Open(name)
		if err != nil {
			return req, fmt.Errorf("env file: %w", err)
		}
		env, err := parseEnvFile(file, name)
		file.Close()
		if err != nil {
			return req, err
		}
		cfg.Env = append(cfg.Env, env...)
	}
	for _, e := range f.env {
		v, ok, err := envVar(e)
		if err != nil {
			return req, err
		}
		if ok {
			cfg.Env = append(cfg.Env, v)
		}
	}
	cfg.WorkingDir = f.workdir
	cfg.User = f.user
	if f.cpus < 0 {
		return req, fmt.Errorf("invalid --cpus %d: want 1 or more", f.cpus)
	}
	cfg.CPUs = f.cpus
	if f.memory != "" {
		mib, err := parseMemory(f.memory)
		if err != nil {
			return req, fmt.Errorf("--memory: %w", err)
		}
		cfg.MemoryMiB = mib
	}
	switch f.accel {
	case "", "auto", "kvm", "tcg":
		cfg.Accel = f.accel
	default:
		return req, fmt.Errorf("invalid --accel %q: want auto, kvm or tcg", f.accel)
	}
	cfg.Kernel = f.kernel
	cfg.StopSignal = f.stopSignal
	if f.stopTimeout < 0 {
		return req, fmt.Errorf("invalid --stop-timeout %d: want 0 or more seconds", f.stopTimeout)
	}
	cfg.StopTimeout = f.stopTimeout
	switch f.layer {
	case "", "disk", "memory":
		cfg.WritableLayer = f.layer
	default:
		return req, fmt.Errorf("invalid --layer %q: want disk or memory", f.layer)
	}
	cfg.NoAgent = f.noAgent
	cfg.Ready = f.ready
	if f.readyTime < 0 {
		return req, fmt.Errorf("invalid --ready-timeout %d: want seconds", f.readyTime)
	}
	cfg.ReadyTimeout = f.readyTime
	cfg.ColdBoot = f.cold
	for _, p := range f.publish {
		ms, err := portspec.Parse(p)
		if err != nil {
			return req, fmt.Errorf("-p: %w", err)
		}
		cfg.Ports = append(cfg.Ports, ms...)
	}
	cfg.Network = f.network
	if f.idleStandby != 0 {
		if f.idleStandby < time.Second || f.idleStandby%time.Second != 0 {
			return req, fmt.Errorf("invalid --idle-standby %s: give whole seconds, 1s or more", f.idleStandby)
		}
		cfg.IdleStandby = int(f.idleStandby / time.Second)
	}
	return req, nil
}

// defaultLayer sets the writable layer of an instance that is thrown away
// after one run, when the user did not choose: memory, which boots faster
// and is gone with the VM anyway.
func (f *createFlags) defaultLayer(req *api.CreateRequest, ephemeral bool) {
	if ephemeral && req.WritableLayer == "" {
		req.WritableLayer = "memory"
	}
}

// notFoundLocally reports whether err is the daemon saying that create
// needs the image pulled first.
func notFoundLocally(err error) bool {
	return api.IsNotFound(err) && strings.Contains(err.Error(), "not found locally")
}

// create creates an instance, pulling its image (progress on stderr) when
// it is not present locally.
func (a *app) create(c *api.Client, req api.CreateRequest) (api.Instance, error) {
	in, err := c.InstanceCreate(a.ctx, req)
	if !notFoundLocally(err) {
		return in, err
	}
	fmt.Fprintf(a.stderr, "Unable to find image '%s' locally\n", req.Image)
	if _, err := a.pull(c, req.Image, a.stderr); err != nil {
		return in, err
	}
	return c.InstanceCreate(a.ctx, req)
}

func (a *app) createCommand() *cobra.Command {
	var f createFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] IMAGE [CMD...]",
		Short: "Create an instance without starting it",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[0], args[1:])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			in, err := a.create(c, req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, in)
			}
			fmt.Fprintln(a.stdout, in.ID)
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false)
	f.register(cmd.Flags(), true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the instance as JSON")
	return cmd
}

func (a *app) runCommand() *cobra.Command {
	var f createFlags
	var detach, rm, asJSON bool
	cmd := &cobra.Command{
		Use:   "run [OPTIONS] IMAGE [CMD...]",
		Short: "Create and start an instance",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[0], args[1:])
			if err != nil {
				return err
			}
			// Detached, the daemon removes the instance on exit; attached,
			// the CLI does after wait, so that the exit code is not lost.
			req.AutoRemove = detach && rm
			f.defaultLayer(&req, rm)
			c, err := a.client()
			if err != nil {
				return err
			}
			in, err := a.create(c, req)
			if err != nil {
				return err
			}
			if !detach {
				return a.attach(c, in.ID, -1, rm, true, true)
			}
			id := in.ID
			in, err = c.InstanceStart(a.ctx, id)
			if err != nil {
				// The error carries the reason and the console's last
				// lines; run leaves no instance behind.
				a.discard(c, id)
				return err
			}
			if asJSON {
				return printJSON(a.stdout, in)
			}
			printInstance(a.stdout, in)
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false)
	f.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run in the background and print the instance")
	cmd.Flags().BoolVar(&rm, "rm", false, "remove the instance when it exits")
	cmd.Flags().BoolVar(&asJSON, "json", false, "with -d, print the instance as JSON")
	return cmd
}

// attach streams the logs of instance id to stdout and stderr, starts it
// (if start), forwards SIGINT and SIGTERM, waits for it to exit and returns
// the app's exit code as an exitCode error. rm removes it after.
// attach streams an instance's output and waits for it; with start it
// starts the instance first, and an instance that fails to start is removed
// when discard is set (run never leaves one behind).
func (a *app) attach(c *api.Client, id string, tail int, rm, start, discard bool) error {
	ctx, cancel := context.WithCancel(a.ctx)
	defer cancel()
	opened := make(chan struct{})
	logsDone := make(chan error, 1)
	go func() {
		s, err := c.InstanceLogs(ctx, id, api.LogsOptions{Follow: true, Tail: tail})
		close(opened)
		if err != nil {
			logsDone <- err
			return
		}
		defer s.Close()
		for s.Next() {
			writeRecord(a.stdout, a.stderr, s.Value(), false)
		}
		logsDone <- s.Err()
	}()
	// Let the daemon see the log request before the app can print.
	select {
	case <-opened:
	case <-time.After(2 * time.Second):
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		ints := 0
		for {
			select {
			case <-ctx.Done():
				return
			case sig := <-sigs:
				name := "TERM"
				if sig == syscall.SIGINT {
					ints++
					name = "INT"
					if ints > 1 {
						name = "KILL"
					}
				}
				if _, err := c.InstanceKill(ctx, id, name); err != nil && ctx.Err() == nil {
					fmt.Fprintf(a.stderr, "Error: forward SIG%s: %s\n", name, err)
				}
			}
		}
	}()

	removeAfter := func() {
		if rm {
			if err := c.InstanceRemove(context.WithoutCancel(a.ctx), id, true); err != nil {
				fmt.Fprintf(a.stderr, "Error: remove %s: %s\n", shortID(id), err)
			}
		}
	}
	if start {
		if _, err := c.InstanceStart(a.ctx, id); err != nil {
			cancel()
			if discard {
				a.discard(c, id)
			} else {
				removeAfter()
			}
			return err
		}
	}
	w, err := c.InstanceWait(a.ctx, id)
	if err != nil {
		return err
	}
	// The follow stream ends once all output is sent.
	select {
	case err := <-logsDone:
		if err != nil && ctx.Err() == nil {
			fmt.Fprintf(a.stderr, "Error: logs: %s\n", err)
		}
	case <-time.After(10 * time.Second):
	}
	removeAfter()
	if w.Error != "" {
		return errors.New(w.Error)
	}
	if w.ExitCode != 0 {
		return exitCode(w.ExitCode)
	}
	return nil
}

// writeRecord writes a log record to the stream it came from, as a line.
func writeRecord(stdout, stderr io.Writer, rec api.LogRecord, timestamps bool) {
	w := stdout
	if rec.Stream == "stderr" {
		w = stderr
	}
	s := rec.Log
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	if timestamps {
		s = rec.Time.UTC().Format(time.RFC3339Nano) + " " + s
	}
	_, _ = io.WriteString(w, s)
}

func (a *app) startCommand() *cobra.Command {
	var attach bool
	cmd := &cobra.Command{
		Use:   "start [-a] NAME...",
		Short: "Start instances",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if attach {
				if len(args) != 1 {
					return fmt.Errorf("flick start -a takes one instance, got %d", len(args))
				}
				c, err := a.client()
				if err != nil {
					return err
				}
				in, err := c.InstanceInspect(a.ctx, args[0])
				if err != nil {
					return err
				}
				running := in.State == api.StateRunning || in.State == api.StateStarting
				return a.attach(c, in.ID, 0, false, !running, false)
			}
			return a.forEach(args, true, func(c *api.Client, n string) error {
				_, err := c.InstanceStart(a.ctx, n)
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&attach, "attach", "a", false, "attach to the output and wait, as run does")
	return cmd
}

func (a *app) stopCommand() *cobra.Command {
	return a.timedCommand("stop [-t N] NAME...", "Stop instances: the stop signal, then KILL after the timeout",
		func(c *api.Client, n string, t int) error {
			_, err := c.InstanceStop(a.ctx, n, t)
			return err
		})
}

func (a *app) standbyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "standby NAME...",
		Short: "Save running instances, memory and devices, and pause their VMs until resume (flickd ends them after --hot-standby)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.forEach(args, true, func(c *api.Client, n string) error {
				_, err := c.InstanceStandby(a.ctx, n)
				return err
			})
		},
	}
}

func (a *app) resumeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "resume NAME...",
		Short: "Resume standing-by instances from their saved state",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.forEach(args, true, func(c *api.Client, n string) error {
				_, err := c.InstanceResume(a.ctx, n)
				return err
			})
		},
	}
}

func (a *app) restartCommand() *cobra.Command {
	return a.timedCommand("restart [-t N] NAME...", "Restart instances",
		func(c *api.Client, n string, t int) error {
			_, err := c.InstanceRestart(a.ctx, n, t)
			return err
		})
}

// timedCommand is a command that stops instances with a -t timeout before
// it kills them; t is -1 when the user did not give one, which means the
// instance's own stop timeout.
func (a *app) timedCommand(use, short string, op func(c *api.Client, n string, t int) error) *cobra.Command {
	var timeout int
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t := -1
			if cmd.Flags().Changed("time") {
				t = timeout
			}
			return a.forEach(args, true, func(c *api.Client, n string) error { return op(c, n, t) })
		},
	}
	cmd.Flags().IntVarP(&timeout, "time", "t", 10, "seconds to wait before killing (default the instance's stop timeout)")
	return cmd
}

func (a *app) killCommand() *cobra.Command {
	var sig string
	cmd := &cobra.Command{
		Use:   "kill [-s SIG] NAME...",
		Short: "Send a signal to the app of instances",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.forEach(args, true, func(c *api.Client, n string) error {
				_, err := c.InstanceKill(a.ctx, n, sig)
				return err
			})
		},
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "KILL", "signal name or number")
	return cmd
}

func (a *app) rmCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] NAME...",
		Short: "Remove instances",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.forEach(args, true, func(c *api.Client, n string) error {
				return c.InstanceRemove(a.ctx, n, force)
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill the instance first if it runs")
	return cmd
}

func (a *app) waitCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "wait NAME...",
		Short: "Wait until instances stop and print their exit codes",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.forEach(args, false, func(c *api.Client, n string) error {
				w, err := c.InstanceWait(a.ctx, n)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, w.ExitCode)
				return nil
			})
		},
	}
}

// command is the COMMAND column: the effective entrypoint and cmd, quoted
// and cut to 20 characters as docker does.
func command(in api.Instance, img *api.ImageConfig) string {
	ep, cmd := in.Config.Entrypoint, in.Config.Cmd
	if img != nil {
		if ep == nil {
			ep = img.Entrypoint
			if cmd == nil {
				cmd = img.Cmd
			}
		}
	}
	s := strings.Join(append(append([]string{}, ep...), cmd...), " ")
	if r := []rune(s); len(r) > 20 {
		s = string(r[:19]) + "…"
	}
	return strconv.Quote(s)
}

func (a *app) psCommand() *cobra.Command {
	var all, quiet, asJSON, size bool
	cmd := &cobra.Command{
		Use:   "ps [-a] [-q] [-s] [--json]",
		Short: "List instances",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.InstanceList(a.ctx, all, size)
			if err != nil {
				return err
			}
			if list == nil {
				list = []api.Instance{}
			}
			if asJSON {
				return printJSON(a.stdout, list)
			}
			if quiet {
				for _, in := range list {
					fmt.Fprintln(a.stdout, shortID(in.ID))
				}
				return nil
			}
			configs := map[string]*api.ImageConfig{}
			if len(list) > 0 {
				// Best effort: without the images, COMMAND shows the overrides only.
				if imgs, err := c.ImageList(a.ctx); err == nil {
					for i := range imgs {
						configs[imgs[i].Digest] = &imgs[i].Config
					}
				}
			}
			now := time.Now()
			tw := tabwriter.NewWriter(a.stdout, 0, 8, 3, ' ', 0)
			head := "ID\tNAME\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tBOOT\tIP\tPORTS"
			if size {
				head += "\tSIZE"
			}
			fmt.Fprintln(tw, head)
			for _, in := range list {
				boot := "-"
				if in.BootMS > 0 {
					boot = ms(in.BootMS) + " ms"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", shortID(in.ID), in.Name, in.Image,
					command(in, configs[in.ImageID]), ago(now, in.Created), status(now, in), boot,
					orDash(in.IP), orDash(portsLine(in.Ports)))
				if size {
					fmt.Fprintf(tw, "\t%s", humanSize(in.SizeBytes))
				}
				fmt.Fprintln(tw)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "show all instances (default only running ones)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only ids")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&size, "size", "s", false, "show the disk each instance's own files take (writable layer, standby save, logs)")
	return cmd
}

// parseTail parses --tail: "all" or a count.
func parseTail(s string) (int, error) {
	if s == "" || s == "all" {
		return -1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid --tail %q: want a number of lines or all", s)
	}
	return n, nil
}

func (a *app) logsCommand() *cobra.Command {
	var follow, timestamps, asJSON bool
	var tail string
	cmd := &cobra.Command{
		Use:   "logs [-f] [--tail N] [-t] NAME",
		Short: "Show the output of an instance's app",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseTail(tail)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			s, err := c.InstanceLogs(a.ctx, args[0], api.LogsOptions{Follow: follow, Tail: n})
			if err != nil {
				return err
			}
			defer s.Close()
			for s.Next() {
				if asJSON {
					if err := printJSONLine(a.stdout, s.Value()); err != nil {
						return err
					}
					continue
				}
				writeRecord(a.stdout, a.stderr, s.Value(), timestamps)
			}
			if err := s.Err(); err != nil && a.ctx.Err() == nil {
				return err
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until the instance stops")
	cmd.Flags().StringVarP(&tail, "tail", "n", "all", "number of lines to show from the end")
	cmd.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "show timestamps")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the records as JSON lines")
	return cmd
}

func printJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func (a *app) consoleCommand() *cobra.Command {
	var tail string
	cmd := &cobra.Command{
		Use:   "console NAME [--tail N]",
		Short: "Show the kernel and VMM console of an instance",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseTail(tail)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			r, err := c.InstanceConsole(a.ctx, args[0], n)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(a.stdout, r)
			return err
		},
	}
	cmd.Flags().StringVarP(&tail, "tail", "n", "all", "number of lines to show from the end")
	return cmd
}

func (a *app) inspectCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect NAME... [--json]",
		Short: "Show instances (or images) as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			var out []any
			var errs []error
			for _, n := range args {
				in, err := c.InstanceInspect(a.ctx, n)
				if err == nil {
					out = append(out, in)
					continue
				}
				if !api.IsNotFound(err) {
					errs = append(errs, err)
					continue
				}
				img, ierr := c.ImageInspect(a.ctx, n)
				if ierr != nil {
					if api.IsNotFound(ierr) {
						errs = append(errs, fmt.Errorf("no such instance or image: %s", n))
					} else {
						errs = append(errs, ierr)
					}
					continue
				}
				out = append(out, img)
			}
			switch {
			case len(args) == 1 && len(out) == 1:
				if err := printJSON(a.stdout, out[0]); err != nil {
					return err
				}
			case len(args) > 1:
				if out == nil {
					out = []any{}
				}
				if err := printJSON(a.stdout, out); err != nil {
					return err
				}
			}
			if len(errs) == 1 {
				return errs[0]
			}
			for _, err := range errs {
				fmt.Fprintf(a.stderr, "Error: %s\n", err)
			}
			if len(errs) > 0 {
				return exitCode(ExitFailure)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", true, "print JSON (the only format)")
	return cmd
}

// discard removes an instance that run created but could not start.
func (a *app) discard(c *api.Client, id string) {
	if err := c.InstanceRemove(context.WithoutCancel(a.ctx), id, true); err != nil {
		fmt.Fprintf(a.stderr, "Error: remove %s: %s\n", shortID(id), err)
	}
}

func (a *app) forkCommand() *cobra.Command {
	var n int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fork [-n N] [--json] NAME",
		Short: "Clone a running instance: each clone runs on from its state, sharing its memory copy-on-write, with an identity of its own",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			clones, err := c.InstanceFork(a.ctx, args[0], n)
			if asJSON && clones != nil {
				if perr := printJSON(a.stdout, clones); perr != nil {
					return perr
				}
			} else {
				for _, in := range clones {
					if in.State == api.StateRunning {
						fmt.Fprintf(a.stdout, "%s\t%s\t%s ms\n", in.Name, orDash(in.IP), ms(in.BootMS))
					}
				}
			}
			return err
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 1, "number of clones")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the clones as JSON")
	return cmd
}
