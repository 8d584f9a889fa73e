package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/etcd"
	"github.com/valet-broker/valet/broker/migrate"
)

func newStorageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "storage", Short: "Move valet's data from one storage engine to another"}
	var from, to, configPath string
	var ec etcd.Config
	ec.SetDefaults()
	var tlsFiles etcd.TLSConfig
	mig := &cobra.Command{
		Use:   "migrate --from bbolt:PATH --to etcd (--config FILE | --etcd-endpoints URL,...)",
		Short: "Copy a stopped valet's bbolt store into an empty etcd prefix, then verify the copy",
		Long: `Copy every record of a bbolt store into an empty etcd prefix, for several
replicas on etcd (README, "Several replicas on etcd"): leases with their
indexes and the revocation queue, grants, agent records with their
quarantines, signals, job state, the replay cache's live entries and the
audit log, record by record, with the same sequence numbers, hashes and
head. Then read the prefix back and compare: counts and a digest per kind,
and the audit chain verified on etcd with the source's head. Exit status 0
only when the copy verifies.

--from bbolt:PATH is the data_dir (or its valet.db) of a STOPPED valet: the
file is opened read-only and never changed; while a valet holds it, the
migration refuses. --to etcd takes its settings from --config FILE, the
configuration the replicas will run with (storage.engine: etcd), or from the
--etcd-* flags. The prefix must be empty: after an interrupted migration,
clear it (etcdctl del --prefix PREFIX) and run again.

The files in data_dir (signing keys, the checkpoint key, the SSF key) are
not in the store: every replica must see them (a shared volume).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := migrateSource(from)
			if err != nil {
				return err
			}
			if to == "" {
				return fmt.Errorf("--to is required: --to etcd (valet storage migrate copies a bbolt store into etcd)")
			}
			if to != engineEtcd {
				return fmt.Errorf("--to must be etcd (valet storage migrate copies a bbolt store into etcd); it is %q", to)
			}
			etcdFlags := false
			cmd.Flags().Visit(func(f *pflag.Flag) { etcdFlags = etcdFlags || strings.HasPrefix(f.Name, "etcd-") })
			switch {
			case configPath != "" && etcdFlags:
				return errors.New("give the etcd settings either with --config or with the --etcd-* flags, not both")
			case configPath != "":
				cfg, err := LoadConfig(configPath)
				if err != nil {
					return configError{err}
				}
				if cfg.Storage.Engine != engineEtcd {
					return fmt.Errorf("--config %s: storage.engine is %s; give the configuration the replicas will run with (storage.engine: etcd)", configPath, cfg.Storage.Engine)
				}
				ec = cfg.Storage.Etcd
			default:
				if len(ec.Endpoints) == 0 {
					return errors.New("--to etcd needs --config FILE or --etcd-endpoints (the members' client URLs, comma-separated)")
				}
				if tlsFiles != (etcd.TLSConfig{}) {
					ec.TLS = &tlsFiles
				}
				if err := ec.Validate("storage.etcd (the --etcd-* flags)", true); err != nil {
					return configError{err}
				}
			}
			return runMigrate(cmd, path, ec)
		},
	}
	f := mig.Flags()
	f.StringVar(&from, "from", "", "the source: bbolt:PATH, a stopped valet's data_dir or its valet.db")
	f.StringVar(&to, "to", "", "the target engine: etcd")
	f.StringVarP(&configPath, "config", "c", "", "the replicas' configuration file: its storage.etcd section says where to copy")
	f.StringSliceVar(&ec.Endpoints, "etcd-endpoints", nil, "etcd client URLs (comma-separated), instead of --config")
	f.StringVar(&ec.Prefix, "etcd-prefix", ec.Prefix, "the key prefix to copy into (must be empty)")
	f.StringVar(&tlsFiles.CAFile, "etcd-ca-file", "", "CA bundle that signed the etcd members' certificates")
	f.StringVar(&tlsFiles.CertFile, "etcd-cert-file", "", "client certificate for etcd")
	f.StringVar(&tlsFiles.KeyFile, "etcd-key-file", "", "client key for etcd")
	f.StringVar(&ec.Username, "etcd-username", "", "etcd user (with --etcd-password-file)")
	f.StringVar(&ec.PasswordFile, "etcd-password-file", "", "file holding the etcd user's password")
	cmd.AddCommand(mig)
	return cmd
}

// migrateSource reads --from: bbolt:PATH, PATH a data_dir or a database
// file that exists.
func migrateSource(from string) (string, error) {
	engine, path, ok := strings.Cut(from, ":")
	switch {
	case from == "":
		return "", errors.New("--from is required: bbolt:PATH (a stopped valet's data_dir or its valet.db)")
	case !ok || engine != engineBbolt || path == "":
		return "", fmt.Errorf("--from must be bbolt:PATH (a stopped valet's data_dir or its valet.db); it is %q", from)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--from: %w", err)
	}
	if st.IsDir() {
		path = filepath.Join(path, "valet.db")
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("--from: %w", err)
		}
	}
	return path, nil
}

// runMigrate copies the bbolt file at path into etcd as ec says, prints
// the summary and fails unless the copy verifies.
func runMigrate(cmd *cobra.Command, path string, ec etcd.Config) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	src, err := bolt.Open(path, bolt.Options{ReadOnly: true, Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))})
	if errors.Is(err, bolt.ErrInUse) {
		return fmt.Errorf("--from %s: a valet process holds the file; stop it first: the copy must be of a store nobody changes", path)
	}
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	defer src.Close()
	client, err := ec.Client()
	if err != nil {
		return err
	}
	defer client.Close()
	dst, err := etcd.Open(ctx, etcd.Options{Client: client, Prefix: ec.Prefix, RequestTimeout: ec.RequestTimeout.D(),
		Replica: "valet-storage-migrate", Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer dst.Close()
	where := fmt.Sprintf("etcd prefix %s at %s", ec.Prefix, strings.Join(ec.Endpoints, ","))
	rep, err := migrate.Copy(ctx, src, dst, time.Now())
	if errors.Is(err, migrate.ErrNotEmpty) {
		return fmt.Errorf("%s: %w. valet storage migrate copies only into an empty prefix. If a migration was interrupted, or the keys are left from a test, "+
			"check that no valet uses the prefix, clear it with `etcdctl --endpoints=%s del --prefix %s` and run the migration again",
			where, err, strings.Join(ec.Endpoints, ","), ec.Prefix)
	}
	if err != nil {
		if n, kerr := dst.KeyCount(context.WithoutCancel(ctx)); kerr == nil && n > 0 {
			return fmt.Errorf("%w. %s now holds a partial copy (%d keys): check that no valet uses it, clear it with `etcdctl --endpoints=%s del --prefix %s` and run the migration again",
				err, where, n, strings.Join(ec.Endpoints, ","), ec.Prefix)
		}
		return err
	}
	fmt.Fprintf(out, "copied bbolt %s (opened read-only, unchanged) into %s\n\n", path, where)
	printMigrateReport(out, rep)
	if !rep.OK() {
		fmt.Fprintf(out, "\nmigration NOT verified: the prefix does not hold what the source holds (rows marked MISMATCH, or the audit chain above).\n"+
			"Clear it with `etcdctl --endpoints=%s del --prefix %s` and run the migration again.\n", strings.Join(ec.Endpoints, ","), ec.Prefix)
		return exitError{1}
	}
	fmt.Fprintf(out, `
migration verified. Next:
  1. keep %s as a backup: valet no longer reads it once storage.engine is etcd;
  2. give every replica the files of its data_dir (signing keys, checkpoint key, SSF key), on a shared volume;
  3. start the replicas with storage.engine: etcd and storage.etcd.prefix: %s, then check `+"`valet audit verify`"+`.
`, path, ec.Prefix)
	return nil
}

// printMigrateReport prints the table of counts and the audit heads.
func printMigrateReport(w io.Writer, rep *migrate.Report) {
	t := newTable(w, "KIND", "SOURCE", "COPIED", "TARGET", "CHECK")
	for _, c := range rep.Counts {
		check := "ok"
		if !c.Same {
			check = "MISMATCH"
		}
		t.row(c.Kind, strconv.FormatInt(c.Source, 10), strconv.FormatInt(c.Copied, 10), strconv.FormatInt(c.Target, 10), check)
	}
	t.flush()
	if rep.ExpiredReplay > 0 {
		fmt.Fprintf(w, "(%d replay entries had expired: no longer consumed, not copied)\n", rep.ExpiredReplay)
	}
	fmt.Fprintf(w, "\naudit head on the source: record %d, hash %x\n", rep.SourceHead.Seq, rep.SourceHead.Hash)
	fmt.Fprintf(w, "audit head on the target: record %d, hash %x\n", rep.TargetHead.Seq, rep.TargetHead.Hash)
	if v := rep.TargetAudit; v.OK {
		fmt.Fprintf(w, "audit chain on the target: OK, %d records, head %d %s\n", v.Records, v.HeadSeq, v.HeadHash)
	} else {
		fmt.Fprintf(w, "audit chain on the target: BROKEN after %d good records: %s\n", v.Records, termSafe(v.Problem))
	}
}
