// Command k3svirt-cri-sweep stops and removes every pod sandbox of a CRI runtime, the way kubelet
// tears a pod down: containerd kills the pod's containers, runs the CNI DEL (frees the pod's IP,
// deletes its veth and port mappings) and removes its network namespace. node.sh runs it after
// stopping kubelet, so stopping the node leaves no container, shim, netns or IP lease behind.
//
// usage: k3svirt-cri-sweep unix:///path/to/containerd.sock
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	remote "k8s.io/cri-client/pkg"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: k3svirt-cri-sweep unix:///path/to/containerd.sock")
		os.Exit(2)
	}
	ctx := context.Background()
	rt, err := remote.NewRemoteRuntimeService(ctx, os.Args[1], 2*time.Minute, nil, false)
	if err != nil {
		fail("connecting to %s: %v", os.Args[1], err)
	}
	pods, err := rt.ListPodSandbox(ctx, nil)
	if err != nil {
		fail("listing pod sandboxes: %v", err)
	}
	failed := 0
	for _, p := range pods {
		name := p.GetMetadata().GetNamespace() + "/" + p.GetMetadata().GetName()
		if err := rt.StopPodSandbox(ctx, p.GetId()); err != nil {
			fmt.Fprintf(os.Stderr, "stopping pod %s: %v\n", name, err)
			failed++
			continue
		}
		if err := rt.RemovePodSandbox(ctx, p.GetId()); err != nil {
			fmt.Fprintf(os.Stderr, "removing pod %s: %v\n", name, err)
			failed++
		}
	}
	fmt.Printf("removed %d of %d pod sandboxes\n", len(pods)-failed, len(pods))
	if failed > 0 {
		os.Exit(1)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "k3svirt-cri-sweep: "+format+"\n", args...)
	os.Exit(1)
}
