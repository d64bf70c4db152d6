// Command kube-proxy is upstream's Service proxy (iptables mode in the test bed), built from the
// k8s.io/kubernetes module, as K3s embeds it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
