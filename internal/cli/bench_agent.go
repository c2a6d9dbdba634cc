package cli

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/tarx"
)

// agentBenchResult is what bench --agent --json prints.
type agentBenchResult struct {
	N     int    `json:"n"`
	Image string `json:"image"`
	Accel string `json:"accel"`
	// BootMS is the instance's boot, AgentMS the time from its start
	// returning to the first exec that answered.
	BootMS  float64 `json:"boot_ms"`
	AgentMS float64 `json:"agent_ms"`
	// Exec is the round trip of one exec through the API: dial, request,
	// process start and exit, exit status back.
	Exec      stats   `json:"exec_ms"`
	CpBytes   int64   `json:"cp_bytes"`
	CpInMiBs  float64 `json:"cp_in_mib_per_s"`
	CpOutMiBs float64 `json:"cp_out_mib_per_s"`
}

func (a *app) benchAgent(c *api.Client, req api.CreateRequest, n int, execCmd []string, size int64, asJSON bool) error {
	if req.MemoryMiB == 0 {
		// The copied file lives in the guest: room for it in a memory
		// layer, which gets half of the RAM.
		req.MemoryMiB = max(512, int(2*size>>20)+128)
	}
	in, err := a.create(c, req)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.InstanceRemove(context.WithoutCancel(a.ctx), in.ID, true); err != nil {
			fmt.Fprintf(a.stderr, "Error: remove %s: %s\n", shortID(in.ID), err)
		}
	}()
	started, err := c.InstanceStart(a.ctx, in.ID)
	if err != nil {
		return err
	}
	res := agentBenchResult{N: n, Image: req.Image, Accel: started.Accel, BootMS: started.BootMS, CpBytes: size}
	execOnce := func() (float64, error) {
		ctx, cancel := context.WithTimeout(a.ctx, time.Minute)
		defer cancel()
		t0 := time.Now()
		_, stderr, exit, err := c.ExecOutput(ctx, in.ID, api.ExecRequest{Cmd: execCmd})
		d := float64(time.Since(t0).Microseconds()) / 1000
		if err == nil && exit.ExitCode != 0 {
			err = fmt.Errorf("exec %q: exit %d: %s", execCmd, exit.ExitCode, stderr)
		}
		return d, err
	}
	t0 := time.Now()
	for {
		_, err := execOnce()
		if err == nil {
			break
		}
		if !api.IsUnavailable(err) || time.Since(t0) > time.Minute {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.AgentMS = float64(time.Since(t0).Microseconds()) / 1000
	samples := make([]float64, 0, n)
	for range n {
		d, err := execOnce()
		if err != nil {
			return err
		}
		samples = append(samples, d)
	}
	res.Exec = summarize(samples)

	if size > 0 {
		dir, err := os.MkdirTemp("", "flick-bench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		file := filepath.Join(dir, "bench.bin")
		if err := writeRandom(file, size); err != nil {
			return err
		}
		t0 := time.Now()
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(tarx.Create(pw, file, "bench.bin")) }()
		err = c.ArchivePut(a.ctx, in.ID, "/", pr)
		pr.CloseWithError(err)
		if err != nil {
			return fmt.Errorf("cp in: %w", err)
		}
		res.CpInMiBs = float64(size) / (1 << 20) / time.Since(t0).Seconds()

		t0 = time.Now()
		_, rc, err := c.ArchiveGet(a.ctx, in.ID, "/bench.bin")
		if err != nil {
			return fmt.Errorf("cp out: %w", err)
		}
		got, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil || got < size {
			return fmt.Errorf("cp out: %d bytes of a tar of %d: %v", got, size, err)
		}
		res.CpOutMiBs = float64(size) / (1 << 20) / time.Since(t0).Seconds()
	}

	if asJSON {
		return printJSON(a.stdout, res)
	}
	fmt.Fprintf(a.stdout, "guest agent of %s (boot %s ms, agent answering %s ms later)\n\n", res.Image, ms(res.BootMS), ms(res.AgentMS))
	tw := tabwriter.NewWriter(a.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "\t%8s\t%8s\t%8s\t%8s\n", "MIN", "P50", "P90", "MAX")
	fmt.Fprintf(tw, "exec %v (%d, ms)\t%8.1f\t%8.1f\t%8.1f\t%8.1f\n", execCmd, n, res.Exec.Min, res.Exec.P50, res.Exec.P90, res.Exec.Max)
	if err := tw.Flush(); err != nil {
		return err
	}
	if size > 0 {
		fmt.Fprintf(a.stdout, "\ncp of %d MiB: in %.1f MiB/s, out %.1f MiB/s\n", size>>20, res.CpInMiBs, res.CpOutMiBs)
	}
	fmt.Fprintf(a.stdout, "accel: %s\n", res.Accel)
	return nil
}

// writeRandom writes size bytes of pseudo-random data to file: nothing on
// the way can compress it.
func writeRandom(file string, size int64) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	r := rand.NewChaCha8([32]byte{'f', 'l', 'i', 'c', 'k'})
	if _, err := io.CopyN(f, r, size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
