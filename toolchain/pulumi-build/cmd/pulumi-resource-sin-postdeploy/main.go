// Command pulumi-resource-sin-postdeploy is the resource provider of the post-deploy step
// (infra/components/postdeploy.py, type sin-postdeploy:index:Step).
//
// The step itself is plain Python (infra.deploy.provider_step, around infra.deploy.steps). This
// provider decides when it runs and starts it: Check, Diff, Read and Delete are answered here,
// and only Create and Update start an interpreter, `python -m infra.deploy.provider_step` in the
// project's virtualenv, with the step's inputs as JSON on stdin (they hold both passwords, so
// never on a command line). The engine starts the step's provider for every refresh, preview,
// update and destroy, on `up` and `preview` twice; a Python dynamic provider took ~0.3 s to
// start each time, this one takes milliseconds.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// version is stamped at build time (toolchain/pulumi.sh, POSTDEPLOY_PROVIDER_VERSION).
var version = "0.0.0-dev"

// stepModule runs one step: inputs on stdin, outputs on stdout (infra/deploy/provider_step.py).
const stepModule = "infra.deploy.provider_step"

// triggers are the inputs whose change re-runs the step: where the services are (with the
// passwords), the migration files' checksums and both containers' ids.
var triggers = []string{"target", "migrations", "container_ids"}

type provider struct {
	pulumirpc.UnimplementedResourceProviderServer
}

func main() {
	flag.Parse()
	var engine string
	if args := flag.Args(); len(args) > 0 {
		engine = args[0]
	}
	serve(engine, func(s *grpc.Server) { pulumirpc.RegisterResourceProviderServer(s, &provider{}) })
}

// serve runs the gRPC server until the engine (when given) stops answering: the port on the first
// line of stdout, as the engine reads it.
func serve(engine string, register func(*grpc.Server)) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if engine != "" {
		if err := rpcutil.Healthcheck(ctx, engine, 5*time.Minute, cancel); err != nil {
			fmt.Fprintf(os.Stderr, "error: could not start the engine health check: %v\n", err)
			os.Exit(1)
		}
	}
	stop := make(chan bool)
	go func() {
		<-ctx.Done()
		close(stop)
	}()
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel:  stop,
		Init:    func(s *grpc.Server) error { register(s); return nil },
		Options: rpcutil.TracingServerInterceptorOptions(nil),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: could not start the sin-postdeploy provider: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fmt.Fprintf(os.Stderr, "error: the sin-postdeploy provider stopped serving: %v\n", err)
		os.Exit(1)
	}
}

func (p *provider) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (p *provider) GetSchema(context.Context, *pulumirpc.GetSchemaRequest) (*pulumirpc.GetSchemaResponse, error) {
	return &pulumirpc.GetSchemaResponse{Schema: `{"name":"sin-postdeploy"}`}, nil
}

func (p *provider) CheckConfig(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	return &pulumirpc.CheckResponse{Inputs: req.GetNews()}, nil
}

func (p *provider) DiffConfig(context.Context, *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	return &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE}, nil
}

// Configure: secrets arrive as plain values (the engine marks the outputs of secret inputs
// secret again), and the step is never run in a preview.
func (p *provider) Configure(context.Context, *pulumirpc.ConfigureRequest) (*pulumirpc.ConfigureResponse, error) {
	return &pulumirpc.ConfigureResponse{AcceptSecrets: false, SupportsPreview: false}, nil
}

func (p *provider) Check(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	return &pulumirpc.CheckResponse{Inputs: req.GetNews()}, nil
}

// Diff re-runs the step when a trigger changed; the step never replaces itself.
func (p *provider) Diff(_ context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	olds, news := req.GetOlds().AsMap(), req.GetNews().AsMap()
	var changed []string
	for _, key := range triggers {
		if !reflect.DeepEqual(olds[key], news[key]) {
			changed = append(changed, key)
		}
	}
	changes := pulumirpc.DiffResponse_DIFF_NONE
	if len(changed) > 0 {
		changes = pulumirpc.DiffResponse_DIFF_SOME
	}
	return &pulumirpc.DiffResponse{Changes: changes, Diffs: changed}, nil
}

func (p *provider) Create(ctx context.Context, req *pulumirpc.CreateRequest) (*pulumirpc.CreateResponse, error) {
	outputs, err := runStep(ctx, req.GetProperties())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CreateResponse{Id: stackOf(req.GetProperties()), Properties: outputs}, nil
}

func (p *provider) Update(ctx context.Context, req *pulumirpc.UpdateRequest) (*pulumirpc.UpdateResponse, error) {
	outputs, err := runStep(ctx, req.GetNews())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.UpdateResponse{Properties: outputs}, nil
}

// Read keeps what the state holds: the step's outputs are the record of its last run, and the
// schema it applied lives in the data volume, which the containers' own reads cover.
func (p *provider) Read(_ context.Context, req *pulumirpc.ReadRequest) (*pulumirpc.ReadResponse, error) {
	return &pulumirpc.ReadResponse{Id: req.GetId(), Properties: req.GetProperties(), Inputs: req.GetInputs()}, nil
}

// Delete has nothing to undo: the schema lives in the data volume.
func (p *provider) Delete(context.Context, *pulumirpc.DeleteRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (p *provider) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// stackOf is the step's id: the stack it deploys, as recorded in its target.
func stackOf(inputs *structpb.Struct) string {
	target, _ := inputs.AsMap()["target"].(map[string]any)
	stack, _ := target["stack"].(string)
	return stack
}

// runStep runs the step in the project's interpreter (the engine starts providers in the
// project's directory) and returns its outputs. A failure comes back as the step's own words.
func runStep(ctx context.Context, inputs *structpb.Struct) (*structpb.Struct, error) {
	payload, err := json.Marshal(inputs.AsMap())
	if err != nil {
		return nil, fmt.Errorf("encoding the post-deploy step's inputs: %w", err)
	}
	cmd, err := stepCommand(ctx)
	if err != nil {
		return nil, err
	}
	cmd.Stdin = bytes.NewReader(payload)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		message := strings.TrimSpace(stderr.String())
		var exit *exec.ExitError
		if message == "" || !errors.As(err, &exit) {
			message = fmt.Sprintf("%s -m %s: %v %s", cmd.Path, stepModule, err, message)
		}
		return nil, status.Error(codes.Unknown, message)
	}
	var outputs map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &outputs); err != nil {
		return nil, fmt.Errorf("reading the post-deploy step's outputs: %w", err)
	}
	return structpb.NewStruct(outputs)
}

// stepCommand runs the step module in the project's Python, chosen as the language host chooses
// it: the virtualenv of Pulumi.yaml's runtime options (the engine exports them as
// PULUMI_RUNTIME_<OPTION>; relative to the project directory, where the engine starts providers),
// else $PULUMI_PYTHON_CMD or python3 from PATH.
func stepCommand(ctx context.Context) (*exec.Cmd, error) {
	project, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	tc, err := toolchain.ResolveToolchain(toolchain.PythonOptions{
		Toolchain: toolchain.Pip, Root: project, ProgramDir: project,
		Virtualenv: os.Getenv("PULUMI_RUNTIME_VIRTUALENV"),
	})
	if err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return nil, err
	}
	return tc.ModuleCommand(ctx, stepModule)
}
