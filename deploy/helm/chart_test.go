// The test of valet's Helm chart (deploy/helm/valet), in a module of its
// own so that Helm and the Kubernetes API types stay out of valet's
// go.mod. `make helm-test` runs it (and `make test` through it). It
// renders the chart with Helm's own engine, decodes every document
// strictly into the Kubernetes API types, checks the two shapes, has
// valet's own configuration loader accept the valet.yaml of the
// ConfigMap (`valet serve --check`), and keeps deploy/kubernetes/*.yaml,
// the rendered manifests for kubectl users, equal to what the chart
// renders (go test -update writes them).
package helm_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "write deploy/kubernetes/*.yaml from the chart")

// shapes are the values of the two shapes, as deploy/kubernetes has them
// rendered.
var shapes = []struct {
	name     string
	manifest string // under deploy/kubernetes
	values   map[string]any
}{
	{"one replica on bbolt", "valet.yaml", map[string]any{}},
	{"replicas on etcd", "valet-ha.yaml", map[string]any{
		"replicas": 3,
		"storage": map[string]any{
			"engine": "etcd",
			"etcd": map[string]any{
				"endpoints": []any{"https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379", "https://etcd-2.etcd:2379"},
				"tlsSecret": "valet-etcd-tls",
			},
		},
	}},
}

// objects is a rendered chart, decoded.
type objects struct {
	deployment *appsv1.Deployment
	service    *corev1.Service
	configMap  *corev1.ConfigMap
	pvc        *corev1.PersistentVolumeClaim
	pdb        *policyv1.PodDisruptionBudget
	account    *corev1.ServiceAccount
	kinds      []string
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load("valet")
	if err != nil {
		t.Fatalf("load the chart: %v", err)
	}
	return c
}

// render renders the chart with values as `helm template valet -n valet`
// would and returns the manifests, each file's documents in order.
func render(t *testing.T, c *chart.Chart, values map[string]any) (map[string]string, error) {
	t.Helper()
	vals, err := chartutil.ToRenderValues(c, values, chartutil.ReleaseOptions{Name: "valet", Namespace: "valet", IsInstall: true}, nil)
	if err != nil {
		t.Fatalf("values: %v", err)
	}
	return engine.Engine{Strict: true}.Render(c, vals)
}

// documents splits the rendered files (NOTES.txt aside) into YAML
// documents, in file name order.
func documents(files map[string]string) []string {
	var names []string
	for n := range files {
		if !strings.HasSuffix(n, "NOTES.txt") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var docs []string
	for _, n := range names {
		for _, d := range strings.Split(files[n], "\n---") {
			if strings.TrimSpace(stripComments(d)) != "" {
				docs = append(docs, strings.TrimSpace(d))
			}
		}
	}
	return docs
}

func stripComments(d string) string {
	var out []string
	for _, l := range strings.Split(d, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// decode decodes every document strictly (an unknown field is an error)
// into its Kubernetes API type.
func decode(t *testing.T, docs []string) objects {
	t.Helper()
	var o objects
	for _, d := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(d), &tm); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, d)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			o.deployment = &appsv1.Deployment{}
			obj = o.deployment
		case "v1 Service":
			o.service = &corev1.Service{}
			obj = o.service
		case "v1 ConfigMap":
			o.configMap = &corev1.ConfigMap{}
			obj = o.configMap
		case "v1 PersistentVolumeClaim":
			o.pvc = &corev1.PersistentVolumeClaim{}
			obj = o.pvc
		case "policy/v1 PodDisruptionBudget":
			o.pdb = &policyv1.PodDisruptionBudget{}
			obj = o.pdb
		case "v1 ServiceAccount":
			o.account = &corev1.ServiceAccount{}
			obj = o.account
		default:
			t.Fatalf("a document of an unexpected kind %q %q:\n%s", tm.APIVersion, tm.Kind, d)
		}
		if err := yaml.UnmarshalStrict([]byte(d), obj); err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", tm.Kind, err, d)
		}
		o.kinds = append(o.kinds, tm.Kind)
	}
	return o
}

var (
	buildOnce sync.Once
	valetBin  string
	buildErr  error
)

// valet returns the valet binary: $VALET_BIN (make helm-test builds it),
// else one built from the module two directories up.
func valet(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if valetBin = os.Getenv("VALET_BIN"); valetBin != "" {
			return
		}
		dir, err := os.MkdirTemp("", "valet-helm-test")
		if err != nil {
			buildErr = err
			return
		}
		valetBin = filepath.Join(dir, "valet")
		cmd := exec.Command("go", "build", "-o", valetBin, "./cmd/valet")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build valet: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return valetBin
}

// checkConfig writes the ConfigMap's files as the pod sees them under
// /etc/valet/config and has valet's own loader validate valet.yaml.
func checkConfig(t *testing.T, o objects) string {
	t.Helper()
	dir := t.TempDir()
	for _, it := range o.deployment.Spec.Template.Spec.Volumes {
		if it.ConfigMap == nil {
			continue
		}
		for _, item := range it.ConfigMap.Items {
			v, ok := o.configMap.Data[item.Key]
			if !ok {
				t.Fatalf("the pod mounts key %q, which the ConfigMap lacks", item.Key)
			}
			p := filepath.Join(dir, item.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd := exec.Command(valet(t), "serve", "--check", "--config", filepath.Join(dir, "valet.yaml"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("valet serve --check refuses the ConfigMap's valet.yaml: %v\n%s\n%s", err, out, o.configMap.Data["valet.yaml"])
	}
	if _, err := os.Stat(filepath.Join(dir, "policies", "demo.cedar")); err != nil {
		t.Errorf("the policies are not where policy.dir points: %v", err)
	}
	return string(out)
}

// TestChartShapes renders the single-node bbolt shape and the HA etcd
// shape and checks what each must be.
func TestChartShapes(t *testing.T) {
	c := loadChart(t)
	for _, s := range shapes {
		t.Run(s.name, func(t *testing.T) {
			files, err := render(t, c, s.values)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			docs := documents(files)
			o := decode(t, docs)
			ha := s.manifest == "valet-ha.yaml"
			d := o.deployment
			if d == nil || o.service == nil || o.configMap == nil || o.pvc == nil || o.account == nil {
				t.Fatalf("rendered kinds %v: want a Deployment, a Service, a ConfigMap, a PVC and a ServiceAccount", o.kinds)
			}
			pod := d.Spec.Template.Spec
			ctr := pod.Containers[0]
			if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "http" {
				t.Errorf("readiness probe %+v, want GET /readyz on the http port", p)
			}
			if p := ctr.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
				t.Errorf("liveness probe %+v, want GET /healthz", p)
			}
			if sel := o.service.Spec.Selector; !matches(sel, d.Spec.Template.ObjectMeta.Labels) || !matches(d.Spec.Selector.MatchLabels, d.Spec.Template.ObjectMeta.Labels) {
				t.Errorf("the Service (%v) or the Deployment (%v) does not select the pods (%v)", sel, d.Spec.Selector.MatchLabels, d.Spec.Template.ObjectMeta.Labels)
			}
			cfg := o.configMap.Data["valet.yaml"]
			out := checkConfig(t, o)
			replicas := *d.Spec.Replicas
			if ha {
				if replicas < 2 {
					t.Errorf("replicas %d, want at least 2", replicas)
				}
				if o.pdb == nil || o.pdb.Spec.MaxUnavailable == nil || o.pdb.Spec.MaxUnavailable.IntValue() != 1 || !matches(o.pdb.Spec.Selector.MatchLabels, d.Spec.Template.ObjectMeta.Labels) {
					t.Errorf("PodDisruptionBudget %+v, want maxUnavailable 1 over the pods", o.pdb)
				}
				if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
					t.Errorf("strategy %s, want RollingUpdate", d.Spec.Strategy.Type)
				}
				for _, want := range []string{"engine: etcd", "- https://etcd-0.etcd:2379", "- https://etcd-2.etcd:2379", "ca_file: /etc/valet/etcd-tls/ca.pem", "cert_file: /etc/valet/etcd-tls/cert.pem"} {
					if !strings.Contains(cfg, want) {
						t.Errorf("valet.yaml lacks %q:\n%s", want, cfg)
					}
				}
				if !strings.Contains(out, "storage engine etcd") {
					t.Errorf("valet serve --check: %s", out)
				}
				if !hasSecretVolume(pod, "valet-etcd-tls") || !hasMount(ctr, "/etc/valet/etcd-tls") {
					t.Errorf("the etcd TLS Secret is not mounted at /etc/valet/etcd-tls: %+v", pod.Volumes)
				}
				if m := o.pvc.Spec.AccessModes; len(m) != 1 || m[0] != corev1.ReadWriteMany {
					t.Errorf("data volume access %v, want ReadWriteMany (every replica sees the key files)", m)
				}
				if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil {
					t.Error("no anti-affinity spreads the replicas over nodes")
				}
			} else {
				if replicas != 1 || o.pdb != nil {
					t.Errorf("replicas %d, PDB %v: want one replica and no PodDisruptionBudget", replicas, o.pdb)
				}
				if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
					t.Errorf("strategy %s, want Recreate (one writer of the bbolt file)", d.Spec.Strategy.Type)
				}
				if m := o.pvc.Spec.AccessModes; len(m) != 1 || m[0] != corev1.ReadWriteOnce {
					t.Errorf("data volume access %v, want ReadWriteOnce", m)
				}
				if strings.Contains(cfg, "etcd") || !strings.Contains(out, "storage engine bbolt") {
					t.Errorf("the single shape's config mentions etcd or is not bbolt:\n%s\n%s", cfg, out)
				}
			}

			// deploy/kubernetes holds these manifests for kubectl.
			want := manifestHeader(s.name, ha) + strings.Join(docs, "\n---\n") + "\n"
			path := filepath.Join("..", "kubernetes", s.manifest)
			if *update {
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, []byte(want)) {
				t.Errorf("%s is not what the chart renders (%v): run `make helm-test HELM_TEST_FLAGS=-update` and commit it", path, err)
			}
		})
	}
}

func manifestHeader(shape string, ha bool) string {
	how := "(helm template valet -n valet, default values).\n"
	if ha {
		how = "(helm template valet -n valet --set replicas=3,storage.engine=etcd,\n" +
			"# storage.etcd.tlsSecret=valet-etcd-tls and storage.etcd.endpoints set to\n" +
			"# the three members https://etcd-{0,1,2}.etcd:2379).\n"
	}
	h := "# valet in Kubernetes, " + shape + ": deploy/helm/valet rendered by\n" +
		"# `make helm-test HELM_TEST_FLAGS=-update` " + how +
		"# Create the namespace and the KEK Secret first:\n" +
		"#   kubectl create namespace valet\n" +
		"#   kubectl -n valet create secret generic valet-kek --from-literal=kek=$(openssl rand -hex 32)\n"
	if ha {
		h += "# and the etcd client TLS Secret (the CA of the etcd members, a client\n" +
			"# certificate and key):\n" +
			"#   kubectl -n valet create secret generic valet-etcd-tls --from-file=ca.pem --from-file=cert.pem --from-file=key.pem\n"
	}
	return h + "# then edit the ConfigMap's valet.yaml (issuers, roles, operators) and apply.\n"
}

func matches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func hasSecretVolume(pod corev1.PodSpec, name string) bool {
	return slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == name })
}

func hasMount(c corev1.Container, path string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == path })
}

// TestChartRefuses: values valet cannot run are refused at rendering,
// saying why.
func TestChartRefuses(t *testing.T) {
	c := loadChart(t)
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"etcd with one replica", map[string]any{"storage": map[string]any{"engine": "etcd", "etcd": map[string]any{"endpoints": []any{"http://etcd:2379"}}}},
			"with storage.engine etcd, replicas must be 2 or more"},
		{"etcd without endpoints", map[string]any{"replicas": 2, "storage": map[string]any{"engine": "etcd"}},
			"storage.etcd.endpoints must not be empty"},
		{"etcd with a volume one node mounts", map[string]any{"replicas": 2, "persistence": map[string]any{"accessMode": "ReadWriteOnce"},
			"storage": map[string]any{"engine": "etcd", "etcd": map[string]any{"endpoints": []any{"http://etcd:2379"}}}},
			`persistence.accessMode must be ReadWriteMany (every replica reads the same key files); it is "ReadWriteOnce"`},
		{"bbolt with two replicas", map[string]any{"replicas": 2}, "with storage.engine bbolt, replicas must be 1"},
		{"an unknown engine", map[string]any{"storage": map[string]any{"engine": "redis"}}, `storage.engine must be bbolt or etcd; it is "redis"`},
		{"a key the chart owns", map[string]any{"config": map[string]any{"data_dir": "/tmp"}}, "config.data_dir is set by the chart"},
		{"no KEK Secret", map[string]any{"kek": map[string]any{"existingSecret": ""}}, "kek.existingSecret must name a Secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, c, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
