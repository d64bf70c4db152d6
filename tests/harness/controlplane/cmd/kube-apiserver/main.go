// Command kube-apiserver is upstream's API server, built from the k8s.io/kubernetes module.
// It stands in for K3s's embedded API server in tests (see tests/harness/README.md for why).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
