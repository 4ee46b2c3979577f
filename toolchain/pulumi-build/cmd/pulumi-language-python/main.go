// Command pulumi-language-python stands in for upstream's Python language host
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3), which the Go module proxy
// reachable from our machines refuses ("403 Forbidden: This module version is not available").
// Written here, not copied; it does what upstream's host does for running programs and no more:
//
//   - the runtime options of Pulumi.yaml upstream reads (toolchain, virtualenv, typechecker),
//     nothing else; virtualenv / pip / uv / poetry handling is the sdk/v3 python toolchain
//     package, the library upstream's host uses;
//   - Run starts `python -u pulumi-language-python-exec <settings as argv> PROGRAM ARGS` (the exec
//     script of the sdk/v3 module, installed beside this binary) in the project's virtualenv, with
//     the stack's configuration in PULUMI_CONFIG and its secret keys in PULUMI_CONFIG_SECRET_KEYS;
//   - GetRequiredPackages lists the installed distributions and reports those with a
//     pulumi-plugin.json (or named pulumi-*), as upstream does; GetRequiredPlugins is
//     unimplemented there too;
//   - About, InstallDependencies, GetProgramDependencies and RuntimeOptionsPrompts answer from
//     the toolchain package as upstream's do.
//
// Code generation, packing, linking, debugging and running Python plugins are not implemented
// (Unimplemented): this project's commands do not use them.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/logging"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

const (
	execScriptName = "pulumi-language-python-exec"
	// The exec script exits with this code after it has shown the user an actionable message.
	exitCodeMessageShown = 32
)

// Distributions named pulumi-* that have no resource plugin (upstream skips the same two).
var withoutPlugin = map[string]bool{"pulumi-policy": true, "pulumi-esc-sdk": true}

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	execScript string
	engine     string
	tracing    string
	cancelled  context.Context // done once the engine sent Cancel
	cancel     context.CancelFunc
}

func main() {
	tracing := flag.String("tracing", "", "Zipkin-compatible tracing endpoint")
	showVersion := flag.Bool("version", false, "print the plugin's version and exit")
	executor := flag.String("use-executor", "", "the exec script to use instead of the one beside this binary")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Version)
		return
	}
	logging.InitLogging(false, 0, false)

	script, err := findExecScript(*executor)
	if err != nil {
		fail(err)
	}
	var engine string
	if args := flag.Args(); len(args) > 0 {
		engine = args[0]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	if engine != "" {
		if err := rpcutil.Healthcheck(ctx, engine, 5*time.Minute, stop); err != nil {
			fail(fmt.Errorf("could not start the engine health check: %w", err))
		}
	}
	cancelled, cancel := context.WithCancel(context.Background())
	h := &host{execScript: script, engine: engine, tracing: *tracing, cancelled: cancelled, cancel: cancel}
	serve(ctx, func(s *grpc.Server) { pulumirpc.RegisterLanguageRuntimeServer(s, h) })
}

// fail reports err on stderr, which the CLI shows, and exits.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
	os.Exit(1)
}

// serve runs the gRPC server until ctx ends: the port on the first line of stdout, as the CLI reads it.
func serve(ctx context.Context, register func(*grpc.Server)) {
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
		fail(fmt.Errorf("could not start the language host's gRPC server: %w", err))
	}
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fail(fmt.Errorf("the language host stopped serving: %w", err))
	}
}

// findExecScript is the exec script installed beside this binary (where upstream's host looks), or explicit.
func findExecScript(explicit string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("could not find this binary's path: %w", err)
	}
	script := filepath.Join(filepath.Dir(self), execScriptName)
	if _, err := os.Stat(script); err != nil {
		return "", fmt.Errorf("missing %s beside the language host (toolchain/pulumi.sh installs it): %w",
			script, err)
	}
	return script, nil
}

// options reads the runtime options of Pulumi.yaml that upstream's host reads; any other key is ignored.
func options(info *pulumirpc.ProgramInfo) (toolchain.PythonOptions, error) {
	opts := toolchain.PythonOptions{Root: info.GetRootDirectory(), ProgramDir: info.GetProgramDirectory()}
	raw := info.GetOptions().AsMap()
	text := func(key string) (string, bool, error) {
		value, ok := raw[key]
		if !ok {
			return "", false, nil
		}
		s, isString := value.(string)
		if !isString {
			return "", true, fmt.Errorf("the runtime option %q in Pulumi.yaml must be a string, found %v", key, value)
		}
		return s, true, nil
	}
	venv, _, err := text("virtualenv")
	if err != nil {
		return opts, err
	}
	opts.Virtualenv = venv
	checker, set, err := text("typechecker")
	if err != nil {
		return opts, err
	}
	if set {
		switch checker {
		case "mypy":
			opts.Typechecker = toolchain.TypeCheckerMypy
		case "pyright":
			opts.Typechecker = toolchain.TypeCheckerPyright
		default:
			return opts, fmt.Errorf("the runtime option typechecker is %q: use mypy or pyright", checker)
		}
	}
	name, set, err := text("toolchain")
	if err != nil {
		return opts, err
	}
	if set {
		switch name {
		case "pip":
			opts.Toolchain = toolchain.Pip
		case "poetry":
			opts.Toolchain = toolchain.Poetry
		case "uv":
			opts.Toolchain = toolchain.Uv
		default:
			return opts, fmt.Errorf("the runtime option toolchain is %q: use pip, poetry or uv", name)
		}
	}
	return opts, nil
}

func (h *host) Handshake(_ context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.engine = req.GetEngineAddress()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	if err := rpcutil.Healthcheck(ctx, h.engine, 5*time.Minute, stop); err != nil {
		return nil, fmt.Errorf("could not start the engine health check: %w", err)
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

func (h *host) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	h.cancel()
	return &emptypb.Empty{}, nil
}

// Run runs the program through the exec script and tells the engine how it ended.
func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	if req.GetAttachDebugger() {
		return &pulumirpc.RunResponse{Error: "this language host does not attach debuggers"}, nil
	}
	opts, err := options(req.GetInfo())
	if err != nil {
		return nil, err
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return nil, err
	}
	env, err := configEnv(req)
	if err != nil {
		return nil, err
	}
	if err := typecheck(ctx, tc, opts, req.GetInfo().GetProgramDirectory()); err != nil {
		return nil, err
	}
	args := append([]string{h.execScript}, h.execArgs(req)...)
	logging.V(5).Infof("language host launching process: %s", strings.Join(args, " "))

	// Ended by the engine's Cancel or the end of this request: an interrupt, a kill 5 s later.
	runCtx, stop := context.WithCancel(h.cancelled)
	defer stop()
	context.AfterFunc(ctx, stop)
	cmd, err := tc.Command(runCtx, args...)
	if err != nil {
		return nil, err
	}
	cmd.Cancel = func() error {
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			return cmd.Process.Kill()
		}
		return nil
	}
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, env...)

	err = cmd.Run()
	var exited *exec.ExitError
	switch {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exited) && exited.ExitCode() == exitCodeMessageShown:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case errors.As(err, &exited) && exited.ExitCode() > 0:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("program exited with non-zero exit code: %d", exited.ExitCode())}, nil
	case errors.As(err, &exited):
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("program exited unexpectedly: %v", exited)}, nil
	default:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("problem executing program (could not run %s): %v", h.execScript, err)}, nil
	}
}

// execArgs is the exec script's command line: the settings upstream's host passes, each only when set.
func (h *host) execArgs(req *pulumirpc.RunRequest) []string {
	var args []string
	for _, setting := range [][2]string{
		{"monitor", req.GetMonitorAddress()},
		{"engine", h.engine},
		{"project", req.GetProject()},
		{"root_directory", req.GetInfo().GetRootDirectory()},
		{"stack", req.GetStack()},
		{"pwd", req.GetPwd()},
		{"dry_run", strconv.FormatBool(req.GetDryRun())},
		{"parallel", strconv.Itoa(int(req.GetParallel()))},
		{"tracing", h.tracing},
		{"organization", req.GetOrganization()},
	} {
		if setting[1] != "" {
			args = append(args, "--"+setting[0], setting[1])
		}
	}
	return append(append(args, req.GetInfo().GetEntryPoint()), req.GetArgs()...)
}

// configEnv is the stack's configuration as the SDK reads it: PULUMI_CONFIG (a JSON object, left
// out for none) and PULUMI_CONFIG_SECRET_KEYS (a JSON list, [] for none).
func configEnv(req *pulumirpc.RunRequest) ([]string, error) {
	var env []string
	if config := req.GetConfig(); config != nil {
		encoded, err := json.Marshal(config)
		if err != nil {
			return nil, fmt.Errorf("failed to serialize configuration: %w", err)
		}
		env = append(env, "PULUMI_CONFIG="+string(encoded))
	}
	keys := req.GetConfigSecretKeys()
	if keys == nil {
		keys = []string{}
	}
	encoded, err := json.Marshal(keys)
	if err != nil {
		return nil, fmt.Errorf("failed to serialize configuration secret keys: %w", err)
	}
	return append(env, "PULUMI_CONFIG_SECRET_KEYS="+string(encoded)), nil
}

// typecheck runs the typechecker option's mypy or pyright over the program directory before the run.
func typecheck(ctx context.Context, tc toolchain.Toolchain, opts toolchain.PythonOptions, dir string) error {
	var checker string
	switch opts.Typechecker {
	case toolchain.TypeCheckerMypy:
		checker = "mypy"
	case toolchain.TypeCheckerPyright:
		checker = "pyright"
	default:
		return nil
	}
	installed, err := tc.ListPackages(ctx, true)
	if err != nil {
		return err
	}
	found := false
	for _, p := range installed {
		found = found || p.Name == checker
	}
	if !found {
		return fmt.Errorf("the typechecker option is set to %s, but %s is not installed: add it to "+
			"requirements.txt and run `%s/bin/pip install -r requirements.txt`", checker, checker, opts.Virtualenv)
	}
	args := []string{"-m", checker}
	if checker == "mypy" {
		venv, err := tc.VirtualEnvPath(ctx)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, venv)
		if err != nil {
			return err
		}
		args = append(args, "--exclude", rel)
	}
	cmd, err := tc.Command(ctx, append(args, dir)...)
	if err != nil {
		return err
	}
	var output bytes.Buffer
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = io.MultiWriter(os.Stdout, &output), io.MultiWriter(os.Stderr, &output)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s failed: %w\n%s", checker, err, output.String())
	}
	return nil
}

// GetRequiredPackages reports the installed Pulumi packages' resource plugins, as upstream's host does.
func (h *host) GetRequiredPackages(ctx context.Context, req *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	opts, err := options(req.GetInfo())
	if err != nil {
		return nil, err
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return nil, err
	}
	stdout, stderr, err := h.engineWriters(ctx)
	if err != nil {
		return nil, err
	}
	if err := tc.EnsureVenv(ctx, req.GetInfo().GetProgramDirectory(), false, true, stdout, stderr); err != nil {
		return nil, err
	}
	warnOldPython(ctx, tc)
	installed, err := tc.ListPackages(ctx, true)
	if err != nil {
		return nil, err
	}
	declarations, err := pluginDeclarations(ctx, tc, installed)
	if err != nil {
		return nil, err
	}
	packages := []*pulumirpc.PackageDependency{}
	for _, dist := range installed {
		declared := declarations[dist.Name]
		if withoutPlugin[dist.Name] || (declared == nil && !strings.HasPrefix(dist.Name, "pulumi-")) {
			continue
		}
		if pkg := packageOf(dist, declared); pkg != nil {
			packages = append(packages, pkg)
		}
	}
	return &pulumirpc.GetRequiredPackagesResponse{Packages: packages}, nil
}

func (h *host) GetRequiredPlugins(context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return nil, status.Error(codes.Unimplemented, "GetRequiredPlugins is not implemented: use GetRequiredPackages")
}

// pluginScript prints {distribution: path of the pulumi-plugin.json in its top-level package, or ""}.
const pluginScript = `import importlib.metadata as md, importlib.util as iu, json, os, sys
found = {}
for name in sys.argv[1:]:
    path = ""
    try:
        spec = iu.find_spec(md.distribution(name).metadata["Name"].replace("-", "_"))
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(str(location), "pulumi-plugin.json")
            if os.path.isfile(candidate):
                path = candidate
                break
    except Exception:
        pass
    found[name] = path
print(json.dumps(found))`

// pluginDeclarations reads the pulumi-plugin.json of each installed distribution that has one.
func pluginDeclarations(ctx context.Context, tc toolchain.Toolchain, installed []plugin.DependencyInfo,
) (map[string]*plugin.PulumiPluginJSON, error) {
	declarations := map[string]*plugin.PulumiPluginJSON{}
	if len(installed) == 0 {
		return declarations, nil
	}
	args := []string{"-c", pluginScript}
	for _, dist := range installed {
		args = append(args, dist.Name)
	}
	cmd, err := tc.Command(ctx, args...)
	if err != nil {
		logging.V(5).Infof("plugin declarations: %v", err)
		return declarations, nil
	}
	out, err := cmd.Output()
	if err != nil {
		logging.V(5).Infof("plugin declarations: %v", err)
		return declarations, nil
	}
	var paths map[string]string
	if err := json.Unmarshal(out, &paths); err != nil {
		return nil, fmt.Errorf("reading the paths of pulumi-plugin.json files: %w", err)
	}
	for name, path := range paths {
		if path == "" {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			logging.V(5).Infof("plugin declarations: %v", err)
			continue
		}
		declared := &plugin.PulumiPluginJSON{}
		if err := json.Unmarshal(data, declared); err != nil {
			return nil, fmt.Errorf("failed to parse pulumi-plugin.json for %s (%s): %w", name, path, err)
		}
		declarations[name] = declared
	}
	return declarations, nil
}

// packageOf is the plugin a distribution needs: its declaration's, else named and versioned after
// the distribution; nil when it declares none or its version has no plugin version.
func packageOf(dist plugin.DependencyInfo, declared *plugin.PulumiPluginJSON) *pulumirpc.PackageDependency {
	pkg := &pulumirpc.PackageDependency{Kind: "resource"}
	if declared != nil {
		if !declared.Resource {
			return nil
		}
		pkg.Name, pkg.Version, pkg.Server = declared.Name, declared.Version, declared.Server
		pkg.Parameterization = parameterization(declared.Parameterization)
		pkg.Extension = parameterization(declared.ExtensionParameterization)
	}
	if pkg.Name == "" {
		pkg.Name = strings.TrimPrefix(dist.Name, "pulumi-")
	}
	if pkg.Version == "" {
		v, err := pluginVersion(dist.Version)
		if err != nil {
			logging.V(5).Infof("no plugin version for %s %s: %v", dist.Name, dist.Version, err)
			return nil
		}
		pkg.Version = v
	}
	if !strings.HasPrefix(pkg.Version, "v") {
		pkg.Version = "v" + pkg.Version
	}
	return pkg
}

func parameterization(p *plugin.PulumiParameterizationJSON) *pulumirpc.PackageParameterization {
	if p == nil {
		return nil
	}
	return &pulumirpc.PackageParameterization{Name: p.Name, Version: p.Version, Value: p.Value}
}

// pep440 matches the versions pluginVersion translates: N(.N)*[{a|b|rc}N][.postN][.devN].
var pep440 = regexp.MustCompile(`^(\d+(?:\.\d+)*)(?:(a|b|rc)(\d*))?(?:\.post(\d*))?(?:\.dev(\d*))?$`)

// pluginVersion turns a Python package version into its plugin's semver: 1.2 -> 1.2.0,
// 1.2.3a4 -> 1.2.3-alpha.4, 1.2.3rc4 -> 1.2.3-rc.4, 1.2.3.post4.dev5 -> 1.2.3+post4dev5.
func pluginVersion(v string) (string, error) {
	m := pep440.FindStringSubmatch(v)
	if m == nil {
		return "", fmt.Errorf("%q is not a version of the form N(.N)*[{a|b|rc}N][.postN][.devN]", v)
	}
	segments := strings.Split(m[1], ".")
	for len(segments) < 3 {
		segments = append(segments, "0")
	}
	out := strings.Join(segments, ".")
	if m[2] != "" {
		out += "-" + map[string]string{"a": "alpha", "b": "beta", "rc": "rc"}[m[2]] + "." + m[3]
	}
	build := ""
	if strings.Contains(v, ".post") {
		build += "post" + m[4]
	}
	if strings.Contains(v, ".dev") {
		build += "dev" + m[5]
	}
	if build != "" {
		out += "+" + build
	}
	return out, nil
}

// warnOldPython tells the user (stderr, shown by the CLI) when the interpreter is older than Python 3.7.
func warnOldPython(ctx context.Context, tc toolchain.Toolchain) {
	cmd, err := tc.Command(ctx, "--version")
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to create python version command: %s\n", err)
		return
	}
	out, err := cmd.Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to resolve python version command: %s\n", err)
		return
	}
	v, err := toolchain.ParsePythonVersion(strings.TrimSpace(strings.TrimPrefix(string(out), "Python ")))
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to parse python version: %q\n", strings.TrimSpace(string(out)))
		return
	}
	if v.Major < 3 || (v.Major == 3 && v.Minor < 7) {
		fmt.Fprintf(os.Stderr, "Pulumi does not support Python %s. Please upgrade to at least 3.7.0\n", v)
	}
}

// engineWriters send what they are given to the engine as ephemeral messages (info, error).
func (h *host) engineWriters(ctx context.Context) (io.Writer, io.Writer, error) {
	conn, err := grpc.NewClient(h.engine, grpc.WithTransportCredentials(insecure.NewCredentials()),
		rpcutil.GrpcChannelOptions())
	if err != nil {
		return nil, nil, fmt.Errorf("language host could not make connection to engine: %w", err)
	}
	engine := pulumirpc.NewEngineClient(conn)
	stream := rand.Int31() //nolint:gosec // a message stream's id, not a secret
	return &engineLog{ctx, engine, stream, pulumirpc.LogSeverity_INFO},
		&engineLog{ctx, engine, stream, pulumirpc.LogSeverity_ERROR}, nil
}

type engineLog struct {
	ctx      context.Context
	engine   pulumirpc.EngineClient
	stream   int32
	severity pulumirpc.LogSeverity
}

func (w *engineLog) Write(p []byte) (int, error) {
	_, err := w.engine.Log(w.ctx, &pulumirpc.LogRequest{
		Message: strings.ToValidUTF8(string(p), "\uFFFD"), Ephemeral: true, StreamId: w.stream, Severity: w.severity,
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// InstallDependencies creates the virtualenv and installs the project's requirements (`pulumi install`).
func (h *host) InstallDependencies(req *pulumirpc.InstallDependenciesRequest,
	server pulumirpc.LanguageRuntime_InstallDependenciesServer,
) error {
	if req.GetIsPlugin() {
		return status.Error(codes.Unimplemented, "this language host does not install Python plugins")
	}
	opts, err := options(req.GetInfo())
	if err != nil {
		return err
	}
	closer, stdout, stderr, err := rpcutil.MakeInstallDependenciesStreams(server, req.GetIsTerminal())
	if err != nil {
		return err
	}
	defer closer.Close()
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, "Installing dependencies...\n\n")
	if err := tc.InstallDependencies(server.Context(), req.GetInfo().GetProgramDirectory(),
		req.GetUseLanguageVersionTools(), true, stdout, stderr); err != nil {
		return err
	}
	fmt.Fprint(stdout, "Finished installing dependencies\n\n")
	return closer.Close()
}

// RuntimeOptionsPrompts asks `pulumi new` for a toolchain, and for a virtualenv when it is pip.
func (h *host) RuntimeOptionsPrompts(_ context.Context, req *pulumirpc.RuntimeOptionsRequest,
) (*pulumirpc.RuntimeOptionsResponse, error) {
	raw := req.GetInfo().GetOptions().AsMap()
	text := func(s string) *pulumirpc.RuntimeOptionPrompt_RuntimeOptionValue {
		return &pulumirpc.RuntimeOptionPrompt_RuntimeOptionValue{
			PromptType: pulumirpc.RuntimeOptionPrompt_STRING, StringValue: s, DisplayName: s,
		}
	}
	var prompts []*pulumirpc.RuntimeOptionPrompt
	chosen, hasToolchain := raw["toolchain"]
	if !hasToolchain {
		choices := append([]*pulumirpc.RuntimeOptionPrompt_RuntimeOptionValue{text("pip")},
			plugin.MakeExecutablePromptChoices("poetry", "uv")...)
		prompts = append(prompts, &pulumirpc.RuntimeOptionPrompt{
			Key:         "toolchain",
			Description: "The toolchain to use for installing dependencies and running the program",
			PromptType:  pulumirpc.RuntimeOptionPrompt_STRING,
			Choices:     choices,
			Default:     text("pip"),
		})
	}
	if _, hasVenv := raw["virtualenv"]; hasToolchain && chosen == "pip" && !hasVenv {
		prompts = append(prompts, &pulumirpc.RuntimeOptionPrompt{
			Key:         "virtualenv",
			Description: "The virtualenv to use",
			PromptType:  pulumirpc.RuntimeOptionPrompt_STRING,
			Choices:     []*pulumirpc.RuntimeOptionPrompt_RuntimeOptionValue{text("venv")},
			Default:     text("venv"),
		})
	}
	return &pulumirpc.RuntimeOptionsResponse{Prompts: prompts}, nil
}

// About names the interpreter, its version and the toolchain's, as the toolchain package finds them.
func (h *host) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	opts := toolchain.PythonOptions{Toolchain: toolchain.Pip}
	if req.GetInfo() != nil {
		var err error
		if opts, err = options(req.GetInfo()); err != nil {
			return nil, err
		}
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return nil, err
	}
	about, err := tc.About(ctx)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.AboutResponse{
		Executable: about.PythonExecutable,
		Version:    about.PythonVersion.String(),
		Metadata: map[string]string{
			"toolchain":        toolchain.Name(opts.Toolchain),
			"toolchainVersion": about.ToolchainVersion.String(),
			"typechecker":      toolchain.TypeCheckerName(opts.Typechecker),
		},
	}, nil
}

// GetProgramDependencies lists the virtualenv's installed distributions (`pulumi about`).
func (h *host) GetProgramDependencies(ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	opts, err := options(req.GetInfo())
	if err != nil {
		return nil, err
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return nil, err
	}
	installed, err := tc.ListPackages(ctx, req.GetTransitiveDependencies())
	if err != nil {
		return nil, fmt.Errorf("failed to get python dependencies: %w", err)
	}
	deps := make([]*pulumirpc.DependencyInfo, 0, len(installed))
	for _, dist := range installed {
		deps = append(deps, &pulumirpc.DependencyInfo{Name: dist.Name, Version: dist.Version})
	}
	return &pulumirpc.GetProgramDependenciesResponse{Dependencies: deps}, nil
}
