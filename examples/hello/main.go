// Command hello is flick's demo app: a static program for a scratch image.
// It prints a greeting with the VM's hostname, its arguments and how long
// the machine has been up; given "serve", it then serves that greeting
// over HTTP on :8080.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

var start = time.Now()

// uptime is the machine's uptime from /proc/uptime: in a microVM that is
// the time since the kernel started. Without /proc it is the process's.
func uptime() time.Duration {
	b, err := os.ReadFile("/proc/uptime")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if s, err := strconv.ParseFloat(f[0], 64); err == nil {
				return time.Duration(s * float64(time.Second))
			}
		}
	}
	return time.Since(start)
}

func greeting(args []string) string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return fmt.Sprintf("Hello from flick! host=%s args=%q uptime=%s\n",
		host, args, uptime().Round(time.Millisecond))
}

func main() {
	args := os.Args[1:]
	fmt.Print(greeting(args))
	if len(args) == 0 || args[0] != "serve" {
		return
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, greeting(args))
	})
	log.Printf("listening on :8080")
	log.Fatal(http.ListenAndServe(":8080", nil))
}
