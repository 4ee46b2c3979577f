// Package serve runs a Pulumi plugin's gRPC server the way the engine expects: the port on the
// first line of stdout, and no orphan left behind when the engine goes away.
package serve

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/logging"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"google.golang.org/grpc"
)

// Serve registers the plugin's services with register and serves until the engine at engine
// (empty: none, as in tests) stops answering or the server fails; what names the plugin in errors.
func Serve(what, engine string, register func(*grpc.Server)) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if engine != "" {
		go func() {
			if err := rpcutil.Healthcheck(ctx, engine, 5*time.Minute, cancel); err != nil {
				logging.V(3).Infof("engine health check stopped: %v", err)
			}
		}()
	}
	stop := make(chan bool)
	go func() {
		<-ctx.Done()
		close(stop)
	}()
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: stop,
		Init: func(s *grpc.Server) error {
			register(s)
			return nil
		},
		Options: rpcutil.OpenTracingServerInterceptorOptions(nil),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: could not start the %s gRPC server: %v\n", what, err)
		os.Exit(1)
	}
	// The engine reads the port from our first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fmt.Fprintf(os.Stderr, "error: %s stopped serving: %v\n", what, err)
		os.Exit(1)
	}
}
