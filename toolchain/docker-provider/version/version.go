// Package version holds the provider version; the build overrides it with -ldflags -X.
package version

// Version is reported to the Pulumi engine and written into schema.json.
var Version = "4.11.2"
