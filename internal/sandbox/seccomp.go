package sandbox

import (
	"runtime"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// The filter is an allow-list: a call not named here fails with EPERM.
// EPERM rather than killing the process, so that a refused call is an
// error the worker's code handles and logs, and the worker goes on serving
// its other sessions; a compromised worker learns nothing from the errno
// that the list below does not already say. Among the refused: bpf,
// setns, unshare, mount and the other file-system mounting calls, ptrace,
// process_vm_*, execve, execveat, kexec_*, init_module, finit_module,
// delete_module, keyctl, add_key, request_key, setuid and the other
// credential changes, capset, prctl, seccomp, perf_event_open, io_uring_*,
// userfaultfd, kill (the worker signals no one), chroot, pivot_root,
// reboot, swapon, and every socket family but unix, IPv4 and IPv6.

// Calls the Go runtime makes (threads, memory, signals, timers, the
// network poller), and the file and socket calls of a TLS proxy.
var allowedSyscalls = []string{
	// Runtime: threads, memory, signals, time.
	"arch_prctl", "brk", "exit", "exit_group", "futex", "getpid", "getppid",
	"gettid", "madvise", "mmap", "mprotect", "munmap", "nanosleep",
	"clock_gettime", "clock_getres", "clock_nanosleep", "gettimeofday",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	"tgkill", "sched_yield", "sched_getaffinity", "set_robust_list", "rseq",
	"restart_syscall", "getrandom", "getrlimit", "prlimit64", "uname",
	"setitimer", "getitimer", "timer_create", "timer_settime",
	"timer_delete", "getuid", "geteuid", "getgid", "getegid", "getresuid",
	"getresgid", "getgroups", "membarrier",
	// The network poller and pipes (splice between two TCP connections).
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "eventfd2",
	"pipe2", "ppoll", "pselect6", "splice", "tee", "sendfile",
	// Files: certificates, keys, CRLs, ticket keys, logs.
	"openat", "openat2", "read", "readv", "pread64", "preadv", "write",
	"writev", "pwrite64", "pwritev", "close", "close_range", "fstat",
	"newfstatat", "statx", "lseek", "fcntl", "dup", "dup3", "getdents64",
	"readlinkat", "faccessat", "faccessat2", "fsync", "fdatasync",
	"ftruncate", "fchmod", "renameat", "renameat2", "unlinkat", "getcwd",
	"statfs", "fstatfs", "umask", "copy_file_range", "inotify_init1",
	"inotify_add_watch", "inotify_rm_watch",
	// Sockets other than socket(2) itself (below): accept on listeners the
	// enforcer passed in, dial backends, take file descriptors over unix
	// sockets.
	"accept4", "bind", "listen", "connect", "getsockname", "getpeername",
	"setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg",
	"sendmmsg", "recvmmsg", "shutdown", "socketpair",
}

// Legacy calls that exist on amd64 only; the Go runtime and standard
// library use some of them there.
var allowedSyscallsAMD64 = []string{
	"open", "stat", "lstat", "poll", "epoll_wait", "access", "readlink",
	"pipe", "dup2", "rename", "unlink", "getdents", "select", "time",
}

// cloneNamespaces are the clone(2) flags that make a new namespace: a
// clone with any of them is refused like unshare(2).
const cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
	unix.CLONE_NEWTIME

// socket(2) is allowed for unix, IPv4 and IPv6, and only stream and
// datagram types: no raw (SOCK_RAW), no packet (AF_PACKET), no netlink
// (nftables, routes, XDP attach), no other family. The type argument
// carries SOCK_NONBLOCK and SOCK_CLOEXEC above the type in its low four
// bits: "bit set and the other three clear" pins those four bits.
func socketRules() []seccomp.NameWithConditions {
	var rules []seccomp.NameWithConditions
	for _, family := range []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6} {
		for _, typ := range []uint64{unix.SOCK_STREAM, unix.SOCK_DGRAM} {
			rules = append(rules, seccomp.NameWithConditions{
				Name: "socket",
				Conditions: seccomp.ArgumentConditions{
					{Argument: 0, Operation: seccomp.Equal, Value: family},
					{Argument: 1, Operation: seccomp.BitsSet, Value: typ},
					{Argument: 1, Operation: seccomp.BitsNotSet, Value: 0xf &^ typ},
				},
			})
		}
	}
	return rules
}

// policy builds the filter and says how many calls it allows.
func policy() (seccomp.Policy, int) {
	names := append([]string(nil), allowedSyscalls...)
	if runtime.GOARCH == "amd64" {
		names = append(names, allowedSyscallsAMD64...)
	}
	conditional := append(socketRules(), seccomp.NameWithConditions{
		Name: "clone",
		Conditions: seccomp.ArgumentConditions{
			{Argument: 0, Operation: seccomp.BitsNotSet, Value: cloneNamespaces},
		},
	})
	return seccomp.Policy{
		DefaultAction: seccomp.ActionErrno, // EPERM
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionAllow, Names: names, NamesWithCondtions: conditional},
			// clone3 passes its flags in memory the filter cannot read:
			// ENOSYS makes a caller fall back to clone, which it can.
			{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"}},
		},
	}, len(names) + 2
}

// loadSeccomp installs the filter on every thread (TSYNC) with no_new_privs.
func loadSeccomp() (int, error) {
	p, n := policy()
	err := seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy:     p,
	})
	return n, err
}
