package main

import (
	"flag"
	"fmt"
	"os/exec"
	"strings"

	"github.com/valet-broker/valet/backends/github/githubtest"
)

// runGitHub starts the GitHub test server: app 1, installation 42 on
// account acme with repositories widgets, gadgets and docs (served to git
// too when git is installed).
func runGitHub(args []string) (func(), error) {
	fs := flag.NewFlagSet("github", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8761", "address to listen on")
	dir := fs.String("dir", "", "directory for the app key and repositories (default: a temporary one)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	_, gitErr := exec.LookPath("git")
	in := githubtest.DefaultInstallation()
	s, err := githubtest.Start(githubtest.Options{Addr: *listen, Dir: *dir, Git: gitErr == nil, Installations: []githubtest.Installation{in}})
	if err != nil {
		return nil, err
	}
	fmt.Printf("VALET_DEV_GITHUB_URL=%s\nVALET_DEV_GITHUB_APP_ID=%d\nVALET_DEV_GITHUB_KEY_FILE=%s\nVALET_DEV_GITHUB_INSTALLATION=%d\n",
		s.URL, s.AppID, s.KeyFile, in.ID)
	fmt.Printf("# GitHub test server at %s: app %d, installation %d on %s (%s), permissions %v\n",
		s.URL, s.AppID, in.ID, in.Account, strings.Join(in.Repositories, ", "), in.Permissions)
	return s.Close, nil
}
