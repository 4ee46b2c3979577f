// Package shim exposes the kreuzwerker Docker provider's SDKv2 half to the Pulumi bridge.
//
// Its import path sits under github.com/terraform-providers/terraform-provider-docker, which
// is what lets it import that module's internal/provider package.
package shim

import (
	sdkschema "github.com/hashicorp/terraform-plugin-sdk/v2/helper/schema"
	upstream "github.com/terraform-providers/terraform-provider-docker/internal/provider"
)

// SDKv2Provider builds the upstream SDKv2 provider (all the docker_* resources and data
// sources that pulumi-docker 4.x bridges). The plugin-framework half upstream also has
// (actions, docker_compose, a containers data source) is not exposed.
func SDKv2Provider(version string) *sdkschema.Provider {
	p := upstream.New(version)()
	keepSDK4Fields(p)
	return p
}

// keepSDK4Fields puts back inputs that the pulumi-docker 4.11 SDKs still send but that
// upstream dropped after its v3.9.0 release, so programs written against those SDKs keep
// passing the provider's input checks. They are accepted and stored, and change nothing.
func keepSDK4Fields(p *sdkschema.Provider) {
	if network, ok := p.ResourcesMap["docker_network"]; ok {
		if _, has := network.Schema["check_duplicate"]; !has {
			network.Schema["check_duplicate"] = &sdkschema.Schema{
				Type:        sdkschema.TypeBool,
				Optional:    true,
				ForceNew:    true,
				Description: "Requests daemon to check for networks with same name. Accepted for compatibility; has no effect (Docker ignores it since API 1.44).",
				Deprecated:  "This option is deprecated and has no effect.",
			}
		}
	}
}
