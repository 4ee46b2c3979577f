// Package provider maps the kreuzwerker Docker Terraform provider onto Pulumi names that match
// the published pulumi-docker 4.x SDKs (package "docker", module "index").
package provider

import (
	"unicode"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	bridgetokens "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	sdkv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/contract"
	"github.com/terraform-providers/terraform-provider-docker/shim"
)

const (
	pkgName    = "docker"
	mainModule = "index"
)

// token builds "docker:index/<lowerFirst(name)>:<name>".
func token(name string) string {
	file := string(unicode.ToLower(rune(name[0]))) + name[1:]
	return pkgName + ":" + mainModule + "/" + file + ":" + name
}

func resourceTok(name string) tokens.Type           { return tokens.Type(token(name)) }
func dataSourceTok(name string) tokens.ModuleMember { return tokens.ModuleMember(token(name)) }

// Provider returns the bridge description of the provider. metadata is the content of
// bridge-metadata.json written by tfgen (nil or empty when tfgen itself runs).
func Provider(version string, metadata []byte) tfbridge.ProviderInfo {
	info := tfbridge.ProviderInfo{
		P:            sdkv2.NewProvider(shim.SDKv2Provider(version)),
		Name:         pkgName,
		Version:      version,
		DisplayName:  "Docker",
		Publisher:    "Pulumi",
		Description:  "A Pulumi package for interacting with Docker in Pulumi programs",
		Keywords:     []string{"pulumi", "docker"},
		License:      "Apache-2.0",
		Homepage:     "https://pulumi.com",
		Repository:   "https://github.com/pulumi/pulumi-docker",
		GitHubOrg:    "kreuzwerker",
		MetadataInfo: tfbridge.NewProviderMetadata(metadata),
		Config: map[string]*tfbridge.SchemaInfo{
			// Falls back to $DOCKER_HOST, as the published SDK's config getter does.
			"host": {Default: &tfbridge.DefaultInfo{EnvVars: []string{"DOCKER_HOST"}}},
			// A list in Terraform, but the SDK calls it registryAuth (singular, not flattened).
			"registry_auth": {Name: "registryAuth", MaxItemsOne: tfbridge.False()},
		},
		Resources: map[string]*tfbridge.ResourceInfo{
			// Names that differ from what the default token rule would give.
			"docker_config": {Tok: resourceTok("ServiceConfig")},
			"docker_image": {
				Tok:    resourceTok("RemoteImage"),
				Fields: map[string]*tfbridge.SchemaInfo{"name": {Name: "name"}},
			},
			"docker_container": {
				Tok:                 resourceTok("Container"),
				DeleteBeforeReplace: true,
				Fields: map[string]*tfbridge.SchemaInfo{
					// One command (argv), so not pluralised to "commands".
					"command": {Name: "command"},
					// Upstream's name is already a collection; keep it as is.
					"networks_advanced": {Name: "networksAdvanced"},
				},
			},
		},
		DataSources: map[string]*tfbridge.DataSourceInfo{
			"docker_image": {Tok: dataSourceTok("getRemoteImage")},
		},
		Python: &tfbridge.PythonInfo{
			Requires: map[string]string{"pulumi": ">=3.0.0,<4.0.0"},
		},
	}

	// Every other docker_foo becomes docker:index/foo:Foo (resources) or
	// docker:index/getFoo:getFoo (data sources).
	err := info.ComputeTokens(bridgetokens.SingleModule("docker_", mainModule,
		bridgetokens.MakeStandard(pkgName)))
	contract.AssertNoErrorf(err, "computing docker tokens")

	info.SetAutonaming(255, "-")
	return info
}
