package main

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
)

// creds is who the app runs as.
type creds struct {
	uid, gid uint32
	groups   []uint32
	home     string
}

// passwdEntry and groupEntry are lines of /etc/passwd and /etc/group.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// resolveUser resolves an OCI image config's User ("", "name", "uid",
// "name:group", "uid:gid", ...) against the image's /etc/passwd and
// /etc/group, the way Docker does: a numeric uid needs no passwd entry, a
// name does; without an explicit group the user's primary group and the
// groups that list the user as a member apply.
func resolveUser(spec string, passwd []passwdEntry, group []groupEntry) (creds, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	c := creds{home: "/"}
	var pw *passwdEntry
	switch {
	case userPart == "":
		pw = findPasswd(passwd, func(e passwdEntry) bool { return e.uid == 0 })
	case isNumeric(userPart):
		uid, err := parseID(userPart)
		if err != nil {
			return c, fmt.Errorf("user %q: %w", spec, err)
		}
		c.uid = uid
		pw = findPasswd(passwd, func(e passwdEntry) bool { return e.uid == uid })
	default:
		pw = findPasswd(passwd, func(e passwdEntry) bool { return e.name == userPart })
		if pw == nil {
			return c, fmt.Errorf("user %q: no user %q in /etc/passwd", spec, userPart)
		}
	}
	if pw != nil {
		c.uid, c.gid = pw.uid, pw.gid
		if pw.home != "" {
			c.home = pw.home
		}
	}
	if hasGroup && groupPart != "" {
		if isNumeric(groupPart) {
			gid, err := parseID(groupPart)
			if err != nil {
				return c, fmt.Errorf("user %q: %w", spec, err)
			}
			c.gid = gid
		} else {
			i := slices.IndexFunc(group, func(g groupEntry) bool { return g.name == groupPart })
			if i < 0 {
				return c, fmt.Errorf("user %q: no group %q in /etc/group", spec, groupPart)
			}
			c.gid = group[i].gid
		}
		return c, nil
	}
	if pw != nil {
		for _, g := range group {
			if g.gid != c.gid && slices.Contains(g.members, pw.name) && !slices.Contains(c.groups, g.gid) {
				c.groups = append(c.groups, g.gid)
			}
		}
	}
	return c, nil
}

func findPasswd(entries []passwdEntry, match func(passwdEntry) bool) *passwdEntry {
	for i := range entries {
		if match(entries[i]) {
			return &entries[i]
		}
	}
	return nil
}

func isNumeric(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err
}

// parsePasswd parses /etc/passwd, skipping lines it cannot read.
func parsePasswd(b []byte) []passwdEntry {
	var out []passwdEntry
	for line := range strings.Lines(string(b)) {
		f := strings.Split(strings.TrimRight(line, "\n"), ":")
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		e := passwdEntry{name: f[0], uid: uid, gid: gid}
		if len(f) >= 6 {
			e.home = f[5]
		}
		out = append(out, e)
	}
	return out
}

// parseGroup parses /etc/group, skipping lines it cannot read.
func parseGroup(b []byte) []groupEntry {
	var out []groupEntry
	for line := range strings.Lines(string(b)) {
		f := strings.Split(strings.TrimRight(line, "\n"), ":")
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		gid, err := parseID(f[2])
		if err != nil {
			continue
		}
		e := groupEntry{name: f[0], gid: gid}
		if len(f) >= 4 && f[3] != "" {
			e.members = strings.Split(f[3], ",")
		}
		out = append(out, e)
	}
	return out
}

// readAccounts reads the image's /etc/passwd and /etc/group; an image
// without them (scratch) has no accounts, which is not an error.
func readAccounts(root rootDir) ([]passwdEntry, []groupEntry, error) {
	pw, err := root.readFile("/etc/passwd")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("read /etc/passwd: %w", err)
	}
	gr, err := root.readFile("/etc/group")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("read /etc/group: %w", err)
	}
	return parsePasswd(pw), parseGroup(gr), nil
}
