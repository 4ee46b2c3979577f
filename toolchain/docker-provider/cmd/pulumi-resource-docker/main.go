// Command pulumi-resource-docker is the Pulumi resource plugin for package "docker".
//
// schema-embed.json and bridge-metadata.json are not in git: docker-provider.sh generates
// them with pulumi-tfgen-docker right before it builds this package.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"

	"sin.local/toolchain/docker-provider/provider"
	"sin.local/toolchain/docker-provider/version"
)

//go:embed schema-embed.json
var schemaJSON []byte

//go:embed bridge-metadata.json
var bridgeMetadata []byte

func main() {
	tfbridge.Main("docker", version.Version, provider.Provider(version.Version, bridgeMetadata), schemaJSON)
}
