// Command kube-controller-manager is upstream's controller manager (Deployments, ReplicaSets,
// namespace cleanup, garbage collection), built from the k8s.io/kubernetes module.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
