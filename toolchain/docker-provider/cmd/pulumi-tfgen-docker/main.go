// Command pulumi-tfgen-docker writes schema.json and bridge-metadata.json for our docker
// provider: `pulumi-tfgen-docker schema --out DIR --skip-docs --skip-examples`.
package main

import (
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"

	"sin.local/toolchain/docker-provider/provider"
	"sin.local/toolchain/docker-provider/version"
)

func main() {
	tfgen.Main("docker", version.Version, provider.Provider(version.Version, nil))
}
