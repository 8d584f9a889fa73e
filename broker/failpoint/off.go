//go:build !valet_failpoints

package failpoint

// Hit does nothing in a production build.
func Hit(string) {}
