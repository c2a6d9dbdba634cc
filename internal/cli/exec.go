package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/api"
)

func (a *app) execCommand() *cobra.Command {
	var (
		interactive, tty bool
		env              []string
		workdir, user    string
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] INSTANCE COMMAND [ARG...]",
		Short: "Run a command in a running instance",
		Long: `Run a command in a running instance, through its guest agent. The
command runs in the app's root with the app's environment, user and working
directory unless flags say otherwise, and flick exits with its exit code
(127 when it is not found, 126 when it cannot be executed).`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.ExecRequest{Cmd: args[1:], WorkingDir: workdir, User: user, TTY: tty, Stdin: interactive}
			for _, e := range env {
				v, ok, err := envVar(e)
				if err != nil {
					return err
				}
				if ok {
					req.Env = append(req.Env, v)
				}
			}
			return a.exec(args[0], req)
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "keep stdin open and send it to the command")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "give the command a terminal (its size follows yours)")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "set an environment variable, K=V (K alone takes flick's own value)")
	cmd.Flags().StringVarP(&workdir, "workdir", "w", "", "working directory (default the app's)")
	cmd.Flags().StringVarP(&user, "user", "u", "", "user (name, uid or uid:gid; default the app's)")
	return cmd
}

func (a *app) exec(name string, req api.ExecRequest) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	stdin := os.Stdin
	stdinTTY := isTerminal(stdin)
	if req.TTY && req.Stdin && !stdinTTY {
		return errors.New("the input device is not a TTY: leave out -t, or run flick from a terminal")
	}
	if req.TTY {
		if ws, err := unix.IoctlGetWinsize(int(termFD(stdin, a.stdout)), unix.TIOCGWINSZ); err == nil {
			req.Rows, req.Cols = ws.Row, ws.Col
		}
	}
	s, err := c.Exec(a.ctx, name, req)
	if err != nil {
		return err
	}
	defer s.Close()

	if req.TTY && req.Stdin {
		restore, err := makeRaw(int(stdin.Fd()))
		if err != nil {
			return fmt.Errorf("terminal: %w", err)
		}
		defer restore()
	}
	sigs := make(chan os.Signal, 8)
	if req.TTY {
		// Keys reach the guest as bytes; only size changes are signals.
		signal.Notify(sigs, syscall.SIGWINCH)
	} else {
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	}
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGWINCH {
				if ws, err := unix.IoctlGetWinsize(int(termFD(stdin, a.stdout)), unix.TIOCGWINSZ); err == nil {
					_ = s.Resize(ws.Row, ws.Col)
				}
				continue
			}
			_ = s.Signal(int(sig.(syscall.Signal)))
		}
	}()
	if req.Stdin {
		go func() {
			buf := make([]byte, 32*1024)
			for {
				n, err := stdin.Read(buf)
				if n > 0 {
					if s.Stdin(buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					_ = s.CloseStdin()
					return
				}
			}
		}()
	}
	stdout, stderr := a.stdout, a.stderr
	if req.TTY && req.Stdin {
		// The terminal is raw: line ends need their carriage returns,
		// which the guest's terminal has already added.
		stderr = stdout
	}
	exit, err := s.Run(stdout, stderr)
	if err != nil {
		return err
	}
	if exit.ExitCode != 0 {
		return exitCode(exit.ExitCode)
	}
	return nil
}

// termFD is the descriptor to ask for the terminal's size: stdin if it is
// a terminal, else stdout.
func termFD(stdin *os.File, stdout io.Writer) uintptr {
	if isTerminal(stdin) {
		return stdin.Fd()
	}
	if f, ok := stdout.(*os.File); ok {
		return f.Fd()
	}
	return stdin.Fd()
}

// makeRaw puts the terminal fd in raw mode, as cfmakeraw does, and returns
// the function that restores it.
func makeRaw(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
