// Command kubelet is upstream's node agent, built from the k8s.io/kubernetes module: it runs the
// test bed's pods through containerd (CRI), as K3s's embedded kubelet does.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
