package cli

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/network/portspec"
)

// parseMemory parses a --memory value into MiB: a number with a k, m or g
// suffix (also kb, kib, mi, mib, ...), or a plain number of bytes.
func parseMemory(s string) (int, error) {
	orig := s
	s = strings.ToLower(strings.TrimSpace(s))
	unit := int64(1)
	for _, u := range []struct {
		suffixes []string
		mult     int64
	}{
		{[]string{"kib", "kb", "ki", "k"}, 1 << 10},
		{[]string{"mib", "mb", "mi", "m"}, 1 << 20},
		{[]string{"gib", "gb", "gi", "g"}, 1 << 30},
		{[]string{"b"}, 1},
	} {
		found := false
		for _, suf := range u.suffixes {
			if strings.HasSuffix(s, suf) {
				s, unit, found = strings.TrimSuffix(s, suf), u.mult, true
				break
			}
		}
		if found {
			break
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || n <= 0 || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, fmt.Errorf("invalid memory size %q: want a size such as 256M, 1g or 512MiB", orig)
	}
	bytes := n * float64(unit)
	if bytes < 1<<20 {
		return 0, fmt.Errorf("invalid memory size %q: less than 1 MiB (a plain number is bytes; did you mean %sM?)", orig, strings.TrimSpace(orig))
	}
	mib := math.Ceil(bytes / (1 << 20))
	if mib > math.MaxInt32 {
		return 0, fmt.Errorf("invalid memory size %q: too large", orig)
	}
	return int(mib), nil
}

// parseEnvFile reads a file of KEY=VALUE lines as docker does: blank lines
// and lines starting with # are skipped, the value is taken literally, and
// a line with only KEY takes KEY's value from flick's environment (and is
// dropped if that is unset).
func parseEnvFile(r io.Reader, name string) ([]string, error) {
	var env []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimLeft(sc.Text(), " \t")
		if n == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, ok, err := envVar(line)
		if err != nil {
			return nil, fmt.Errorf("env file %s line %d: %w", name, n, err)
		}
		if ok {
			env = append(env, e)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("env file %s: %w", name, err)
	}
	return env, nil
}

// envVar checks one -e value; KEY alone takes flick's own value of KEY, and
// ok is false if it has none.
func envVar(s string) (e string, ok bool, err error) {
	k, _, hasValue := strings.Cut(s, "=")
	if k == "" {
		return "", false, fmt.Errorf("invalid environment variable %q: no name", s)
	}
	if strings.ContainsAny(k, " \t") {
		return "", false, fmt.Errorf("invalid environment variable %q: the name contains whitespace", s)
	}
	if hasValue {
		return s, true, nil
	}
	v, set := os.LookupEnv(k)
	if !set {
		return "", false, nil
	}
	return k + "=" + v, true, nil
}

// shortID shortens an instance id or a digest's hex to 12 characters.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// shortDigest returns sha256:<12 hex>.
func shortDigest(d string) string {
	algo, hex, ok := strings.Cut(d, ":")
	if !ok {
		return shortID(d)
	}
	return algo + ":" + shortID(hex)
}

// humanDuration says how long d is, in words, as docker does.
func humanDuration(d time.Duration) string {
	s := int(d.Seconds())
	switch {
	case s < 1:
		return "Less than a second"
	case s == 1:
		return "1 second"
	case s < 60:
		return fmt.Sprintf("%d seconds", s)
	}
	m := int(d.Minutes())
	switch {
	case m == 1:
		return "About a minute"
	case m < 60:
		return fmt.Sprintf("%d minutes", m)
	}
	h := int(math.Round(d.Hours()))
	switch {
	case h == 1:
		return "About an hour"
	case h < 48:
		return fmt.Sprintf("%d hours", h)
	case h < 24*7*2:
		return fmt.Sprintf("%d days", h/24)
	case h < 24*30*2:
		return fmt.Sprintf("%d weeks", h/24/7)
	case h < 24*365*2:
		return fmt.Sprintf("%d months", h/24/30)
	}
	return fmt.Sprintf("%d years", h/24/365)
}

// ago says how long ago t was, "3 minutes ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return humanDuration(now.Sub(t)) + " ago"
}

// humanSize writes a byte count with decimal units, as docker does.
func humanSize(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	f := float64(n)
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	return fmt.Sprintf("%.3g%s", f, units[i])
}

// status is the STATUS column of ps.
func status(now time.Time, in api.Instance) string {
	switch in.State {
	case api.StateCreated:
		return "Created"
	case api.StateStarting:
		return "Starting"
	case api.StateRunning:
		if in.Started != nil {
			return "Up " + humanDuration(now.Sub(*in.Started))
		}
		return "Up"
	case api.StateStopping:
		return "Stopping"
	case api.StateExited:
		code := 0
		if in.ExitCode != nil {
			code = *in.ExitCode
		}
		s := fmt.Sprintf("Exited (%d)", code)
		if in.Finished != nil {
			s += " " + ago(now, *in.Finished)
		}
		return s
	case api.StateFailed:
		first, _, _ := strings.Cut(strings.TrimSpace(in.Error), "\n")
		if first == "" {
			return "Failed"
		}
		return "Failed: " + first
	}
	return in.State
}

// ms formats milliseconds: one decimal below 10, none above.
func ms(v float64) string {
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// phaseNames returns the phases of m: api.Phases in order, then any others.
func phaseNames(m map[string]float64) []string {
	var out []string
	known := map[string]bool{}
	for _, p := range api.Phases {
		known[p] = true
		if _, ok := m[p]; ok {
			out = append(out, p)
		}
	}
	var extra []string
	for p := range m {
		if !known[p] {
			extra = append(extra, p)
		}
	}
	slices.Sort(extra)
	return append(out, extra...)
}

// bootLine is "312 ms   (image 0.1 · disk 2.3 · ...)".
func bootLine(in api.Instance) string {
	s := ms(in.BootMS) + " ms"
	var parts []string
	for _, p := range phaseNames(in.Phases) {
		parts = append(parts, p+" "+ms(in.Phases[p]))
	}
	if len(parts) > 0 {
		s += "   (" + strings.Join(parts, " · ") + ")"
	}
	return s
}

// imageLine is the reference with the short digest, ref@sha256:fb3e5f0c1a2b.
func imageLine(in api.Instance) string {
	if in.ImageID == "" || strings.Contains(in.Image, "@") {
		return in.Image
	}
	return in.Image + "@" + shortDigest(in.ImageID)
}

// printInstance writes the summary of a started instance, as run -d shows it.
func printInstance(w io.Writer, in api.Instance) {
	mem, cpus := in.Config.MemoryMiB, in.Config.CPUs
	if mem == 0 {
		mem = 128
	}
	if cpus == 0 {
		cpus = 1
	}
	vcpu := "vCPU"
	if cpus > 1 {
		vcpu = "vCPUs"
	}
	fmt.Fprintf(w, "name:       %s\n", in.Name)
	fmt.Fprintf(w, "id:         %s\n", shortID(in.ID))
	fmt.Fprintf(w, "state:      %s\n", in.State)
	fmt.Fprintf(w, "image:      %s\n", imageLine(in))
	if in.State != api.StateCreated {
		fmt.Fprintf(w, "boot time:  %s\n", bootLine(in))
	}
	if in.IP != "" {
		fmt.Fprintf(w, "ip:         %s\n", in.IP)
	}
	if len(in.Ports) > 0 {
		fmt.Fprintf(w, "ports:      %s\n", portsLine(in.Ports))
	}
	fmt.Fprintf(w, "memory:     %d MiB · %d %s\n", mem, cpus, vcpu)
	if in.Error != "" {
		fmt.Fprintf(w, "error:      %s\n", in.Error)
	}
}

// portsLine shows published ports as Docker does: 0.0.0.0:8080->80/tcp, ...
func portsLine(ps []api.PortMapping) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = portspec.Format(p)
	}
	return strings.Join(parts, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
