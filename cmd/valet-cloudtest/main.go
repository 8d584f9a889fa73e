// Command valet-cloudtest runs the local stand-ins for cloud and SaaS
// services that valet's tests use, for demos beside `valet dev` (`make
// run-cloud`): no cloud is reachable from a developer's machine or CI.
//
//	valet-cloudtest aws [--listen ADDR]
//	valet-cloudtest github [--listen ADDR] [--dir DIR]
//	valet-cloudtest gcp [--listen ADDR] [--dir DIR]
//	valet-cloudtest aws-whoami
//
// Each service prints what valet needs to reach it as KEY=value lines
// (for a shell's eval), then serves until interrupted. A client (aws-whoami)
// uses the credentials valet exec puts in its environment, and exits.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// services are the stand-ins this command runs, by name.
var services = map[string]func(args []string) (stop func(), err error){
	"aws":    runAWS,
	"gcp":    runGCP,
	"github": runGitHub,
}

// clients use a credential from the environment and exit, by name.
var clients = map[string]func() error{
	"aws-whoami": awsWhoami,
}

func main() {
	if len(os.Args) == 2 && clients[os.Args[1]] != nil {
		if err := clients[os.Args[1]](); err != nil {
			fmt.Fprintln(os.Stderr, "valet-cloudtest:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 || services[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: valet-cloudtest aws|gcp|github [--listen ADDR] [--dir DIR] | aws-whoami")
		os.Exit(2)
	}
	stop, err := services[os.Args[1]](os.Args[2:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "valet-cloudtest:", err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	stop()
}
