package main

import (
	"testing"

	"github.com/flick-vm/flick/internal/guest/wire"
)

func TestSameLink(t *testing.T) {
	held := &wire.Net{MAC: "02:fc:0a:4d:00:03", Address: "10.77.0.3/16", Gateway: "10.77.0.1", DNS: []string{"10.77.0.1"}, Search: "flick.internal"}
	with := func(f func(n *wire.Net)) *wire.Net {
		n := *held
		f(&n)
		return &n
	}
	tests := []struct {
		name string
		a, b *wire.Net
		want bool
	}{
		{name: "the held address", a: with(func(*wire.Net) {}), b: held, want: true},
		{name: "other DNS and search", a: with(func(n *wire.Net) { n.DNS, n.Search = []string{"9.9.9.9"}, "x" }), b: held, want: true},
		{name: "other address", a: with(func(n *wire.Net) { n.Address = "10.77.0.4/16" }), b: held},
		{name: "other prefix", a: with(func(n *wire.Net) { n.Address = "10.77.0.3/24" }), b: held},
		{name: "other MAC", a: with(func(n *wire.Net) { n.MAC = "02:fc:0a:4d:00:04" }), b: held},
		{name: "other gateway", a: with(func(n *wire.Net) { n.Gateway = "10.77.0.254" }), b: held},
		{name: "nothing rehearsed", a: held, b: nil},
		{name: "no network", a: nil, b: held},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameLink(tt.a, tt.b); got != tt.want {
				t.Errorf("sameLink = %v, want %v", got, tt.want)
			}
		})
	}
}
