// A tiny module of ours that lives, by import path, inside the upstream provider's tree, so
// that Go's "internal" rule lets it reach upstream's internal/provider package.
module github.com/terraform-providers/terraform-provider-docker/shim

go 1.25.8

require (
	github.com/hashicorp/terraform-plugin-sdk/v2 v2.40.1
	github.com/terraform-providers/terraform-provider-docker v0.0.0
)
