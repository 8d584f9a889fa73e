package etcd

import "os"

func mkTemp() (string, error) { return os.MkdirTemp("", "valet-etcd-test-") }

func rmTemp(dir string) { os.RemoveAll(dir) }
