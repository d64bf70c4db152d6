// Command kube-scheduler is upstream's scheduler, built from the k8s.io/kubernetes module: it
// binds the test bed's pods to its one node, as K3s's embedded scheduler does.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}
