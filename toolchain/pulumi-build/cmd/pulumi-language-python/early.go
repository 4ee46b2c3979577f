package main

// The early helper. Before an update or preview, the CLI starts a language host only to ask it
// About, and stops it; it then derives the stack's keys from the passphrase (~0.2 s of
// PBKDF2) and starts the engine, whose own language host asks for the program's packages.
// The interpreter started at that question still imports the SDKs when a new stack's program
// is wanted (there is no refresh to hide behind). So the About host starts the helper at once,
// in a session of its own (the CLI stops that host right after About), listening on a Unix
// socket in a directory only this user can enter, named after the CLI process (pid and start
// time) and the program's options. The engine's host of the same CLI process adopts it there:
// it sends the run request with its own stdout and stderr (SCM_RIGHTS), and reads back the
// program's exit code. A helper nobody adopts ends when the CLI process does. Before it loads
// the SDK, the helper also writes the plugin scan's answer beside the socket: the engine's host
// asks for the program's packages before it adopts the helper, and reads that answer instead of
// starting an interpreter only for the scan.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
)

// cliIdentity names process pid by its pid and start time (a pid alone may be reused).
func cliIdentity(pid int) (string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	stat := string(raw)
	fields := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if len(fields) < 20 {
		return "", fmt.Errorf("unreadable /proc/%d/stat", pid)
	}
	return fmt.Sprintf("%d-%s", pid, fields[19]), nil // field 22: start time
}

// earlySocket is where the early helper of CLI process cli waits for a program run with opts.
func earlySocket(cli int, opts toolchain.PythonOptions) (string, error) {
	id, err := cliIdentity(cli)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("sin-pulumi-python-%d", os.Getuid()))
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	info, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	owner, ok := info.Sys().(*syscall.Stat_t)
	if !info.IsDir() || !ok || int(owner.Uid) != os.Getuid() || info.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is not a directory only this user can enter", dir)
	}
	key := sha256.Sum256([]byte(id + "\x00" + fmt.Sprintf("%#v", opts)))
	path := filepath.Join(dir, hex.EncodeToString(key[:12])+".sock")
	if len(path) >= 108 { // sun_path
		return "", fmt.Errorf("socket path %s is too long", path)
	}
	return path, nil
}

// startEarly starts the helper for the program the CLI (this host's parent) is about to run.
func (h *languageHost) startEarly(opts toolchain.PythonOptions, preload []string) error {
	cli := os.Getppid()
	path, err := earlySocket(cli, opts)
	if err != nil {
		return err
	}
	_ = os.Remove(path) // the path names this CLI process: an old socket there is one nobody can use
	listener, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	listener.SetUnlinkOnClose(false) // the helper's from now on
	socket, err := listener.File()
	listener.Close()
	if err != nil {
		_ = os.Remove(path)
		return err
	}
	defer socket.Close()
	cmd, err := h.helperCommand(opts, preload,
		"--listen-fd", "3", "--listen-path", path, "--cli-pid", strconv.Itoa(cli))
	if err != nil {
		_ = os.Remove(path)
		return err
	}
	cmd.ExtraFiles = []*os.File{socket}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil // until a host adopts it: /dev/null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		_ = os.Remove(path)
		return err
	}
	go func() { _ = cmd.Wait() }()
	return nil
}

// pluginsSuffix names, beside an early helper's socket, the file with its plugin scan's answer.
const pluginsSuffix = ".plugins"

// earlyPluginScan is the plugin scan's answer (plugin_scan.py) the early helper of this host's
// CLI process wrote, or nil when there is none (yet): the host then runs the scan itself.
func (h *languageHost) earlyPluginScan(opts toolchain.PythonOptions) []byte {
	if !h.runsProgram {
		return nil
	}
	path, err := earlySocket(os.Getppid(), opts)
	if err != nil {
		return nil
	}
	answer, err := os.ReadFile(path + pluginsSuffix)
	if err != nil {
		return nil
	}
	_ = os.Remove(path + pluginsSuffix)
	return answer
}

// earlyProgram is an early helper this host adopted, reached through its socket.
type earlyProgram struct {
	options toolchain.PythonOptions
	conn    *net.UnixConn
}

// adoptEarly connects to the early helper of this host's CLI process for opts, if there is one.
func adoptEarly(opts toolchain.PythonOptions) (*earlyProgram, error) {
	path, err := earlySocket(os.Getppid(), opts)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	_ = os.Remove(path) // taken
	raw, err := conn.SyscallConn()
	var cred *syscall.Ucred
	if err == nil {
		ctlErr := raw.Control(func(fd uintptr) {
			cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
		})
		if err == nil {
			err = ctlErr
		}
	}
	if err == nil && int(cred.Uid) != os.Getuid() {
		err = fmt.Errorf("%s belongs to uid %d", path, cred.Uid)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &earlyProgram{options: opts, conn: conn}, nil
}

func (p *earlyProgram) startedFor() toolchain.PythonOptions { return p.options }

func (p *earlyProgram) run(ctx context.Context, request []byte) (int, error) {
	defer p.conn.Close()
	stopClose := context.AfterFunc(ctx, func() { p.conn.Close() })
	defer stopClose()
	replies := bufio.NewReader(p.conn)
	// "pid N": it has loaded and accepted.
	hello, err := replies.ReadString('\n')
	pid, convErr := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(hello), "pid "))
	if err != nil || convErr != nil || pid <= 0 {
		return 0, fmt.Errorf("the interpreter started ahead did not answer (%q): %v", hello, err)
	}
	stopKill := context.AfterFunc(ctx, func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	defer stopKill()
	rights := syscall.UnixRights(int(os.Stdout.Fd()), int(os.Stderr.Fd()))
	n, _, err := p.conn.WriteMsgUnix(request, rights, nil)
	if err == nil && n < len(request) {
		_, err = p.conn.Write(request[n:])
	}
	if err != nil {
		return 0, fmt.Errorf("sending the run request to the interpreter (pid %d): %w", pid, err)
	}
	// "exit N": the program's exit code.
	status, err := replies.ReadString('\n')
	code, convErr := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(status), "exit "))
	if err != nil || convErr != nil {
		return 0, fmt.Errorf("the interpreter (pid %d) ended without an exit code (%q): %v", pid, status, err)
	}
	_, _ = io.Copy(io.Discard, replies) // until it has exited, as a child of ours would have been waited for
	return code, nil
}

func (p *earlyProgram) discard() {
	p.conn.Close() // it sees the end of the connection and exits
}
