// Command pulumi-language-python is this project's own Python language host for the
// Pulumi CLI. It is written here (not taken from upstream) because upstream's host lives
// in a Go module that the module proxy reachable from our machines does not serve (only
// by an exact pseudo-version whose commit we cannot look up offline).
//
// What it does: the CLI starts it with the engine address as the last argument; it
// serves the LanguageRuntime gRPC service on a free port and prints the port on stdout.
// The program runs in `python -u pulumi-language-python-exec` (the helper that must sit in
// the same directory as this binary) inside the project's virtualenv. For a command that runs
// the program, the helper is started ahead, so the interpreter and the SDKs are loaded while
// the CLI and the engine do other work: by the host the CLI asks for About, before it derives
// the stack's keys (early.go), or else when the engine asks for the program's packages, before
// the refresh. Run then sends it the program settings and the stack configuration as one JSON
// line (never in its environment or on its command line). Virtualenv / pip / uv / poetry handling is
// delegated to the sdk/v3 python toolchain package, the same library upstream's host uses.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

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
	// whether the CLI's command runs the program (see commandRunsProgram)
	runsProgram bool

	mu      sync.Mutex
	waiting waitingProgram // started or adopted by GetRequiredPackages, taken by the next Run
	early   sync.Once      // About starts the early helper once (early.go)
}

// waitingProgram is an exec helper started ahead of Run: its interpreter loads the SDKs and
// waits for the run request.
type waitingProgram interface {
	// startedFor is the options the helper was started with.
	startedFor() toolchain.PythonOptions
	// run sends the run request (one JSON line) and waits for the program's exit code; err is
	// for a helper that could not run it at all.
	run(ctx context.Context, request []byte) (exitCode int, err error)
	// discard ends a helper that will not run the program.
	discard()
}

// pipedProgram is a helper this host started: its stdin takes the run request.
type pipedProgram struct {
	options toolchain.PythonOptions
	cmd     *exec.Cmd
	stdin   io.WriteCloser
}

func (p *pipedProgram) startedFor() toolchain.PythonOptions { return p.options }

func (p *pipedProgram) run(ctx context.Context, request []byte) (int, error) {
	_, writeErr := p.stdin.Write(request)
	p.stdin.Close()
	stop := context.AfterFunc(ctx, func() { _ = p.cmd.Process.Kill() })
	defer stop()
	err := p.cmd.Wait()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return exitErr.ExitCode(), nil
	}
	if err == nil {
		err = writeErr
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p.cmd.Path, err)
	}
	return 0, nil
}

func (p *pipedProgram) discard() {
	p.stdin.Close() // it exits on EOF
	_ = p.cmd.Wait()
}

// runRequest is what the exec helper reads from its stdin or socket (see its docstring).
type runRequest struct {
	Args       []string          `json:"args"`
	Config     map[string]string `json:"config"`
	SecretKeys []string          `json:"secret_keys"`
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

	h := &languageHost{engineAddress: engine, execHelper: helper, tracing: *tracing,
		runsProgram: commandRunsProgram(os.Getppid())}
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

// preloadOption is the `preload` runtime option: modules of the program (comma-separated) that
// the interpreter started ahead imports before Run, while the CLI and the engine do other work.
// They must not read the stack's configuration at import time.
func preloadOption(info *pulumirpc.ProgramInfo) []string {
	value, _ := info.GetOptions().GetFields()["preload"].AsInterface().(string)
	var modules []string
	for _, module := range strings.Split(value, ",") {
		if module = strings.TrimSpace(module); module != "" {
			modules = append(modules, module)
		}
	}
	return modules
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

// helperCommand is the exec helper in the project's virtualenv and program directory; preload
// names the modules it imports while it waits for its run request.
func (h *languageHost) helperCommand(opts toolchain.PythonOptions, preload []string, extra ...string) (*exec.Cmd, error) {
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(context.Background()); err != nil {
		return nil, err
	}
	args := []string{"-u", h.execHelper}
	if len(preload) > 0 {
		args = append(args, "--preload", strings.Join(preload, ","))
	}
	cmd, err := tc.Command(context.Background(), append(args, extra...)...)
	if err != nil {
		return nil, err
	}
	cmd.Dir = opts.ProgramDir
	return cmd, nil
}

// startProgram starts the exec helper, waiting on its stdin for the run request. Not tied to a
// request's context: it outlives GetRequiredPackages, and ends when its stdin closes (Run sent
// the request, or this host exited).
func (h *languageHost) startProgram(opts toolchain.PythonOptions, preload []string) (*pipedProgram, error) {
	cmd, err := h.helperCommand(opts, preload)
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	// Through pipes of its own, copied to ours until it exits: a helper still loading when this
	// host is stopped (a command that never ran the program) must not hold the CLI's pipes open.
	cmd.Stdout, cmd.Stderr = struct{ io.Writer }{os.Stdout}, struct{ io.Writer }{os.Stderr}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("could not start the Python program (%s): %w", cmd.Path, err)
	}
	return &pipedProgram{options: opts, cmd: cmd, stdin: stdin}, nil
}

// commandRunsProgram tells from the command line of the CLI that started this host (its parent)
// whether the command runs the program (up, preview, watch) or not (destroy, refresh, ...):
// the engine asks for the program's packages either way, and a helper started for nothing
// takes CPU from a destroy. When the command line does not say, it assumes a run.
func commandRunsProgram(cli int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cli))
	if err != nil {
		return true
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	for _, arg := range args[1:] {
		switch arg {
		case "up", "update", "preview", "pre", "watch":
			return true
		case "destroy", "down", "dn", "refresh", "import", "state", "stack", "config", "about", "install", "plugin":
			return false
		}
	}
	return true
}

// prestart adopts the early helper of the CLI command (early.go) or starts one for the program
// the engine is about to run, unless one waits already or the CLI's command does not run it.
func (h *languageHost) prestart(opts toolchain.PythonOptions, preload []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.waiting != nil || !h.runsProgram {
		return
	}
	early, err := adoptEarly(opts)
	if err == nil {
		h.waiting = early
		return
	}
	logging.V(5).Infof("python language host: no early helper to adopt: %v", err)
	program, err := h.startProgram(opts, preload)
	if err != nil { // Run starts it again and reports the error
		logging.V(5).Infof("python language host: no helper started ahead of Run: %v", err)
		return
	}
	h.waiting = program
}

// takeProgram hands Run the waiting helper when it was started for the same options, or a new one.
func (h *languageHost) takeProgram(opts toolchain.PythonOptions) (waitingProgram, error) {
	h.mu.Lock()
	waiting := h.waiting
	h.waiting = nil
	h.mu.Unlock()
	if waiting != nil {
		if waiting.startedFor() == opts {
			return waiting, nil
		}
		waiting.discard()
	}
	return h.startProgram(opts, nil)
}

// Run executes the user's program through the exec helper.
func (h *languageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	opts, err := optionsOf(req.GetInfo())
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	program, err := h.takeProgram(opts)
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}

	entry := req.GetProgram()
	if info := req.GetInfo(); info != nil && info.GetProgramDirectory() != "" {
		point := info.GetEntryPoint()
		if point == "" {
			point = "."
		}
		entry = filepath.Join(info.GetProgramDirectory(), point)
	}
	if entry == "" {
		entry = "."
	}
	args := []string{
		"--monitor", req.GetMonitorAddress(),
		"--engine", h.engineAddress,
		"--project", req.GetProject(),
		"--stack", req.GetStack(),
		"--parallel", strconv.Itoa(int(req.GetParallel())),
		"--dry_run", strconv.FormatBool(req.GetDryRun()),
	}
	for flagName, value := range map[string]string{
		"--pwd": req.GetPwd(), "--organization": req.GetOrganization(),
		"--root_directory": opts.Root, "--tracing": h.tracing,
	} {
		if value != "" {
			args = append(args, flagName, value)
		}
	}
	args = append(append(args, entry), req.GetArgs()...)
	request := runRequest{Args: args, Config: req.GetConfig(), SecretKeys: req.GetConfigSecretKeys()}
	if request.Config == nil {
		request.Config = map[string]string{} // a stack without config: {}, never null
	}
	if request.SecretKeys == nil {
		request.SecretKeys = []string{}
	}
	line, err := json.Marshal(request)
	if err != nil {
		return nil, fmt.Errorf("serializing the run request: %w", err)
	}
	logging.V(5).Infof("python language host running the program with %s", strings.Join(args, " "))
	code, err := program.run(ctx, append(line, '\n'))
	switch {
	case err != nil:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not run the Python program: %v", err)}, nil
	case code == exitCodeUserMessageShown:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case code != 0:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", code)}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// pluginScan lists the resource plugins that installed Python packages declare in their
// pulumi-plugin.json (that is how generated provider SDKs announce their provider).
//
//go:embed plugin_scan.py
var pluginScan string

type pluginJSON struct {
	Module           string `json:"module"` // the Python package holding the declaration
	Name             string `json:"name"`
	Version          string `json:"version"`
	Server           string `json:"server"`
	Parameterization *struct {
		Name    string `json:"name"`
		Version string `json:"version"`
		Value   []byte `json:"value"`
	} `json:"parameterization"`
}

// requiredPackages answers the engine's question about the program's packages (asked before a
// destroy or refresh too); for a command that runs the program it also has the program's
// interpreter waiting (prestart), preloading these packages when it starts one.
func (h *languageHost) requiredPackages(ctx context.Context, info *pulumirpc.ProgramInfo) ([]*pulumirpc.PackageDependency, error) {
	opts, err := optionsOf(info)
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
	modules := preloadOption(info)
	defer func() { h.prestart(opts, modules) }() // with the scanned SDKs, when the scan answers
	out := h.earlyPluginScan(opts)
	if out != nil {
		logging.V(5).Infof("python language host: plugin scan answered by the interpreter started ahead")
	} else {
		cmd, err := tc.Command(ctx, "-c", pluginScan)
		if err != nil {
			return nil, err
		}
		if out, err = cmd.Output(); err != nil {
			// Not fatal: the engine still loads plugins lazily when resources register.
			logging.V(3).Infof("python language host: plugin scan failed: %v", err)
			return nil, nil
		}
	}
	var found []pluginJSON
	if err := json.Unmarshal(out, &found); err != nil {
		logging.V(3).Infof("python language host: plugin scan output unreadable: %v", err)
		return nil, nil
	}
	for _, p := range found {
		if p.Module != "" {
			modules = append(modules, p.Module)
		}
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
	if h.runsProgram {
		h.early.Do(func() {
			if err := h.startEarly(opts, preloadOption(req.GetInfo())); err != nil {
				logging.V(5).Infof("python language host: no early helper: %v", err)
			}
		})
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
