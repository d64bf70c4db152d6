// Command cpualloc runs the kubelet's own CPU manager code on a fixture sysfs tree: cadvisor's
// topology discovery (sysinfo.GetNodesInfo, what the kubelet's cadvisor does at start), the CPU
// manager's topology (topology.Discover) and its static policy (NewStaticPolicy, Allocate,
// RemoveContainer), all from the k8s.io/kubernetes module the test bed builds its kubelet from
// (this module's go.mod). tests/test_kubelet_cpu_allocation.py writes the fixtures and compares
// the kubelet's picks with k3svirt's own choice (operator/k3svirt_operator/cputopo.py).
//
// usage: cpualloc < request.json > result.json
//
//	request: {"root": "<a fixture /sys: devices/system/{cpu,node}>", "reserved": "7",
//	          "options": {"strict-cpu-reservation": "true"}, "uncoreFromL2": false,
//	          "steps": [{"pod": "a", "cpus": 4}, {"pod": "a", "release": true}]}
//	result:  {"topology": {...}, "cadvisor": [...], "steps": [{"pod": "a", "cpus": [0,1,2,3]}]}
//
// uncoreFromL2 is a what-if, not the kubelet's behaviour: it puts each core's shared L2 into the
// core's UncoreCaches (cadvisor itself only ever reports level-3+ caches there), to show what the
// kubelet's prefer-align-cpus-by-uncorecache would do if cadvisor saw L2 modules.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	cadvisorapi "github.com/google/cadvisor/info/v1"
	"github.com/google/cadvisor/utils/sysfs"
	"github.com/google/cadvisor/utils/sysinfo"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/kubernetes/pkg/kubelet/cm/cpumanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/cpumanager/state"
	"k8s.io/kubernetes/pkg/kubelet/cm/cpumanager/topology"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/utils/cpuset"
)

type request struct {
	Root         string            `json:"root"`
	Reserved     string            `json:"reserved"`
	Options      map[string]string `json:"options"`
	UncoreFromL2 bool              `json:"uncoreFromL2"`
	Steps        []step            `json:"steps"`
}

type step struct {
	Pod     string `json:"pod"`
	CPUs    int    `json:"cpus"`
	Release bool   `json:"release"`
}

type stepResult struct {
	Pod   string `json:"pod"`
	CPUs  []int  `json:"cpus,omitempty"`
	Error string `json:"error,omitempty"`
}

type cpuInfo struct {
	Core   int `json:"core"`
	Socket int `json:"socket"`
	NUMA   int `json:"numa"`
	Uncore int `json:"uncore"`
}

type topo struct {
	NumCPUs        int             `json:"numCPUs"`
	NumCores       int             `json:"numCores"`
	NumSockets     int             `json:"numSockets"`
	NumNUMANodes   int             `json:"numNUMANodes"`
	NumUncoreCache int             `json:"numUncoreCache"`
	CPUsPerCore    int             `json:"cpusPerCore"`
	CPUs           map[int]cpuInfo `json:"cpus"`
}

type cadvisorCore struct {
	Threads      []int `json:"threads"`
	CacheLevels  []int `json:"cacheLevels"`  // the caches cadvisor kept as this core's own
	UncoreCaches []int `json:"uncoreCaches"` // ids of the caches it reports as the core's uncore cache
}

type result struct {
	Topology   topo           `json:"topology"`
	NodeCaches []int          `json:"nodeCacheLevels"`
	Cadvisor   []cadvisorCore `json:"cadvisor"`
	Steps      []stepResult   `json:"steps"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail("reading the request: %v", err)
	}
	fs := &rootedSysFs{SysFs: sysfs.NewRealSysFs(), root: req.Root}
	nodes, numCPUs, err := sysinfo.GetNodesInfo(fs)
	if err != nil {
		fail("cadvisor's topology of %s: %v", req.Root, err)
	}
	if req.UncoreFromL2 {
		if err := l2AsUncore(fs, nodes); err != nil {
			fail("%v", err)
		}
	}
	sockets := map[int]bool{}
	for _, n := range nodes {
		for _, c := range n.Cores {
			sockets[c.SocketID] = true
		}
	}
	machine := &cadvisorapi.MachineInfo{NumCores: numCPUs, NumSockets: len(sockets), Topology: nodes}
	logger := logr.Discard()
	t, err := topology.Discover(logger, machine)
	if err != nil {
		fail("the CPU manager's topology: %v", err)
	}
	reserved, err := cpuset.Parse(req.Reserved)
	if err != nil {
		fail("reserved %q: %v", req.Reserved, err)
	}
	policy, err := cpumanager.NewStaticPolicy(logger, t, reserved.Size(), reserved, topologymanager.NewFakeManager(), req.Options)
	if err != nil {
		fail("the static policy: %v", err)
	}
	st := state.NewMemoryState(logger)
	if err := policy.Start(logger, st); err != nil {
		fail("starting the static policy: %v", err)
	}
	out := result{Topology: describe(t)}
	for _, n := range nodes {
		for _, c := range n.Caches {
			out.NodeCaches = append(out.NodeCaches, c.Level)
		}
		for _, c := range n.Cores {
			cc := cadvisorCore{Threads: c.Threads, CacheLevels: []int{}, UncoreCaches: []int{}}
			for _, k := range c.Caches {
				cc.CacheLevels = append(cc.CacheLevels, k.Level)
			}
			for _, k := range c.UncoreCaches {
				cc.UncoreCaches = append(cc.UncoreCaches, k.Id)
			}
			out.Cadvisor = append(out.Cadvisor, cc)
		}
	}
	for _, s := range req.Steps {
		out.Steps = append(out.Steps, run(logger, policy, st, s))
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing the result: %v", err)
	}
}

// run admits (or releases) one Guaranteed pod with a single container of s.CPUs whole CPUs, the
// shape of a k3svirt reservation pod, and reports the exclusive CPUs the policy gave it.
func run(logger logr.Logger, policy cpumanager.Policy, st state.State, s step) stepResult {
	uid := "pod-" + s.Pod
	if s.Release {
		if err := policy.RemoveContainer(logger, st, uid, "reserve"); err != nil {
			return stepResult{Pod: s.Pod, Error: err.Error()}
		}
		return stepResult{Pod: s.Pod}
	}
	q := resource.MustParse(strconv.Itoa(s.CPUs))
	res := v1.ResourceList{v1.ResourceCPU: q, v1.ResourceMemory: resource.MustParse("64Mi")}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.Pod, Namespace: "default", UID: types.UID(uid)},
		Spec: v1.PodSpec{Containers: []v1.Container{{
			Name: "reserve", Resources: v1.ResourceRequirements{Requests: res, Limits: res},
		}}},
	}
	if err := policy.Allocate(logger, st, pod, &pod.Spec.Containers[0]); err != nil {
		return stepResult{Pod: s.Pod, Error: err.Error()}
	}
	cpus, ok := st.GetCPUSet(uid, "reserve")
	if !ok {
		return stepResult{Pod: s.Pod, Error: "no exclusive CPUs (shared pool)"}
	}
	return stepResult{Pod: s.Pod, CPUs: cpus.List()}
}

func describe(t *topology.CPUTopology) topo {
	out := topo{NumCPUs: t.NumCPUs, NumCores: t.NumCores, NumSockets: t.NumSockets,
		NumNUMANodes: t.NumNUMANodes, NumUncoreCache: t.NumUncoreCache, CPUsPerCore: t.CPUsPerCore(),
		CPUs: map[int]cpuInfo{}}
	for cpu, info := range t.CPUDetails {
		out.CPUs[cpu] = cpuInfo{Core: info.CoreID, Socket: info.SocketID, NUMA: info.NUMANodeID, Uncore: info.UncoreCacheID}
	}
	return out
}

// l2AsUncore is the what-if of uncoreFromL2: each core's L2 (index2) as its one uncore cache.
func l2AsUncore(fs *rootedSysFs, nodes []cadvisorapi.Node) error {
	for n := range nodes {
		for c := range nodes[n].Cores {
			core := &nodes[n].Cores[c]
			l2, err := fs.GetCacheInfo(core.Threads[0], "index2")
			if err != nil {
				return fmt.Errorf("the L2 of CPU %d: %v", core.Threads[0], err)
			}
			core.UncoreCaches = []cadvisorapi.Cache{{Id: l2.Id, Size: l2.Size, Level: l2.Level, Type: l2.Type}}
		}
	}
	return nil
}

// rootedSysFs is cadvisor's real sysfs reader with its fixed /sys paths moved below a fixture
// root: the path-taking methods are cadvisor's own (they get paths below the root), the few
// with built-in paths are rewritten the same way.
type rootedSysFs struct {
	sysfs.SysFs
	root string
}

// sys maps a /sys path to the fixture (paths already below the root are kept).
func (fs *rootedSysFs) sys(p string) string {
	if strings.HasPrefix(p, fs.root+"/") {
		return p
	}
	return filepath.Join(fs.root, strings.TrimPrefix(p, "/sys"))
}

func (fs *rootedSysFs) GetNodesPaths() ([]string, error) {
	return filepath.Glob(fs.sys("/sys/devices/system/node/node*[0-9]"))
}

func (fs *rootedSysFs) GetCPUsPaths(cpusPath string) ([]string, error) {
	return fs.SysFs.GetCPUsPaths(fs.sys(cpusPath))
}

func (fs *rootedSysFs) GetCaches(id int) ([]os.FileInfo, error) {
	entries, err := os.ReadDir(fs.sys(fmt.Sprintf("/sys/devices/system/cpu/cpu%d/cache", id)))
	if err != nil {
		return nil, err
	}
	var out []os.FileInfo
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// GetCacheInfo reads what cadvisor's realSysFs.GetCacheInfo reads (id, size, level, type and the
// CPU count of shared_cpu_map), from the fixture.
func (fs *rootedSysFs) GetCacheInfo(cpu int, name string) (sysfs.CacheInfo, error) {
	dir := fs.sys(fmt.Sprintf("/sys/devices/system/cpu/cpu%d/cache/%s", cpu, name))
	read := func(f string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		return strings.TrimSpace(string(b)), err
	}
	var info sysfs.CacheInfo
	var err error
	var s string
	if s, err = read("id"); err != nil {
		return info, err
	}
	if info.Id, err = strconv.Atoi(s); err != nil {
		return info, err
	}
	if s, err = read("size"); err != nil {
		return info, err
	}
	kib, err := strconv.ParseUint(strings.TrimSuffix(s, "K"), 10, 64)
	if err != nil {
		return info, err
	}
	info.Size = kib * 1024
	if s, err = read("level"); err != nil {
		return info, err
	}
	if info.Level, err = strconv.Atoi(s); err != nil {
		return info, err
	}
	if info.Type, err = read("type"); err != nil {
		return info, err
	}
	if s, err = read("shared_cpu_map"); err != nil {
		return info, err
	}
	for _, word := range strings.Split(s, ",") {
		m, err := strconv.ParseUint(word, 16, 64)
		if err != nil {
			return info, err
		}
		for ; m != 0; m &= m - 1 {
			info.Cpus++
		}
	}
	return info, nil
}

func (fs *rootedSysFs) IsCPUOnline(dir string) bool {
	b, err := os.ReadFile(fs.sys("/sys/devices/system/cpu/online"))
	if err != nil {
		return os.IsNotExist(err)
	}
	online, err := cpuset.Parse(strings.TrimSpace(string(b)))
	if err != nil {
		return false
	}
	id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "cpu"))
	return err == nil && online.Contains(id)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cpualloc: "+format+"\n", args...)
	os.Exit(1)
}
