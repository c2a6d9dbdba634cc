package cli

import (
	"context"
	"fmt"
	"math"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flick-vm/flick/api"
)

// Extra rows of the bench table besides the boot phases.
const (
	benchTotal    = "total"    // boot_ms
	benchOverhead = "overhead" // boot_ms - vmm - kernel - init - app - ready: flick's own cost
)

// stats summarises samples in milliseconds.
type stats struct {
	Min float64 `json:"min"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	Max float64 `json:"max"`
}

// summarize computes min, max and the nearest-rank percentiles of samples.
func summarize(samples []float64) stats {
	if len(samples) == 0 {
		return stats{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return stats{Min: s[0], P50: percentile(s, 50), P90: percentile(s, 90), Max: s[len(s)-1]}
}

// percentile is the nearest-rank p-th percentile of sorted: the smallest
// sample such that p% of the samples are at or below it.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// benchResult is what bench --json prints.
type benchResult struct {
	N        int              `json:"n"`
	Image    string           `json:"image"`
	Accel    string           `json:"accel"`
	Layer    string           `json:"writable_layer"`
	Warm     bool             `json:"warm"`
	Phases   map[string]stats `json:"phases"`
	RSSBytes int64            `json:"rss_bytes"`
	// SpareVMMs counts the cold boots that ran in a VMM spawned ahead of
	// them (flickd --spare-vmms).
	SpareVMMs int `json:"spare_vmms"`
}

func (a *app) benchCommand() *cobra.Command {
	var f createFlags
	var n int
	var asJSON, agent, warm bool
	var execCmd []string
	var interval time.Duration
	var cpSize string
	cmd := &cobra.Command{
		Use:   "bench IMAGE [OPTIONS] [-- CMD...]",
		Short: "Measure cold boots, or with --agent the guest agent",
		Long: `Measure cold boots: create, start and remove an instance n times, and
print min/p50/p90/max of every boot phase. With --warm, measure starts from
the image's boot snapshot instead, after one start that makes sure it exists.

With --agent, boot one instance instead (give it a command that keeps it
running, after --), time n round trips of an exec of --exec-cmd through the
API, then copy a file of --cp-size in and out, and remove the instance.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 1 {
				return fmt.Errorf("invalid -n %d: want 1 or more boots", n)
			}
			req, err := f.request(args[0], args[1:])
			if err != nil {
				return err
			}
			if agent {
				size, err := parseMemory(cpSize)
				if err != nil {
					return fmt.Errorf("--cp-size: %w", err)
				}
				f.defaultLayer(&req, true)
				// No boot snapshot: it would start zygotes in the
				// background, which would take CPU from the copies.
				req.ColdBoot = true
				c, err := a.client()
				if err != nil {
					return err
				}
				return a.benchAgent(c, req, n, execCmd, int64(size)<<20, asJSON)
			}
			// Bench instances are thrown away like run --rm ones, and
			// get the same default writable layer; --layer disk measures
			// the other.
			f.defaultLayer(&req, true)
			req.ColdBoot = !warm
			c, err := a.client()
			if err != nil {
				return err
			}
			if warm {
				// The first start of an image takes its snapshot.
				if _, err := a.bench(c, req, 1, 0); err != nil {
					return err
				}
			}
			res, err := a.bench(c, req, n, interval)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, res)
			}
			kind := "cold boots"
			if warm {
				kind = "starts from the boot snapshot"
			}
			spares := ""
			if !warm {
				spares = fmt.Sprintf("; in a spare VMM: %d", res.SpareVMMs)
			}
			fmt.Fprintf(a.stdout, "%d %s of %s (writable layer: %s%s)\n\n", res.N, kind, res.Image, res.Layer, spares)
			tw := tabwriter.NewWriter(a.stdout, 0, 8, 2, ' ', 0)
			fmt.Fprintf(tw, "PHASE\t%8s\t%8s\t%8s\t%8s\n", "MIN", "P50", "P90", "MAX")
			var names []string
			for name := range res.Phases {
				if name != benchTotal && name != benchOverhead {
					names = append(names, name)
				}
			}
			names = append(orderPhases(names), benchTotal, benchOverhead)
			for _, name := range names {
				s := res.Phases[name]
				fmt.Fprintf(tw, "%s\t%8.1f\t%8.1f\t%8.1f\t%8.1f\n", name, s.Min, s.P50, s.P90, s.Max)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "\nidle VM RSS: %d MiB\n", (res.RSSBytes+(1<<19))>>20)
			fmt.Fprintf(a.stdout, "accel: %s\n", res.Accel)
			return nil
		},
	}
	// Flags may follow the image (flick bench IMAGE -n 20 --json); a
	// command to run instead of the image's goes after "--".
	f.register(cmd.Flags(), false)
	cmd.Flags().IntVarP(&n, "count", "n", 20, "number of cold boots (of execs with --agent)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&warm, "warm", false, "measure starts from the image's boot snapshot instead of cold boots")
	cmd.Flags().DurationVar(&interval, "interval", 0, "pause between starts, e.g. 2s, so that the daemon's zygote pool refills (--warm)")
	cmd.Flags().BoolVar(&agent, "agent", false, "measure exec round trips and cp throughput of one instance instead of cold boots")
	cmd.Flags().StringArrayVar(&execCmd, "exec-cmd", []string{"true"}, "with --agent, the command to exec (repeat for arguments)")
	cmd.Flags().StringVar(&cpSize, "cp-size", "100M", "with --agent, the size of the file copied in and out")
	return cmd
}

// orderPhases sorts phase names as phaseNames does.
func orderPhases(names []string) []string {
	m := make(map[string]float64, len(names))
	for _, n := range names {
		m[n] = 0
	}
	return phaseNames(m)
}

// bench boots req n times and collects the phase timings.
func (a *app) bench(c *api.Client, req api.CreateRequest, n int, interval time.Duration) (benchResult, error) {
	res := benchResult{N: n, Image: req.Image, Layer: req.WritableLayer, Warm: !req.ColdBoot}
	samples := map[string][]float64{}
	progress := isTerminal(a.stderr)
	for i := range n {
		if i > 0 && interval > 0 {
			select {
			case <-time.After(interval):
			case <-a.ctx.Done():
				return res, a.ctx.Err()
			}
		}
		var in api.Instance
		var err error
		if i == 0 {
			in, err = a.create(c, req) // pulls if needed
		} else {
			in, err = c.InstanceCreate(a.ctx, req)
		}
		if err != nil {
			return res, fmt.Errorf("boot %d: %w", i+1, err)
		}
		started, err := c.InstanceStart(a.ctx, in.ID)
		if err == nil && i == 0 {
			// The idle VM's memory, after its first boot.
			var got api.Instance
			got, err = c.InstanceInspect(a.ctx, in.ID)
			res.RSSBytes = max(got.RSSBytes, started.RSSBytes)
		}
		rmErr := c.InstanceRemove(context.WithoutCancel(a.ctx), in.ID, true)
		if err != nil {
			return res, fmt.Errorf("boot %d: %w", i+1, err)
		}
		if rmErr != nil {
			return res, fmt.Errorf("boot %d: remove: %w", i+1, rmErr)
		}
		if res.Accel == "" {
			res.Accel = started.Accel
		}
		if started.SpareVMM {
			res.SpareVMMs++
		}
		for name, v := range started.Phases {
			samples[name] = append(samples[name], v)
		}
		samples[benchTotal] = append(samples[benchTotal], started.BootMS)
		p := started.Phases
		samples[benchOverhead] = append(samples[benchOverhead],
			started.BootMS-p[api.PhaseVMM]-p[api.PhaseRestore]-p[api.PhaseKernel]-p[api.PhaseSnapshot]-p[api.PhaseInit]-p[api.PhaseApp]-p[api.PhaseReady])
		if progress {
			fmt.Fprintf(a.stderr, "\rboot %d/%d: %s ms ", i+1, n, ms(started.BootMS))
		}
	}
	if progress {
		fmt.Fprint(a.stderr, "\r\x1b[2K")
	}
	res.Phases = make(map[string]stats, len(samples))
	for name, s := range samples {
		res.Phases[name] = summarize(s)
	}
	return res, nil
}
