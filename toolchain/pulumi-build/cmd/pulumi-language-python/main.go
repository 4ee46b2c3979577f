// Command pulumi-language-python is this project's own Python language host for the
// Pulumi CLI. It is written here (not taken from upstream) because upstream's host lives
// in a Go module that the module proxy reachable from our machines does not serve (only
// by an exact pseudo-version whose commit we cannot look up offline).
//
// What it does: the CLI starts it with the engine address as the last argument; it
// serves the LanguageRuntime gRPC service on a free port and prints the port on stdout.
// Run starts `python -u pulumi-language-python-exec ...` (the helper that must sit in the
// same directory as this binary) inside the project's virtualenv, passing the program
// settings as flags and the stack configuration in PULUMI_CONFIG and
// PULUMI_CONFIG_SECRET_KEYS. Virtualenv / pip / uv / poetry handling is delegated to the
// sdk/v3 python toolchain package, the same library upstream's host uses.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/logging"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"sin.local/toolchain/pulumi-build/internal/serve"
)

const (
	execHelperName = "pulumi-language-python-exec"
	// Exit code the exec helper uses after it has already shown the error to the user.
	exitCodeUserMessageShown = 32
)

type languageHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	engineAddress string
	execHelper    string
	tracing       string
}

func main() {
	// glog's flags (-v, -logtostderr, ...) are registered by the logging package, so the
	// flags the CLI adds for verbose runs parse fine.
	tracing := flag.String("tracing", "", "Zipkin-compatible tracing endpoint")
	useExecutor := flag.String("use-executor", "", "path of the exec helper to use instead of the one next to this binary")
	flag.Parse()
	logging.InitLogging(false, 0, false)

	helper, err := findExecHelper(*useExecutor)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(1)
	}

	var engine string
	if args := flag.Args(); len(args) > 0 {
		engine = args[len(args)-1]
	}

	h := &languageHost{engineAddress: engine, execHelper: helper, tracing: *tracing}
	serve.Serve("language host", engine, func(s *grpc.Server) { pulumirpc.RegisterLanguageRuntimeServer(s, h) })
}

// findExecHelper looks for the Python exec helper next to this binary first, then on PATH.
func findExecHelper(explicit string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if self, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(self); err == nil {
			self = resolved
		}
		candidate := filepath.Join(filepath.Dir(self), execHelperName)
		if st, err := os.Stat(candidate); err == nil && !st.IsDir() {
			return candidate, nil
		}
	}
	if p, err := exec.LookPath(execHelperName); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s was found neither next to the language host nor on PATH", execHelperName)
}

// optionsOf turns the `runtime.options` of Pulumi.yaml (sent in ProgramInfo) into toolchain options.
func optionsOf(info *pulumirpc.ProgramInfo) (toolchain.PythonOptions, error) {
	opts := toolchain.PythonOptions{Toolchain: toolchain.Pip}
	if info == nil {
		wd, _ := os.Getwd()
		opts.Root, opts.ProgramDir = wd, wd
		return opts, nil
	}
	opts.Root = info.GetRootDirectory()
	opts.ProgramDir = info.GetProgramDirectory()
	if opts.ProgramDir == "" {
		opts.ProgramDir = opts.Root
	}
	fields := info.GetOptions().GetFields()
	if v, ok := fields["virtualenv"]; ok {
		s, isString := v.AsInterface().(string)
		if !isString {
			return opts, errors.New("the 'virtualenv' runtime option must be a string")
		}
		opts.Virtualenv = s
	}
	if v, ok := fields["toolchain"]; ok {
		s, _ := v.AsInterface().(string)
		switch strings.ToLower(s) {
		case "", "pip":
			opts.Toolchain = toolchain.Pip
		case "uv":
			opts.Toolchain = toolchain.Uv
		case "poetry":
			opts.Toolchain = toolchain.Poetry
		default:
			return opts, fmt.Errorf("unsupported 'toolchain' runtime option %q (want pip, uv or poetry)", s)
		}
	}
	// "typechecker" is accepted and ignored: this host does not run mypy/pyright.
	return opts, nil
}

func resolveToolchain(info *pulumirpc.ProgramInfo) (toolchain.Toolchain, error) {
	opts, err := optionsOf(info)
	if err != nil {
		return nil, err
	}
	return toolchain.ResolveToolchain(opts)
}

func (h *languageHost) Handshake(
	ctx context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	if req.GetEngineAddress() != "" {
		h.engineAddress = req.GetEngineAddress()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *languageHost) GetPluginInfo(ctx context.Context, _ *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

func (h *languageHost) Cancel(ctx context.Context, _ *emptypb.Empty) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (h *languageHost) RuntimeOptionsPrompts(
	ctx context.Context, req *pulumirpc.RuntimeOptionsRequest,
) (*pulumirpc.RuntimeOptionsResponse, error) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

// Run executes the user's program through the exec helper.
func (h *languageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}

	program := req.GetProgram()
	if info := req.GetInfo(); info != nil && info.GetProgramDirectory() != "" {
		entry := info.GetEntryPoint()
		if entry == "" {
			entry = "."
		}
		program = filepath.Join(info.GetProgramDirectory(), entry)
	}
	if program == "" {
		program = "."
	}

	root := ""
	if req.GetInfo() != nil {
		root = req.GetInfo().GetRootDirectory()
	}
	args := []string{"-u", h.execHelper,
		"--monitor", req.GetMonitorAddress(),
		"--engine", h.engineAddress,
		"--project", req.GetProject(),
		"--stack", req.GetStack(),
		"--parallel", strconv.Itoa(int(req.GetParallel())),
		"--dry_run", strconv.FormatBool(req.GetDryRun()),
	}
	for flagName, value := range map[string]string{
		"--pwd": req.GetPwd(), "--organization": req.GetOrganization(),
		"--root_directory": root, "--tracing": h.tracing,
	} {
		if value != "" {
			args = append(args, flagName, value)
		}
	}
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	cmd, err := tc.Command(ctx, args...)
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	config := req.GetConfig()
	if config == nil {
		config = map[string]string{} // a stack without config: "{}", never "null"
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return nil, fmt.Errorf("serializing config: %w", err)
	}
	secretKeys := req.GetConfigSecretKeys()
	if secretKeys == nil {
		secretKeys = []string{}
	}
	secretKeysJSON, err := json.Marshal(secretKeys)
	if err != nil {
		return nil, fmt.Errorf("serializing config secret keys: %w", err)
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env,
		"PULUMI_CONFIG="+string(configJSON),
		"PULUMI_CONFIG_SECRET_KEYS="+string(secretKeysJSON))
	if req.GetPwd() != "" {
		cmd.Dir = req.GetPwd()
	}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	logging.V(5).Infof("python language host running: %s %s", cmd.Path, strings.Join(args, " "))

	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == exitCodeUserMessageShown {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{
				Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode()),
			}, nil
		}
		return &pulumirpc.RunResponse{
			Error: fmt.Sprintf("could not run the Python program (%s): %v", cmd.Path, err),
		}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// pluginScan lists the resource plugins that installed Python packages declare in their
// pulumi-plugin.json (that is how generated provider SDKs announce their provider).
//
//go:embed plugin_scan.py
var pluginScan string

type pluginJSON struct {
	Name             string `json:"name"`
	Version          string `json:"version"`
	Server           string `json:"server"`
	Parameterization *struct {
		Name    string `json:"name"`
		Version string `json:"version"`
		Value   []byte `json:"value"`
	} `json:"parameterization"`
}

func (h *languageHost) requiredPackages(ctx context.Context, info *pulumirpc.ProgramInfo) ([]*pulumirpc.PackageDependency, error) {
	tc, err := resolveToolchain(info)
	if err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return nil, err
	}
	cmd, err := tc.Command(ctx, "-c", pluginScan)
	if err != nil {
		return nil, err
	}
	out, err := cmd.Output()
	if err != nil {
		// Not fatal: the engine still loads plugins lazily when resources register.
		logging.V(3).Infof("python language host: plugin scan failed: %v", err)
		return nil, nil
	}
	var found []pluginJSON
	if err := json.Unmarshal(out, &found); err != nil {
		logging.V(3).Infof("python language host: plugin scan output unreadable: %v", err)
		return nil, nil
	}
	var deps []*pulumirpc.PackageDependency
	seen := map[string]bool{}
	for _, p := range found {
		v := p.Version
		if v != "" && !strings.HasPrefix(v, "v") {
			v = "v" + v
		}
		key := p.Name + "@" + v
		if p.Name == "" || seen[key] {
			continue
		}
		seen[key] = true
		dep := &pulumirpc.PackageDependency{Name: p.Name, Kind: "resource", Version: v, Server: p.Server}
		if p.Parameterization != nil {
			dep.Parameterization = &pulumirpc.PackageParameterization{
				Name: p.Parameterization.Name, Version: p.Parameterization.Version, Value: p.Parameterization.Value,
			}
		}
		deps = append(deps, dep)
	}
	return deps, nil
}

func (h *languageHost) GetRequiredPackages(
	ctx context.Context, req *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	deps, err := h.requiredPackages(ctx, req.GetInfo())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.GetRequiredPackagesResponse{Packages: deps}, nil
}

func (h *languageHost) GetRequiredPlugins(
	ctx context.Context, req *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	deps, err := h.requiredPackages(ctx, req.GetInfo())
	if err != nil {
		return nil, err
	}
	var plugins []*pulumirpc.PluginDependency
	for _, d := range deps {
		if d.Parameterization != nil {
			continue
		}
		plugins = append(plugins, &pulumirpc.PluginDependency{
			Name: d.Name, Kind: d.Kind, Version: d.Version, Server: d.Server,
		})
	}
	return &pulumirpc.GetRequiredPluginsResponse{Plugins: plugins}, nil
}

// InstallDependencies creates the virtualenv if needed and installs requirements.txt
// (or runs uv/poetry), streaming the output back to the CLI (`pulumi install`, `pulumi new`).
func (h *languageHost) InstallDependencies(
	req *pulumirpc.InstallDependenciesRequest, server pulumirpc.LanguageRuntime_InstallDependenciesServer,
) error {
	closer, stdout, stderr, err := rpcutil.MakeInstallDependenciesStreams(server, req.GetIsTerminal())
	if err != nil {
		return err
	}
	defer closer.Close()

	info := req.GetInfo()
	tc, err := resolveToolchain(info)
	if err != nil {
		return err
	}
	dir := req.GetDirectory()
	if info != nil && info.GetProgramDirectory() != "" {
		dir = info.GetProgramDirectory()
	}
	ctx := server.Context()
	if err := tc.InstallDependencies(ctx, dir, req.GetUseLanguageVersionTools(), true, stdout, stderr); err != nil {
		return err
	}
	if req.GetIsPlugin() {
		return tc.InstallPackage(ctx, dir, req.GetUseLanguageVersionTools(), true, stdout, stderr)
	}
	return nil
}

// aboutScript reports what toolchain.About reports for pip in one interpreter start: the
// toolchain's version asks `python -m pip --version`, which imports pip (~0.25 s). Used only when
// the virtualenv's files do not say (see aboutVirtualenv).
const aboutScript = `
import importlib.metadata as md, json, platform, sys
try:
    pip = md.version("pip")
except md.PackageNotFoundError:
    pip = ""
print(json.dumps({"executable": sys.executable, "version": platform.python_version(), "pip": pip}))
`

type aboutPython struct{ Executable, Version, Pip string }

// aboutVirtualenv answers About from a virtualenv's files, starting no interpreter (~0.05 s, and
// the CLI waits for About before every update, preview and destroy): the version pyvenv.cfg
// records, pip's from its one dist-info directory. ok is false when the files do not say.
func aboutVirtualenv(venv string) (about aboutPython, ok bool) {
	cfg, err := os.ReadFile(filepath.Join(venv, "pyvenv.cfg"))
	if err != nil {
		return about, false
	}
	for _, line := range strings.Split(string(cfg), "\n") {
		key, value, found := strings.Cut(line, "=")
		if found && (strings.TrimSpace(key) == "version" || strings.TrimSpace(key) == "version_info") {
			about.Version = strings.TrimSpace(value)
		}
	}
	about.Executable = filepath.Join(venv, "bin", "python")
	if st, err := os.Stat(about.Executable); err != nil || st.IsDir() || about.Version == "" {
		return about, false
	}
	pips, _ := filepath.Glob(filepath.Join(venv, "lib", "python*", "site-packages", "pip-*.dist-info"))
	if len(pips) != 1 {
		return about, false
	}
	about.Pip = strings.TrimSuffix(strings.TrimPrefix(filepath.Base(pips[0]), "pip-"), ".dist-info")
	return about, true
}

func (h *languageHost) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	opts, err := optionsOf(req.GetInfo())
	if err != nil {
		return nil, err
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return nil, err
	}
	if opts.Toolchain != toolchain.Pip {
		about, err := tc.About(ctx)
		if err != nil {
			return nil, err
		}
		return &pulumirpc.AboutResponse{
			Executable: about.PythonExecutable,
			Version:    about.PythonVersion.String(),
			Metadata:   map[string]string{"toolchainVersion": about.ToolchainVersion.String()},
		}, nil
	}
	venv, err := tc.VirtualEnvPath(ctx)
	if err != nil {
		return nil, err
	}
	about, ok := aboutVirtualenv(venv)
	if venv == "" || !ok {
		if about, err = askPython(ctx, tc); err != nil {
			return nil, err
		}
	}
	return &pulumirpc.AboutResponse{
		Executable: about.Executable,
		Version:    about.Version,
		Metadata:   map[string]string{"toolchainVersion": about.Pip},
	}, nil
}

// askPython runs aboutScript in the toolchain's interpreter.
func askPython(ctx context.Context, tc toolchain.Toolchain) (about aboutPython, err error) {
	cmd, err := tc.Command(ctx, "-c", aboutScript)
	if err != nil {
		return about, err
	}
	out, err := cmd.Output()
	if err != nil {
		return about, fmt.Errorf("asking %s about itself: %w", cmd.Path, err)
	}
	if err := json.Unmarshal(out, &about); err != nil {
		return about, fmt.Errorf("reading what %s says about itself: %w", cmd.Path, err)
	}
	return about, nil
}

func (h *languageHost) GetProgramDependencies(
	ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return nil, err
	}
	pkgs, err := tc.ListPackages(ctx, req.GetTransitiveDependencies())
	if err != nil {
		return nil, err
	}
	deps := make([]*pulumirpc.DependencyInfo, 0, len(pkgs))
	for _, p := range pkgs {
		deps = append(deps, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
	}
	return &pulumirpc.GetProgramDependenciesResponse{Dependencies: deps}, nil
}
