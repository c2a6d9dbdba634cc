package main

import "testing"

func TestLogFormat(t *testing.T) {
	for _, tc := range []struct {
		v     int64
		width int
		pad   byte
		want  string
	}{
		{0, 5, ' ', "    0"},
		{12345, 5, ' ', "12345"},
		{123456, 5, ' ', "123456"},
		{42, 6, '0', "000042"},
	} {
		if got := string(appendPadded(nil, tc.v, tc.width, tc.pad)); got != tc.want {
			t.Errorf("appendPadded(%d, %d, %q) = %q, want %q", tc.v, tc.width, tc.pad, got, tc.want)
		}
	}
	for ns, want := range map[int64]string{408546635: "408.546", 5000: "0.005", 1e9: "1000.000"} {
		if got := msString(ns); got != want {
			t.Errorf("msString(%d) = %q, want %q", ns, got, want)
		}
	}
}
