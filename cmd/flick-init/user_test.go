package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
# a comment
app:x:1000:1000::/home/app:/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
`

const testGroup = `root:x:0:
app:x:1000:
extra:x:2000:app,other
more:x:3000:other,app
nogroup:x:65534:
`

func TestResolveUser(t *testing.T) {
	passwd, group := parsePasswd([]byte(testPasswd)), parseGroup([]byte(testGroup))
	for _, tc := range []struct {
		name    string
		spec    string
		want    creds
		wantErr bool
	}{
		{"default is root", "", creds{uid: 0, gid: 0, home: "/root"}, false},
		{"name", "app", creds{uid: 1000, gid: 1000, groups: []uint32{2000, 3000}, home: "/home/app"}, false},
		{"uid with entry", "1000", creds{uid: 1000, gid: 1000, groups: []uint32{2000, 3000}, home: "/home/app"}, false},
		{"uid without entry", "4242", creds{uid: 4242, gid: 0, home: "/"}, false},
		{"uid:gid", "4242:4343", creds{uid: 4242, gid: 4343, home: "/"}, false},
		{"name:group", "app:extra", creds{uid: 1000, gid: 2000, home: "/home/app"}, false},
		{"name:gid", "nobody:0", creds{uid: 65534, gid: 0, home: "/nonexistent"}, false},
		{"unknown name", "ghost", creds{}, true},
		{"unknown group", "app:ghosts", creds{}, true},
		{"uid too large", "99999999999", creds{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveUser(tc.spec, passwd, group)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("resolveUser(%q) = %+v, want an error", tc.spec, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.uid != tc.want.uid || got.gid != tc.want.gid || got.home != tc.want.home || !slices.Equal(got.groups, tc.want.groups) {
				t.Errorf("resolveUser(%q) = %+v, want %+v", tc.spec, got, tc.want)
			}
		})
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"bin", "usr/bin", "sbin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("bin/busybox", 0o755)
	write("usr/bin/data", 0o644)
	// An absolute symlink must resolve inside the root, not on the host.
	if err := os.Symlink("/bin/busybox", filepath.Join(dir, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	// One that escapes the root lands back inside it, where nothing is.
	if err := os.Symlink("../../../../../../usr/bin/env", filepath.Join(dir, "bin/env")); err != nil {
		t.Fatal(err)
	}
	root := openTestRoot(t, dir)
	for _, tc := range []struct {
		name, arg, path, want string
		wantCode              int
	}{
		{"absolute symlink", "sh", "/usr/bin:/bin", "/bin/sh", 0},
		{"first match", "busybox", "relative:/sbin:/bin", "/bin/busybox", 0},
		{"with slash", "./x", "/bin", "./x", 0},
		{"missing", "nope", "/bin:/usr/bin", "", 127},
		{"escaping symlink", "env", "/bin", "", 127},
		{"not executable", "data", "/bin:/usr/bin", "", 126},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookPath(root, tc.arg, tc.path)
			if tc.wantCode != 0 {
				ee, ok := err.(*execError)
				if !ok || ee.code != tc.wantCode {
					t.Fatalf("lookPath(%q) = %q, %v; want exit code %d", tc.arg, got, err, tc.wantCode)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("lookPath(%q) = %q, %v; want %q", tc.arg, got, err, tc.want)
			}
		})
	}
}
