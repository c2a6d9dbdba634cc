package vmm

import (
	"strings"
	"testing"
)

func TestHasVirtFlag(t *testing.T) {
	tests := []struct {
		name, cpuinfo string
		want          bool
	}{
		{"vmx", "processor : 0\nflags : fpu vme vmx sse\n", true},
		{"svm", "flags\t\t: fpu svm\n", true},
		{"pvm host has neither", "processor : 0\nflags : fpu vme sse hypervisor\n", false},
		{"vmx elsewhere does not count", "model name : vmx\nflags : fpu\n", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hasVirtFlag(tt.cpuinfo); got != tt.want {
				t.Errorf("hasVirtFlag = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPickAccelOverride(t *testing.T) {
	for _, want := range []string{"kvm", "tcg"} {
		if got := PickAccel(want); got != want {
			t.Errorf("PickAccel(%q) = %q", want, got)
		}
	}
	if got := PickAccel("auto"); got != "kvm" && got != "tcg" {
		t.Errorf("PickAccel(auto) = %q", got)
	}
}

func TestArgs(t *testing.T) {
	q := &QEMU{binary: "qemu-system-x86_64", ramDir: "/dev/shm/flick", tcgCPU: DefaultTCGCPU}
	spec := Spec{
		ID: "abc", Kernel: "/k/vmlinux", Initrd: "/k/initrd", Cmdline: "console=ttyS0 quiet",
		CPUs: 2, MemoryMiB: 256, Accel: "tcg", ConsoleLog: "/i/console.log", GuestConfig: "/r/config.json",
		Disks: []Disk{{Path: "/d/root.erofs", Serial: "root", ReadOnly: true}, {Path: "/i/data.ext4", Serial: "data"}},
	}
	args := strings.Join(q.Args(spec, Sockets{QMP: "/r/qmp.sock", Control: "/r/control.sock", Agent: "/r/agent.sock"}, "/dev/shm/flick/abc.ram"), " ")
	for _, want := range []string{
		"-M microvm,acpi=off,x-option-roms=off",
		"-no-reboot -S",
		"-accel tcg", "-cpu max,erms=off,fsrm=off", "-smp 2", "-m 256M",
		"memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/flick/abc.ram,share=on",
		"-kernel /k/vmlinux", "-initrd /k/initrd", "-append console=ttyS0 quiet",
		"-blockdev driver=file,node-name=disk0-file,filename=/d/root.erofs,read-only=on -blockdev driver=raw,node-name=disk0,file=disk0-file,read-only=on -device virtio-blk-device,drive=disk0,serial=root",
		"-blockdev driver=file,node-name=disk1-file,filename=/i/data.ext4 -blockdev driver=raw,node-name=disk1,file=disk1-file -device virtio-blk-device,drive=disk1,serial=data",
		"-device virtio-serial-device,id=ports,max_ports=3",
		"socket,id=control,path=/r/control.sock,server=on,wait=off -device virtserialport,chardev=control,bus=ports.0,name=flick.0",
		"socket,id=agent,path=/r/agent.sock,server=on,wait=off -device virtserialport,chardev=agent,bus=ports.0,name=flick.agent",
		"-device virtio-serial-device,id=cons,max_ports=1 -chardev file,id=console,path=/i/console.log,append=on -device virtconsole,chardev=console,bus=cons.0",
		"-chardev file,id=serial,path=/i/console.log,append=on -serial chardev:serial",
		"-fw_cfg name=opt/flick/config,file=/r/config.json",
		"-qmp unix:/r/qmp.sock,server=on,wait=off",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	spec.Accel = "kvm"
	if args := strings.Join(q.Args(spec, Sockets{QMP: "q", Control: "c", Agent: "a"}, "r"), " "); !strings.Contains(args, "-cpu host") {
		t.Errorf("kvm args lack -cpu host: %s", args)
	}
}

func TestLastLines(t *testing.T) {
	if got := LastLines("a\n\nb\nc\n", 2); got != "b | c" {
		t.Errorf("LastLines = %q", got)
	}
	if got := LastLines("", 3); got != "(no console output)" {
		t.Errorf("LastLines(empty) = %q", got)
	}
}

func TestFlickVM(t *testing.T) {
	tests := []struct {
		name string
		args []string
		id   string
		ok   bool
	}{
		{"ours", []string{"/usr/bin/qemu-system-x86_64", "-name", "flick-abc", "-chardev", "file,id=console,path=/var/lib/flick/instances/abc/console.log"}, "abc", true},
		{"another root", []string{"qemu-system-x86_64", "-name", "flick-abc", "-chardev", "file,path=/tmp/other/instances/abc/console.log"}, "", false},
		{"not flick", []string{"qemu-system-x86_64", "-name", "web", "-drive", "file=/var/lib/flick/instances/x.img"}, "", false},
		{"not qemu", []string{"sleep", "-name", "flick-abc", "path=/var/lib/flick/instances/"}, "", false},
		{"empty", nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok := flickVM(tt.args, "/var/lib/flick/instances/")
			if ok != tt.ok || (ok && id != tt.id) {
				t.Errorf("flickVM = %q, %v; want %q, %v", id, ok, tt.id, tt.ok)
			}
		})
	}
}
