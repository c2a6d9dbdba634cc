// Command tbprof counts the guest code that QEMU's TCG translated in a boot,
// by phase of the boot and by function. Under TCG most of a cold boot goes
// to translating code the first time it runs, and unlike wall time on a
// shared host, the count of translated blocks does not swing from one
// minute to the next: two builds can be compared with one boot each.
//
// Record a log of every translated block with QEMU's -d in_asm, for a boot
// through flickd with a shim as its QEMU:
//
//	printf '#!/bin/sh\nexec qemu-system-x86_64 "$@" -d in_asm -D /tmp/tb.$$\n' >/tmp/qemu-tb
//	chmod +x /tmp/qemu-tb; flickd --qemu /tmp/qemu-tb --spare-vmms 0 ...
//	flick run --rm --cold flick/demo
//
// then name the kernel's System.map and, for the phases and functions of
// PID 1, flick-init built without -s -w (go build ./cmd/flick-init: the
// same code at the same addresses as the stripped build, with symbols):
//
//	go run ./scripts/tbprof -log /tmp/tb.1234 \
//	    -kernel-map ~/.cache/flick/kernel/KEY/System.map -init /tmp/flick-init
//
// The phases end at the first block of flick-init's entry point, of
// runtime.main, of main.main and of main.runApp.
package main

import (
	"bufio"
	"cmp"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// kernelBase is where x86-64 Linux maps its text: blocks at or above it are
// the kernel's.
const kernelBase = 0xffffffff80000000

func main() {
	logPath := flag.String("log", "", "QEMU -d in_asm log of the boot (required)")
	kmap := flag.String("kernel-map", "", "the guest kernel's System.map, to name kernel functions")
	initBin := flag.String("init", "", "flick-init built with its symbols, to mark its phases and name its functions")
	top := flag.Int("top", 10, "functions to list for each phase")
	flag.Parse()
	if *logPath == "" || flag.NArg() != 0 {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: tbprof -log FILE [-kernel-map System.map] [-init BINARY] [-top N]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	if err := run(*logPath, *kmap, *initBin, *top, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "tbprof: %v\n", err)
		os.Exit(1)
	}
}

func run(logPath, kmap, initBin string, top int, out io.Writer) error {
	var ksyms, usyms symtab
	var marks []mark
	if kmap != "" {
		f, err := os.Open(kmap)
		if err != nil {
			return err
		}
		ksyms, err = readSystemMap(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", kmap, err)
		}
	}
	if initBin != "" {
		var err error
		if usyms, marks, err = readInit(initBin); err != nil {
			return fmt.Errorf("%s: %w", initBin, err)
		}
	}
	f, err := os.Open(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	blocks, err := readBlocks(f)
	if err != nil {
		return fmt.Errorf("%s: %w", logPath, err)
	}
	report(out, profile(blocks, marks, ksyms, usyms), top)
	return nil
}

// block is one translated block: where it starts and how many guest
// instructions it holds.
type block struct {
	addr  uint64
	insns int
}

// readBlocks parses a -d in_asm log: each block is an "IN:" line followed
// by one "0xADDR: ..." line per instruction.
func readBlocks(r io.Reader) ([]block, error) {
	var blocks []block
	in := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "IN:"):
			blocks = append(blocks, block{})
			in = true
		case in && strings.HasPrefix(line, "0x"):
			b := &blocks[len(blocks)-1]
			if b.insns == 0 {
				colon := strings.IndexByte(line, ':')
				if colon < 0 {
					return nil, fmt.Errorf("instruction line without an address: %q", line)
				}
				a, err := strconv.ParseUint(line[2:colon], 16, 64)
				if err != nil {
					return nil, fmt.Errorf("instruction line %q: %w", line, err)
				}
				b.addr = a
			}
			b.insns++
		default:
			in = in && line != ""
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	// A block cut off by the end of the log has no instructions.
	if n := len(blocks); n > 0 && blocks[n-1].insns == 0 {
		blocks = blocks[:n-1]
	}
	return blocks, nil
}

// symtab names addresses by the function that contains them. With end
// set, an address at or past it is in none (another binary's code).
type symtab struct {
	syms []sym
	end  uint64
}

type sym struct {
	addr uint64
	name string
}

func (s *symtab) add(addr uint64, name string) { s.syms = append(s.syms, sym{addr, name}) }

func (s *symtab) sort() {
	slices.SortStableFunc(s.syms, func(a, b sym) int { return cmp.Compare(a.addr, b.addr) })
}

// lookup returns the function holding addr, or "" before the first.
func (s *symtab) lookup(addr uint64) string {
	i := sort.Search(len(s.syms), func(i int) bool { return s.syms[i].addr > addr })
	if i == 0 || s.end != 0 && addr >= s.end {
		return ""
	}
	return s.syms[i-1].name
}

// readSystemMap reads the text symbols of a kernel's System.map.
func readSystemMap(r io.Reader) (symtab, error) {
	var s symtab
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || !strings.ContainsAny(f[1], "tTwW") {
			continue
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return s, fmt.Errorf("line %q: %w", sc.Text(), err)
		}
		s.add(a, f[2])
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	s.sort()
	return s, nil
}

// mark is the first address of a phase.
type mark struct {
	addr  uint64
	phase string
}

// initMarks are the functions of flick-init whose first block starts a
// phase, after its entry point.
var initMarks = []struct{ fn, phase string }{
	{"runtime.main", "init: package inits"},
	{"main.main", "init: main to the app's plan"},
	{"main.runApp", "init: app start and after"},
}

// readInit reads the function symbols of a flick-init binary and the
// addresses that start the phases of PID 1.
func readInit(path string) (symtab, []mark, error) {
	var s symtab
	f, err := elf.Open(path)
	if err != nil {
		return s, nil, err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return s, nil, fmt.Errorf("%w (build flick-init without -ldflags=-s for its symbols)", err)
	}
	at := map[string]uint64{}
	for _, sym := range syms {
		if elf.ST_TYPE(sym.Info) == elf.STT_FUNC {
			s.add(sym.Value, sym.Name)
			at[sym.Name] = sym.Value
		}
	}
	s.sort()
	if text := f.Section(".text"); text != nil {
		s.end = text.Addr + text.Size
	}
	marks := []mark{{f.Entry, "init: Go runtime start"}}
	for _, m := range initMarks {
		if a, ok := at[m.fn]; ok {
			marks = append(marks, mark{a, m.phase})
		}
	}
	return s, marks, nil
}

// phase is what a boot translated from one mark to the next.
type phase struct {
	name                 string
	kernelBlocks, blocks int
	insns                int
	fns                  map[string]int
}

// profile splits the blocks into phases: firmware and early boot before
// the first block at a kernel address, the kernel's boot up to the first
// mark, then one phase per mark, each starting at the first block at its
// address.
func profile(blocks []block, marks []mark, ksyms, usyms symtab) []*phase {
	cur := &phase{name: "before the kernel's text", fns: map[string]int{}}
	phases := []*phase{cur}
	started := map[uint64]bool{}
	next := func(name string) {
		cur = &phase{name: name, fns: map[string]int{}}
		phases = append(phases, cur)
	}
	inKernel := false
	for _, b := range blocks {
		if !inKernel && b.addr >= kernelBase {
			inKernel = true
			next("kernel to /init")
		}
		for _, m := range marks {
			if b.addr == m.addr && !started[m.addr] {
				started[m.addr] = true
				next(m.phase)
			}
		}
		cur.blocks++
		cur.insns += b.insns
		var fn string
		if b.addr >= kernelBase {
			cur.kernelBlocks++
			fn = ksyms.lookup(b.addr)
			if fn != "" {
				fn = "k " + fn
			}
		} else {
			fn = usyms.lookup(b.addr)
		}
		if fn != "" {
			cur.fns[fn]++
		}
	}
	if phases[0].blocks == 0 {
		phases = phases[1:]
	}
	return phases
}

func report(w io.Writer, phases []*phase, top int) {
	var total, kernel, insns int
	fmt.Fprintf(w, "%-30s %8s %8s %8s %9s\n", "PHASE", "BLOCKS", "KERNEL", "USER", "INSNS")
	for _, p := range phases {
		fmt.Fprintf(w, "%-30s %8d %8d %8d %9d\n", p.name, p.blocks, p.kernelBlocks, p.blocks-p.kernelBlocks, p.insns)
		total += p.blocks
		kernel += p.kernelBlocks
		insns += p.insns
	}
	fmt.Fprintf(w, "%-30s %8d %8d %8d %9d\n", "total", total, kernel, total-kernel, insns)
	if top <= 0 {
		return
	}
	for _, p := range phases {
		if len(p.fns) == 0 {
			continue
		}
		names := make([]string, 0, len(p.fns))
		for n := range p.fns {
			names = append(names, n)
		}
		sort.Slice(names, func(i, j int) bool {
			if p.fns[names[i]] != p.fns[names[j]] {
				return p.fns[names[i]] > p.fns[names[j]]
			}
			return names[i] < names[j]
		})
		fmt.Fprintf(w, "\n%s: blocks by function (k: kernel)\n", p.name)
		for _, n := range names[:min(top, len(names))] {
			fmt.Fprintf(w, "%8d  %s\n", p.fns[n], n)
		}
	}
}
