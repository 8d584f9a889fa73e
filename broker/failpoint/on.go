//go:build valet_failpoints

package failpoint

import (
	"os"
	"strings"
	"sync"
	"syscall"
)

var (
	once   sync.Once
	points map[string]bool
)

// Hit kills the process if name is in $VALET_FAILPOINTS.
func Hit(name string) {
	once.Do(func() {
		points = map[string]bool{}
		for _, p := range strings.Split(os.Getenv("VALET_FAILPOINTS"), ",") {
			if p = strings.TrimSpace(p); p != "" {
				points[p] = true
			}
		}
	})
	if points[name] {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
