package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A log in the shape QEMU 7.2 writes with -d in_asm: early code at
// physical addresses, the kernel, then PID 1 from its entry point on.
const testLog = `----------------
IN: 
0x01000000:  fa                       cli      
0x01000001:  fc                       cld      

----------------
IN: 
0xffffffff81000010:  48 89 e5             movq     %rsp, %rbp
0xffffffff81000013:  c3                   retq     

----------------
IN: 
0xffffffff81000100:  90                   nop      

----------------
IN: 
0x00401000:  e9 00 00 00 00           jmp      0x401005

----------------
IN: 
0xffffffff81000020:  90                   nop      

----------------
IN: 
0x00402000:  90                       nop      
0x00402001:  90                       nop      
0x00402002:  c3                       retq     

----------------
IN: 
0x00401000:  e9 00 00 00 00           jmp      0x401005

----------------
IN: 
`

const testMap = `ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000100 t do_something
ffffffff81000200 D some_data
`

func TestReadBlocks(t *testing.T) {
	blocks, err := readBlocks(strings.NewReader(testLog))
	if err != nil {
		t.Fatal(err)
	}
	want := []block{{0x01000000, 2}, {0xffffffff81000010, 2}, {0xffffffff81000100, 1}, {0x401000, 1}, {0xffffffff81000020, 1}, {0x402000, 3}, {0x401000, 1}}
	if len(blocks) != len(want) {
		t.Fatalf("got %d blocks %v, want %d (the cut-off one dropped)", len(blocks), blocks, len(want))
	}
	for i := range want {
		if blocks[i] != want[i] {
			t.Errorf("block %d = %+v, want %+v", i, blocks[i], want[i])
		}
	}
	if _, err := readBlocks(strings.NewReader("IN: \n0xzz: nop\n")); err == nil {
		t.Error("a bad address was accepted")
	}
}

func TestProfile(t *testing.T) {
	blocks, err := readBlocks(strings.NewReader(testLog))
	if err != nil {
		t.Fatal(err)
	}
	ksyms, err := readSystemMap(strings.NewReader(testMap))
	if err != nil {
		t.Fatal(err)
	}
	var usyms symtab
	usyms.add(0x402000, "main.main")
	usyms.add(0x401000, "_rt0_amd64_linux")
	usyms.sort()
	marks := []mark{{0x401000, "runtime"}, {0x402000, "main"}}
	phases := profile(blocks, marks, ksyms, usyms)

	type row struct {
		name                 string
		blocks, kernel, insn int
	}
	want := []row{
		{"before the kernel's text", 1, 0, 2},
		{"kernel to /init", 2, 2, 3},
		// The second block at the entry point is counted, not a
		// new phase: a phase starts at its mark's first block.
		{"runtime", 2, 1, 2},
		{"main", 2, 0, 4},
	}
	if len(phases) != len(want) {
		t.Fatalf("got %d phases, want %d", len(phases), len(want))
	}
	for i, w := range want {
		p := phases[i]
		if got := (row{p.name, p.blocks, p.kernelBlocks, p.insns}); got != w {
			t.Errorf("phase %d = %+v, want %+v", i, got, w)
		}
	}
	if n := phases[1].fns["k startup_64"]; n != 1 {
		t.Errorf("kernel phase: startup_64 has %d blocks, want 1 (%v)", n, phases[1].fns)
	}
	if n := phases[1].fns["k do_something"]; n != 1 {
		t.Errorf("kernel phase: do_something has %d blocks, want 1 (%v)", n, phases[1].fns)
	}
	if n := phases[3].fns["_rt0_amd64_linux"]; n != 1 {
		t.Errorf("main phase: the entry point has %d blocks, want 1 (%v)", n, phases[3].fns)
	}

	var out bytes.Buffer
	report(&out, phases, 3)
	for _, s := range []string{"kernel to /init", "total", "k do_something"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

func TestSymtabLookup(t *testing.T) {
	ksyms, err := readSystemMap(strings.NewReader(testMap))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		addr uint64
		want string
	}{
		{"before the first symbol", 0xffffffff80000000, ""},
		{"at a symbol", 0xffffffff81000100, "do_something"},
		{"inside one", 0xffffffff81000150, "do_something"},
		{"data symbols are not functions", 0xffffffff81000250, "do_something"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ksyms.lookup(c.addr); got != c.want {
				t.Errorf("lookup(%#x) = %q, want %q", c.addr, got, c.want)
			}
		})
	}
}

// tbprof itself, built without -s -w, is a Go binary with its symbols like
// such a flick-init.
func TestReadInit(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go command to build a binary with symbols")
	}
	exe := filepath.Join(t.TempDir(), "tbprof")
	cmd := exec.CommandContext(t.Context(), gobin, "build", "-o", exe, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	syms, marks, err := readInit(exe)
	if err != nil {
		t.Fatal(err)
	}
	if len(marks) < 3 || marks[0].phase != "init: Go runtime start" {
		t.Fatalf("marks = %+v, want the entry point, runtime.main and main.main", marks)
	}
	if got := syms.lookup(marks[1].addr); got != "runtime.main" {
		t.Errorf("the second mark is in %q, want runtime.main", got)
	}
	if got := syms.lookup(syms.end); got != "" {
		t.Errorf("the end of the text is in %q, want none", got)
	}
	if _, _, err := readInit(os.DevNull); err == nil {
		t.Error("a file that is not ELF was accepted")
	}
}
