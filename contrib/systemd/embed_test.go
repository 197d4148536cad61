package systemd

import (
	"errors"
	"strings"
	"testing"
)

// settings returns the unit's KEY=VALUE lines (comments left out), each
// key's values in order.
func settings(u Unit) map[string][]string {
	m := map[string][]string{}
	for _, line := range strings.Split(string(u.Data), "\n") {
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		m[k] = append(m[k], v)
	}
	return m
}

func one(t *testing.T, u Unit, s map[string][]string, key string) string {
	t.Helper()
	if len(s[key]) != 1 {
		t.Fatalf("%s: %s= set %d times, want once", u.Name, key, len(s[key]))
	}
	return s[key][0]
}

// TestUnitsHardening checks what every unit must have: each service a
// oneshot at low priority in a read-only system with the store's
// directories writable, no new privileges and a capability bounding set;
// no network but for repair (Unix sockets only; gc and gc --auto, which
// serve the gc socket, without a network namespace of their own); gc's home directories and /tmp visible (an
// indirect root may be there); every timer persistent, randomised and
// starting a service that exists.
func TestUnitsHardening(t *testing.T) {
	units := Units()
	names := map[string]bool{}
	for _, u := range units {
		names[u.Name] = true
	}
	for _, want := range []string{"storekeeper-gc.service", "storekeeper-gc.timer", "storekeeper-gc-auto.service", "storekeeper-gc-auto.timer", "storekeeper-optimise.service", "storekeeper-verify.service", "storekeeper-verify.timer", "storekeeper-repair.service"} {
		if !names[want] {
			t.Errorf("no unit %s", want)
		}
	}
	for _, u := range units {
		s := settings(u)
		base := strings.TrimSuffix(strings.TrimSuffix(u.Name, ".service"), ".timer")
		if u.Timer() {
			if one(t, u, s, "Persistent") != "true" || one(t, u, s, "RandomizedDelaySec") == "" || one(t, u, s, "WantedBy") != "timers.target" {
				t.Errorf("%s: want Persistent=true, a RandomizedDelaySec and WantedBy=timers.target", u.Name)
			}
			if !names[base+".service"] {
				t.Errorf("%s starts %s.service, which is not there", u.Name, base)
			}
			continue
		}
		if one(t, u, s, "Type") != "oneshot" || one(t, u, s, "Nice") != "19" {
			t.Errorf("%s: want Type=oneshot, Nice=19", u.Name)
		}
		args := ExecStart(u.Data)
		if len(args) < 2 || args[0] != DefaultBinary {
			t.Errorf("%s: ExecStart %q does not run %s", u.Name, args, DefaultBinary)
		}
		mf := strings.Join(args, " ")
		if want := "--metrics-file " + DefaultMetricsDir + "/" + base + ".prom"; !strings.Contains(mf, want) {
			t.Errorf("%s: ExecStart %q lacks %q", u.Name, mf, want)
		}
		for k, v := range map[string]string{"ProtectSystem": "strict", "NoNewPrivileges": "yes", "ProtectProc": "default", "ProcSubset": "all", "SystemCallArchitectures": "native", "MemoryDenyWriteExecute": "yes", "PrivateMounts": "yes"} {
			if got := one(t, u, s, k); got != v {
				t.Errorf("%s: %s=%s, want %s", u.Name, k, got, v)
			}
		}
		rw := strings.Join(s["ReadWritePaths"], " ")
		if !strings.Contains(rw, "/nix/var") || !strings.Contains(rw, "-"+DefaultMetricsDir) {
			t.Errorf("%s: ReadWritePaths %q lacks /nix/var or the metrics directory", u.Name, rw)
		}
		if base != "storekeeper-verify" && !strings.Contains(" "+rw+" ", " /nix/store ") {
			t.Errorf("%s: ReadWritePaths %q lacks /nix/store", u.Name, rw)
		}
		if base == "storekeeper-verify" && strings.Contains(rw, "/nix/store") {
			t.Errorf("%s: verify writes no store, yet ReadWritePaths is %q", u.Name, rw)
		}
		caps := one(t, u, s, "CapabilityBoundingSet")
		if caps == "" || strings.HasPrefix(caps, "~") {
			t.Errorf("%s: CapabilityBoundingSet=%s is no allow-list", u.Name, caps)
		}
		net := s["PrivateNetwork"]
		af := one(t, u, s, "RestrictAddressFamilies")
		if base == "storekeeper-repair" {
			if len(net) != 0 || !strings.Contains(af, "AF_INET") {
				t.Errorf("%s: repair needs the network: PrivateNetwork=%v, RestrictAddressFamilies=%s", u.Name, net, af)
			}
		} else if strings.HasPrefix(base, "storekeeper-gc") {
			// gc serves the gc socket: in a network namespace of its own
			// its listener is invisible to lock status (unix_diag).
			if len(net) != 0 || af != "AF_UNIX" {
				t.Errorf("%s: want RestrictAddressFamilies=AF_UNIX and no PrivateNetwork (it hides the gc socket's listener), got %v and %s", u.Name, net, af)
			}
		} else if len(net) != 1 || net[0] != "yes" || af != "AF_UNIX" {
			t.Errorf("%s: want PrivateNetwork=yes and RestrictAddressFamilies=AF_UNIX, got %v and %s", u.Name, net, af)
		}
		if strings.HasPrefix(base, "storekeeper-gc") {
			if one(t, u, s, "ProtectHome") != "read-only" || one(t, u, s, "PrivateTmp") != "no" {
				t.Errorf("%s: gc reads indirect roots anywhere: want ProtectHome=read-only and PrivateTmp=no", u.Name)
			}
			if !strings.Contains(caps, "CAP_SYS_PTRACE") || !strings.Contains(caps, "CAP_SETUID") {
				t.Errorf("%s: gc needs CAP_SYS_PTRACE (runtime roots) and CAP_SETUID (per-user profiles): %s", u.Name, caps)
			}
		}
	}
}

func TestRender(t *testing.T) {
	var gc Unit
	for _, u := range Units() {
		if u.Name == "storekeeper-gc.service" {
			gc = u
		}
	}
	out, err := Render(gc, Options{Binary: "/opt/sk/bin/storekeeper", MetricsDir: "/srv/metrics"})
	if err != nil {
		t.Fatal(err)
	}
	args := ExecStart(out)
	if args[0] != "/opt/sk/bin/storekeeper" || !strings.Contains(strings.Join(args, " "), "--metrics-file /srv/metrics/storekeeper-gc.prom") {
		t.Errorf("ExecStart %q", args)
	}
	if !strings.Contains(string(out), "\nReadWritePaths=-/srv/metrics\n") || strings.Contains(string(out), "\nReadWritePaths=-"+DefaultMetricsDir) {
		t.Errorf("metrics directory not replaced:\n%s", out)
	}
	// Only those lines change.
	if a, b := strings.Count(string(out), "\n"), strings.Count(string(gc.Data), "\n"); a != b {
		t.Errorf("%d lines, want %d", a, b)
	}
	out, err = Render(gc, Options{NoMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(ExecStart(out), " "), "--metrics-file") || strings.Contains(string(out), "ReadWritePaths=-") || strings.Contains(string(out), metricsComment) {
		t.Errorf("NoMetrics left metrics in:\n%s", out)
	}
	if ExecStart(out)[0] != DefaultBinary {
		t.Errorf("default binary: %q", ExecStart(out))
	}
	for _, bad := range []string{"storekeeper", "/opt/my bin/storekeeper", "/opt/%n", "/opt/$HOME", "/opt//x", "/opt/x/", "/opt/a\\b", "/opt/\x1b[31m", "/opt/a'b", "/opt/sk\xff"} {
		if _, err := Render(gc, Options{Binary: bad}); !errors.Is(err, ErrBadPath) {
			t.Errorf("binary %q: err %v, want ErrBadPath", bad, err)
		}
		if _, err := Render(gc, Options{MetricsDir: bad}); !errors.Is(err, ErrBadPath) {
			t.Errorf("metrics dir %q: err %v, want ErrBadPath", bad, err)
		}
	}
}
