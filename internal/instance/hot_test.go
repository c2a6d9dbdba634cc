package instance

import "testing"

func TestParseMeminfo(t *testing.T) {
	for _, tc := range []struct {
		name        string
		in          string
		total, free int64
		ok          bool
	}{
		{"debian 12", "MemTotal:       24684132 kB\nMemFree:        22151436 kB\nMemAvailable:   22578440 kB\nBuffers:          123 kB\n", 24684132, 22578440, true},
		{"no MemAvailable (before Linux 3.14)", "MemTotal:       1000 kB\nMemFree:        500 kB\n", 1000, 0, false},
		{"garbage", "MemTotal: lots\nMemAvailable:\n", 0, 0, false},
		{"empty", "", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			total, avail, ok := parseMeminfo([]byte(tc.in))
			if total != tc.total || avail != tc.free || ok != tc.ok {
				t.Errorf("parseMeminfo = %d, %d, %v; want %d, %d, %v", total, avail, ok, tc.total, tc.free, tc.ok)
			}
		})
	}
}
