package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func newServeCmd() *cobra.Command {
	var configPath string
	var check bool
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the valet server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if configPath == "" {
				return fmt.Errorf("--config is required")
			}
			cfg, err := LoadConfig(configPath)
			if err != nil {
				return configError{err}
			}
			if check {
				fmt.Fprintf(cmd.OutOrStdout(), "configuration OK: %s (storage engine %s)\n", configPath, cfg.Storage.Engine)
				return nil
			}
			return serve(cmd.Context(), cfg, nil)
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "path to the YAML configuration")
	cmd.Flags().BoolVar(&check, "check", false, "only read the configuration and check its keys and values, then exit: 0 when they are valid (the files it names are not opened)")
	return cmd
}

// loadKEK reads the key-encryption key from VALET_KEK or the config's
// kek_file.
func loadKEK(cfg *Config) ([]byte, error) {
	if v := os.Getenv("VALET_KEK"); v != "" {
		return ParseKEK(v)
	}
	if cfg.KEKFile == "" {
		return nil, fmt.Errorf("no key-encryption key: set VALET_KEK (64 hex digits) or kek_file in the config")
	}
	b, err := os.ReadFile(cfg.KEKFile)
	if err != nil {
		return nil, fmt.Errorf("kek_file: %w", err)
	}
	return ParseKEK(string(b))
}

// loadPreviousKEK reads the previous key-encryption key, kept while valet
// switches to a new one, from VALET_KEK_PREVIOUS or the config's
// kek_previous_file; nil when neither is set.
func loadPreviousKEK(cfg *Config) ([]byte, error) {
	if v := os.Getenv("VALET_KEK_PREVIOUS"); v != "" {
		k, err := ParseKEK(v)
		if err != nil {
			return nil, fmt.Errorf("VALET_KEK_PREVIOUS: %w", err)
		}
		return k, nil
	}
	if cfg.KEKPreviousFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(cfg.KEKPreviousFile)
	if err != nil {
		return nil, fmt.Errorf("kek_previous_file: %w", err)
	}
	k, err := ParseKEK(string(b))
	if err != nil {
		return nil, fmt.Errorf("kek_previous_file: %w", err)
	}
	return k, nil
}

// newLogger returns the server's JSON logger on w, its lines batched per
// cfg.FlushInterval (lineBuffer), and a function that writes the lines
// that wait (call it before the process ends).
func newLogger(w io.Writer, cfg LogConfig) (*slog.Logger, func()) {
	var l slog.Level
	_ = l.UnmarshalText([]byte(strings.ToUpper(cfg.Level)))
	buf := newLineBuffer(w, cfg.FlushInterval.D())
	return slog.New(bufferedHandler{slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: l}), buf}), buf.Flush
}

// serve runs a server until ctx ends; SIGHUP reloads the policy. started,
// if set, is called once the server listens.
func serve(ctx context.Context, cfg *Config, started func(*Server)) error {
	kek, err := loadKEK(cfg)
	if err != nil {
		return err
	}
	previousKEK, err := loadPreviousKEK(cfg)
	if err != nil {
		return err
	}
	log, flushLog := newLogger(os.Stderr, cfg.Log)
	defer flushLog()
	if os.Getenv("GOGC") == "" {
		// valet's live heap is small (leases live in the mmapped store,
		// about 12 MiB under load), so letting the heap grow to five
		// times it between collections costs tens of megabytes and saves
		// most of the marking: measured at 64 connections, 3–5% of the
		// CPU a mint costs against GOGC=200.
		debug.SetGCPercent(400)
	}
	if addr := os.Getenv("VALET_PPROF_LISTEN"); addr != "" {
		// Profiling for diagnosis, on its own loopback listener and
		// only when asked for: it is never part of the API.
		go func() {
			mux := http.NewServeMux()
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			log.Warn("pprof enabled", "addr", addr)
			if err := http.ListenAndServe(addr, mux); err != nil {
				log.Error("pprof listener", "err", err)
			}
		}()
	}
	s := &Server{Config: cfg, KEK: kek, PreviousKEK: previousKEK, Logger: log}
	if err := s.Open(ctx); err != nil {
		return err
	}
	if started != nil {
		started(s)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return s.Close()
		case <-hup:
			if err := s.ReloadPolicy(); err != nil {
				log.Error("policy reload on SIGHUP refused; previous policy set kept", "err", err)
			} else {
				log.Info("policy reloaded on SIGHUP")
			}
		}
	}
}
