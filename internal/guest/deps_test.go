package guest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestInitDeps keeps flick-init away from the host side: it may link the
// standard library, golang.org/x/sys, the wire contract, the tar helpers and
// yamux with its config (for its agent mode), nothing else, and no net/http, which would
// double the size of the initramfs that every boot unpacks.
func TestInitDeps(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go command not in PATH")
	}
	out, err := exec.Command("go", "list", "-deps", "github.com/flick-vm/flick/cmd/flick-init").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := map[string]bool{
		"github.com/flick-vm/flick/cmd/flick-init":      true,
		"github.com/flick-vm/flick/internal/guest/wire": true,
		"github.com/flick-vm/flick/internal/tarx":       true,
		"github.com/flick-vm/flick/internal/guest/mux":  true,
		"github.com/hashicorp/yamux":                    true,
		"golang.org/x/sys/unix":                         true,
	}
	for _, pkg := range strings.Fields(string(out)) {
		first, _, _ := strings.Cut(pkg, "/")
		std := !strings.Contains(first, ".")
		if pkg == "net/http" {
			t.Errorf("flick-init imports net/http")
		}
		if std || allowed[pkg] {
			continue
		}
		t.Errorf("flick-init imports %s", pkg)
	}
}
