package test

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The parts of the Kubernetes objects that the test checks.
type (
	k8sMeta struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	}
	k8sProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port string `yaml:"port"`
		} `yaml:"httpGet"`
	}
	k8sContainer struct {
		Image   string   `yaml:"image"`
		Args    []string `yaml:"args"`
		Env     []k8sEnv `yaml:"env"`
		EnvFrom []struct {
			SecretRef *struct {
				Name string `yaml:"name"`
			} `yaml:"secretRef"`
		} `yaml:"envFrom"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		StartupProbe   *k8sProbe `yaml:"startupProbe"`
		LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
		ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		SecurityContext struct {
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
		} `yaml:"securityContext"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		} `yaml:"volumeMounts"`
	}
	k8sEnv struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	}
	k8sDeployment struct {
		Spec struct {
			Replicas int `yaml:"replicas"`
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Template struct {
				Metadata k8sMeta `yaml:"metadata"`
				Spec     struct {
					EnableServiceLinks *bool `yaml:"enableServiceLinks"`
					SecurityContext    struct {
						RunAsNonRoot bool `yaml:"runAsNonRoot"`
						FSGroup      int  `yaml:"fsGroup"`
					} `yaml:"securityContext"`
					Containers []k8sContainer `yaml:"containers"`
					Volumes    []struct {
						Name                  string `yaml:"name"`
						PersistentVolumeClaim struct {
							ClaimName string `yaml:"claimName"`
						} `yaml:"persistentVolumeClaim"`
						EmptyDir *struct {
							SizeLimit string `yaml:"sizeLimit"`
						} `yaml:"emptyDir"`
						Secret *struct {
							SecretName string `yaml:"secretName"`
						} `yaml:"secret"`
					} `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	k8sSecret struct {
		StringData map[string]string `yaml:"stringData"`
	}
	k8sService struct {
		Spec struct {
			Selector map[string]string `yaml:"selector"`
			Ports    []struct {
				Port       int    `yaml:"port"`
				TargetPort string `yaml:"targetPort"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
)

// TestKubernetesManifest reads each example of deploy/kubernetes as
// Kubernetes would (every document valid YAML), checks that its parts fit
// together, and has the binary check its settings: every variable must be
// a real setting, and the values must validate. regmirror.yaml keeps the
// cache on a claim; regmirror-s3.yaml in a bucket, with the data dir on an
// emptyDir and the credentials from a Secret.
func TestKubernetesManifest(t *testing.T) {
	for _, tc := range []struct {
		file  string
		kinds []string
	}{
		{"regmirror.yaml", []string{"PersistentVolumeClaim", "Deployment", "Service"}},
		{"regmirror-s3.yaml", []string{"Secret", "ServiceAccount", "Deployment", "Service"}},
		{"regmirror-replicas.yaml", []string{"Secret", "ServiceAccount", "Deployment", "Service"}},
	} {
		t.Run(tc.file, func(t *testing.T) { checkKubernetesManifest(t, tc.file, tc.kinds) })
	}
}

func checkKubernetesManifest(t *testing.T, file string, kinds []string) {
	f, err := os.Open(filepath.Join("..", "deploy", "kubernetes", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	docs := map[string]*yaml.Node{} // by kind
	names := map[string]string{}
	dec := yaml.NewDecoder(f)
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var head struct {
			APIVersion string  `yaml:"apiVersion"`
			Kind       string  `yaml:"kind"`
			Metadata   k8sMeta `yaml:"metadata"`
		}
		if err := doc.Decode(&head); err != nil {
			t.Fatal(err)
		}
		if head.APIVersion == "" || head.Kind == "" || head.Metadata.Name == "" {
			t.Fatalf("a document without apiVersion, kind or metadata.name: %+v", head)
		}
		docs[head.Kind], names[head.Kind] = &doc, head.Metadata.Name
	}
	for _, kind := range kinds {
		if docs[kind] == nil {
			t.Fatalf("%s has no %s", file, kind)
		}
	}
	var dep k8sDeployment
	var svc k8sService
	if err := docs["Deployment"].Decode(&dep); err != nil {
		t.Fatal(err)
	}
	if err := docs["Service"].Decode(&svc); err != nil {
		t.Fatal(err)
	}

	pod := dep.Spec.Template.Spec
	c0 := dep.Spec.Template.Spec.Containers
	fleet := len(c0) == 1 && slices.ContainsFunc(c0[0].Env, func(e k8sEnv) bool { return e.Name == "REGMIRROR_PEER_TOKEN_FILE" })
	if fleet && dep.Spec.Replicas < 2 {
		t.Errorf("replicas = %d in multi-replica mode", dep.Spec.Replicas)
	} else if !fleet && dep.Spec.Replicas != 1 {
		t.Errorf("replicas = %d: the store's lock allows one pod per volume, and a bucket one mirror outside multi-replica mode", dep.Spec.Replicas)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	env := map[string]string{}
	var environ []string
	// The values Kubernetes gives the downward API's fields, and $(VAR)
	// expanded as it expands them, for the settings check below.
	fields := map[string]string{"status.podIP": "10.0.3.7", "metadata.name": "regmirror-7d9f8-abcde"}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			v = fields[e.ValueFrom.FieldRef.FieldPath]
		}
		v = os.Expand(strings.NewReplacer("$(", "${", ")", "}").Replace(v), func(k string) string { return env[k] })
		env[e.Name] = v
		environ = append(environ, e.Name+"="+v)
	}

	// The binary says which settings exist, and whether these values do.
	cmd := exec.Command(binary, "config")
	cmd.Env = append(environ, "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("regmirror config with the manifest's environment: %v\n%s", err, out)
	}
	var settings []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		key, _, _ := strings.Cut(line, "=")
		settings = append(settings, key)
	}
	for name := range env {
		if name == "POD_IP" || name == "POD_NAME" {
			continue // the downward API's, for $(POD_IP) and $(POD_NAME)
		}
		if !slices.Contains(settings, name) {
			t.Errorf("env %s is not a setting of regmirror (it knows %v)", name, settings)
		}
	}

	portOf := func(name string) int {
		for _, p := range c.Ports {
			if p.Name == name {
				return p.ContainerPort
			}
		}
		t.Errorf("no container port named %q", name)
		return 0
	}
	for key, portName := range map[string]string{"REGMIRROR_ADDR": "registry", "REGMIRROR_METRICS_ADDR": "metrics"} {
		_, port, err := net.SplitHostPort(env[key])
		if err != nil || port != strconv.Itoa(portOf(portName)) {
			t.Errorf("%s=%q does not listen on the container port %q (%d)", key, env[key], portName, portOf(portName))
		}
	}
	for probe, want := range map[*k8sProbe]string{c.StartupProbe: "/healthz", c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port != "registry" {
			t.Errorf("a probe is %+v, want GET %s on the registry port", probe, want)
		}
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.StartupProbe == nil {
		t.Error("want startup, liveness and readiness probes")
	}
	if c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Error("the container has no memory request or limit")
	}
	if !c.SecurityContext.ReadOnlyRootFilesystem || c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
		t.Error("want readOnlyRootFilesystem: true and allowPrivilegeEscalation: false")
	}
	if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.FSGroup == 0 {
		t.Error("want runAsNonRoot and an fsGroup that makes the volume writable")
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Error("want enableServiceLinks: false: service links are REGMIRROR_* variables")
	}

	// The data dir is the mounted volume: the claim on disk, an emptyDir
	// (a cache of the bucket) with the bucket.
	mounted := ""
	for _, m := range c.VolumeMounts {
		if m.MountPath == env["REGMIRROR_DATA_DIR"] {
			mounted = m.Name
		}
	}
	claim, emptyDir := "", false
	for _, v := range pod.Volumes {
		if v.Name == mounted {
			claim, emptyDir = v.PersistentVolumeClaim.ClaimName, v.EmptyDir != nil && v.EmptyDir.SizeLimit != ""
		}
	}
	if env["REGMIRROR_STORAGE"] == "s3" {
		if mounted == "" || !emptyDir {
			t.Errorf("REGMIRROR_DATA_DIR=%s is not on an emptyDir with a sizeLimit (volume %q)", env["REGMIRROR_DATA_DIR"], mounted)
		}
		// The credentials come from the Secret, by the AWS chain's names.
		var secret k8sSecret
		if err := docs["Secret"].Decode(&secret); err != nil {
			t.Fatal(err)
		}
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != names["Secret"] {
			t.Errorf("the container's envFrom = %+v, want the Secret %s", c.EnvFrom, names["Secret"])
		}
		for _, key := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
			if _, ok := secret.StringData[key]; !ok {
				t.Errorf("the Secret has no %s", key)
			}
			if _, ok := env[key]; ok {
				t.Errorf("%s is in the Deployment's env, not in the Secret", key)
			}
		}
	} else if mounted == "" || claim != names["PersistentVolumeClaim"] {
		t.Errorf("REGMIRROR_DATA_DIR=%s is not on the claim %s (volume %q, claim %q)", env["REGMIRROR_DATA_DIR"], names["PersistentVolumeClaim"], mounted, claim)
	}
	if fleet {
		// The peer secret is a file, from a Secret volume.
		secretDir := ""
		for _, m := range c.VolumeMounts {
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName != "" {
					secretDir = m.MountPath
				}
			}
		}
		if secretDir == "" || filepath.Dir(env["REGMIRROR_PEER_TOKEN_FILE"]) != secretDir {
			t.Errorf("REGMIRROR_PEER_TOKEN_FILE=%s is not in a Secret's volume (mounted at %q)", env["REGMIRROR_PEER_TOKEN_FILE"], secretDir)
		}
		if !strings.HasPrefix(env["REGMIRROR_PEER_URL"], "http://10.0.3.7:") || env["REGMIRROR_REPLICA_NAME"] == "" {
			t.Errorf("REGMIRROR_PEER_URL=%q, REGMIRROR_REPLICA_NAME=%q: want the pod's own address and name", env["REGMIRROR_PEER_URL"], env["REGMIRROR_REPLICA_NAME"])
		}
	}
	labels := dep.Spec.Template.Metadata.Labels
	for k, v := range dep.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the Deployment's selector %s=%s does not match its pods", k, v)
		}
	}
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("the Service's selector %s=%s does not match the pods", k, v)
		}
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort != "registry" {
		t.Errorf("the Service's ports = %+v, want the registry port alone", svc.Spec.Ports)
	}
	// The image the Dockerfile builds runs "serve" by default; the manifest says so.
	if !slices.Equal(c.Args, []string{"serve"}) || c.Image == "" {
		t.Errorf("image %q, args %q", c.Image, c.Args)
	}
}
