package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const modulePath = "github.com/valet-broker/valet"

// readLayers reads the numbered list of docs/ARCHITECTURE.md's "Packages
// and layers" section: each package named in backquotes on item N is in
// layer N.
func readLayers(t *testing.T, doc []byte) map[string]int {
	t.Helper()
	layers := map[string]int{}
	item := regexp.MustCompile(`^(\d+)\. `)
	pkg := regexp.MustCompile("`([a-z][a-z0-9-]*(?:/[a-z0-9-]+)*)`")
	in, layer := false, 0
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			in = line == "## Packages and layers"
			layer = 0
			continue
		case !in:
			continue
		case item.MatchString(line):
			layer, _ = strconv.Atoi(item.FindStringSubmatch(line)[1])
		case line == "" || !strings.HasPrefix(line, "   "):
			layer = 0 // the list item ended
		}
		if layer == 0 {
			continue
		}
		for _, m := range pkg.FindAllStringSubmatch(line, -1) {
			layers[m[1]] = layer
		}
	}
	return layers
}

// TestPackageLayers enforces docs/ARCHITECTURE.md's dependency rule: a
// package imports only packages of lower layers (its tests may import what
// they need). Every package of the module must be in a layer.
func TestPackageLayers(t *testing.T) {
	doc, err := os.ReadFile("../../docs/ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	layers := readLayers(t, doc)
	if len(layers) == 0 {
		t.Fatal(`docs/ARCHITECTURE.md lists no layers under "## Packages and layers"`)
	}
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, modulePath), "/")
		seen[name] = true
		layer, ok := layers[name]
		if !ok {
			t.Errorf("%s is in no layer: add it to docs/ARCHITECTURE.md, Packages and layers", name)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, modulePath+"/") {
				continue
			}
			dep := strings.TrimPrefix(imp, modulePath+"/")
			if l, ok := layers[dep]; ok && l >= layer {
				t.Errorf("%s (layer %d) imports %s (layer %d): a package may import only packages of lower layers", name, layer, dep, l)
			}
		}
	}
	for name := range layers {
		if !seen[name] {
			t.Errorf("docs/ARCHITECTURE.md places %s in layer %d, but there is no such package", name, layers[name])
		}
	}
}
